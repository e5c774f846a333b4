"""The wiring: config -> data, model, loss, optimizer, callbacks, logger -> Trainer -> fit -> test."""

import logging
import os
import random
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from bigmodel import checkpoint, distributed, finetune, hparams, rundir
from bigmodel.config import ConfigError, TrainerConfig, check_targets
from bigmodel.config import resolved as resolved_config
from bigmodel.data.vectors import load_pretrained_vectors
from bigmodel.evaluation import batch_limit, evaluate_split
from bigmodel.loggers import LoggerGroup
from bigmodel.optim import make_optimizer
from bigmodel.restore import build_saved, restore_datamodule, restore_model
from bigmodel.runtime import Runtime
from bigmodel.trainer import Trainer

log = logging.getLogger("bigmodel")


def seed_everything(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
        raise ConfigError(f"seed={seed!r} is not valid: use an integer from 0 to 2**31 - 1")
    random.seed(seed)
    torch.manual_seed(seed)  # also every GPU's


def seed_rank(seed: int, rank: int, world_size: int) -> None:
    """Once the model is built (the same weights in every process): with several processes each
    draws its own dropout masks, from seed + rank. Data order and augmentation come from their own
    generators keyed on `seed` alone, so the processes still split one shuffled epoch."""
    if world_size > 1:
        seed_everything(seed + rank)


def trainer_config(cfg: DictConfig) -> TrainerConfig:
    config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainerConfig), cfg.trainer))
    assert isinstance(config, TrainerConfig)
    return config


def output_dir(cfg: DictConfig) -> str:
    return cfg.paths.output_dir if HydraConfig.initialized() else os.getcwd()


def checkpoint_dir(cfg: DictConfig) -> str:
    """Where this run's checkpoints go: callbacks.model_checkpoint.dirpath, else <run folder>/checkpoints."""
    return OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath") or str(Path(output_dir(cfg)) / "checkpoints")


def in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """ckpt_path, or for `auto`: this run folder's own last.pt (a requeued job), else, outside sweeps,
    the newest last.pt of a run of the same name; nothing found means a fresh start."""
    if cfg.ckpt_path != "auto":
        return cfg.ckpt_path
    own = Path(output_dir(cfg)) / "checkpoints" / "last.pt"
    if own.is_file():
        found = own
    elif in_sweep():
        log.info("ckpt_path=auto: a sweep job resumes only its own folder's last.pt; none yet: starting fresh")
        return None
    else:
        try:
            found = checkpoint.newest(Path(cfg.paths.log_dir) / cfg.name, exclude=output_dir(cfg))
        except checkpoint.CheckpointError as e:
            log.warning(f"{e}: starting fresh")
            return None
    log.info(f"ckpt_path=auto: resuming {found}")
    return str(found)


def warn_single_process(cfg: DictConfig) -> None:
    """trainer.devices=N starts N processes only from the command line (bigmodel.launch); say so when
    it came from a config file instead. Sweeps run each job in one process on purpose."""
    if cfg.trainer.devices > 1 and distributed.info()[1] == 1 and not in_sweep():
        log.warning(
            f"trainer.devices={cfg.trainer.devices}, but this is one process: the shortcut starts "
            "processes only when given on the command line (or use torchrun --nproc_per_node=N "
            "-m bigmodel train ...)"
        )


def build_logger(cfg: DictConfig, is_global_zero: bool) -> LoggerGroup:
    loggers = [instantiate(c) for c in (cfg.logger or {}).values() if c] if is_global_zero else []
    return LoggerGroup(loggers)


def build(cfg: DictConfig, resolved: dict[str, Any]) -> tuple[Any, torch.nn.Module, dict[str, Any], Any]:
    """The data module and model a run starts from (init_from's vocabulary and weights, pretrained
    vectors), the model's constructor args for checkpoints, and the callback that keeps a pruned
    checkpoint's zeros at zero (None when not asked for)."""
    init = finetune.from_config(cfg.get("init_from"), cfg.get("init_keep_sparsity"))  # weights to start from
    datamodule = instantiate(cfg.data)
    if init:
        init.reuse_vocabulary(datamodule)  # the checkpoint's words keep their ids; new words are appended
    datamodule.setup()
    model_args = datamodule.model_args()
    model = instantiate(cfg.model, **model_args)
    data_block, model_block = getattr(datamodule, "block_size", None), getattr(model, "block_size", None)
    if isinstance(data_block, int) and isinstance(model_block, int) and data_block > model_block:
        raise ConfigError(
            f"data.block_size={data_block} is longer than model.block_size={model_block}, the most positions "
            "the model reads; use data.block_size <= model.block_size"
        )
    model_args = {
        **model_args,
        **getattr(model, "saved_args", {}),
    }  # e.g. a GPT-2's sizes: checkpoints rebuild it without its files
    log.info(f"model {type(model).__name__}: {sum(p.numel() for p in model.parameters()):,} parameters")
    if cfg.model.get("pretrained_vectors"):
        load_pretrained_vectors(model, datamodule, cfg.model.pretrained_vectors)
    keeper = None
    if init:
        report = init.load_weights(model, datamodule, resolved)
        keeper = finetune.keep_sparsity(report, model, init.keep_sparsity)
    return datamodule, model, model_args, keeper


def train(cfg: DictConfig) -> float | None:
    """Train with `cfg`; returns the final value of `optimized_metric` (for sweepers) if set."""
    if not isinstance(cfg.get("test", False), bool):
        raise ConfigError(f"test={cfg.test!r} is not valid: use true (test the best checkpoint) or false")
    seed_everything(cfg.seed)
    resolved = resolved_config(cfg)
    config = trainer_config(cfg)  # trainer.* in range (first: other nodes interpolate its values)
    check_targets(resolved)  # wrong types, unknown keys and out-of-range values, named, before any work
    runtime = Runtime(config).init()  # processes (under torchrun), device, threads, determinism
    warn_single_process(cfg)
    ckpt_path = resolve_ckpt_path(cfg)
    rundir.prepare(output_dir(cfg), checkpoint_dir(cfg), ckpt_path)  # before anything is written
    if HydraConfig.initialized() and runtime.is_global_zero:
        OmegaConf.save(cfg, Path(cfg.paths.output_dir) / "config.yaml", resolve=True)
    datamodule, model, model_args, keeper = build(cfg, resolved)
    seed_rank(cfg.seed, runtime.rank, runtime.world_size)
    callbacks = {name: instantiate(c) for name, c in (cfg.callbacks or {}).items() if c}
    if keeper:
        callbacks["keep_sparsity"] = keeper

    optimizer = make_optimizer(
        instantiate(cfg.optimizer), model, cfg.optimizer.get("weight_decay", 0.0), runtime.device
    )  # fused kernels on CUDA
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    extras = {"config": resolved, "model_args": model_args, "data": datamodule.state_dict()}
    logger = build_logger(cfg, runtime.is_global_zero)
    trainer = Trainer(
        config,
        model=model,
        loss_fn=instantiate(cfg.loss),
        optimizer=optimizer,
        scheduler=scheduler,
        datamodule=datamodule,
        logger=logger,
        callbacks=callbacks,
        checkpoint_extras=extras,
        output_dir=output_dir(cfg),
        runtime=runtime,
    )
    if (key := cfg.get("optimized_metric")) is not None:  # what a sweeper optimizes: checked before any work
        valid = trainer.metric_names("val") + (trainer.metric_names("test") if cfg.test else [])
        if key not in valid:
            raise ConfigError(f"optimized_metric={key!r} is not a metric this run logs; valid: {valid}")
    metrics = dict(trainer.fit(ckpt_path))

    if cfg.test and trainer.interrupted:
        log.info("interrupted: not testing; resume with ckpt_path=auto (or the run's checkpoints/last.pt)")
    elif cfg.test:
        best = getattr(callbacks.get("model_checkpoint"), "best_path", None)
        tested_best = best is not None and Path(best).is_file()
        if (
            best is not None and tested_best
        ):  # best.pt holds the weights validation used (the average, with callbacks.ema)
            checkpoint.load_model_state(trainer.model, checkpoint.load(best)["model"], best)
            log.info(f"testing the best checkpoint {best}")
        metrics |= trainer.evaluate("test", eval_weights=not tested_best)
        log.info("test: " + "  ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k.startswith("test/")))
        if hasattr(trainer.metrics, "table"):
            log.info("confusion matrix (test):\n" + trainer.metrics.table())
    if trainer.is_global_zero:  # the HParams tab: the run's columns, the val/test tags to compare runs by
        columns, shown = hparams.run_columns(resolved, model)
        logger.log_hparams(columns, trainer.metric_names("val") + trainer.metric_names("test"), shown)
    logger.close()
    distributed.finish()
    if trainer.interrupted and in_sweep():
        raise KeyboardInterrupt  # Ctrl-C (or SIGTERM) stops the whole sweep, not just this job
    key = cfg.get("optimized_metric")
    return metrics.get(key) if key else None


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """`bigmodel eval ckpt_path=...` (or model_path=<exported folder>): rebuild data and model from the
    checkpoint and evaluate `split`."""
    if cfg.split not in ("train", "val", "test"):
        raise ConfigError(f"split={cfg.split!r} is not a split; valid: train, val, test")
    from bigmodel.export import evaluate_exported, one_source

    one_source(cfg, "bigmodel eval ckpt_path=logs/<name>/runs/<run>/checkpoints/best.pt")
    config = trainer_config(cfg)  # trainer.* typed and in range before the data loads
    if cfg.get("model_path"):  # an exported folder (bigmodel export)
        return evaluate_exported(cfg)
    restored = restore_model(cfg.ckpt_path)
    datamodule = restore_datamodule(restored, cfg.get("data"))  # +data.KEY=... overrides are checked too
    runtime = Runtime(config).init()
    runtime.setup(restored.model)
    logger, scores = build_logger(cfg, True), datamodule.metrics()
    metrics = evaluate_split(
        runtime,
        runtime.wrapped,
        datamodule,
        cfg.split,
        build_saved(restored.config.loss, "config.loss", restored.path),
        scores,
        batch_limit(config, cfg.split),
        logger,
        restored.progress["global_step"],
    )
    print("  ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    if hasattr(scores, "table"):
        print(scores.table())
    logger.close()
    return metrics
