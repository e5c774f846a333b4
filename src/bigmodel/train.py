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

from bigmodel import checkpoint, distributed
from bigmodel.config import ConfigError, TrainerConfig, check_targets
from bigmodel.loggers import LoggerGroup
from bigmodel.optim import param_groups
from bigmodel.trainer import Trainer

log = logging.getLogger("bigmodel")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def trainer_config(cfg: DictConfig) -> TrainerConfig:
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainerConfig), cfg.trainer))


def output_dir(cfg: DictConfig) -> str:
    return cfg.paths.output_dir if HydraConfig.initialized() else os.getcwd()


def flat_hparams(resolved: dict[str, Any]) -> dict[str, Any]:
    """model.*, data.*, optimizer.*, scheduler.*, trainer.*, loss.*, seed of a resolved config, flat."""
    keep = {k: resolved[k] for k in ("model", "data", "optimizer", "scheduler", "loss", "trainer", "seed") if k in resolved}
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if not str(k).startswith("_"):
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = node

    walk("", keep)
    return out


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
        log.warning(f"trainer.devices={cfg.trainer.devices}, but this is one process: the shortcut starts "
                    "processes only when given on the command line (or use torchrun --nproc_per_node=N "
                    "-m bigmodel train ...)")


def build_logger(cfg: DictConfig, is_global_zero: bool) -> LoggerGroup:
    loggers = [instantiate(c) for c in (cfg.logger or {}).values() if c] if is_global_zero else []
    return LoggerGroup(loggers)


def train(cfg: DictConfig) -> float | None:
    """Train with `cfg`; returns the final value of `optimized_metric` (for sweepers) if set."""
    seed_everything(cfg.seed)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    check_targets(resolved)  # wrong types and unknown keys, named, before any work
    warn_single_process(cfg)
    if HydraConfig.initialized() and distributed.info()[0] == 0:
        OmegaConf.save(cfg, Path(cfg.paths.output_dir) / "config.yaml", resolve=True)
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    model_args = datamodule.model_args()
    model = instantiate(cfg.model, **model_args)
    model_args = {**model_args, **getattr(model, "saved_args", {})}  # e.g. a GPT-2's sizes: checkpoints rebuild it without its files
    log.info(f"model {type(model).__name__}: {sum(p.numel() for p in model.parameters()):,} parameters")

    optimizer = instantiate(cfg.optimizer)(param_groups(model, cfg.optimizer.get("weight_decay", 0.0)))
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    callbacks = {name: instantiate(c) for name, c in (cfg.callbacks or {}).items() if c}
    extras = {"config": resolved, "model_args": model_args,
              "data": datamodule.state_dict()}
    logger = build_logger(cfg, distributed.info()[0] == 0)
    trainer = Trainer(trainer_config(cfg), model=model, loss_fn=instantiate(cfg.loss), optimizer=optimizer,
                      scheduler=scheduler, datamodule=datamodule, logger=logger, seed=cfg.seed,
                      callbacks=callbacks, checkpoint_extras=extras, output_dir=output_dir(cfg))
    metrics = dict(trainer.fit(resolve_ckpt_path(cfg)))

    if cfg.test and trainer.interrupted:
        log.info("interrupted: not testing; resume with ckpt_path=auto (or the run's checkpoints/last.pt)")
    elif cfg.test:
        best = getattr(callbacks.get("model_checkpoint"), "best_path", None)
        if best and Path(best).is_file():
            checkpoint.load_model_state(trainer.model, checkpoint.load(best)["model"], best)
            log.info(f"testing the best checkpoint {best}")
        metrics |= trainer.evaluate("test")
        log.info("test: " + "  ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k.startswith("test/")))
        if hasattr(trainer.metrics, "table"):
            log.info("confusion matrix (test):\n" + trainer.metrics.table())
    if trainer.is_global_zero:
        logger.log_hparams(flat_hparams(resolved), metrics)
    logger.close()
    key = cfg.get("optimized_metric")
    return metrics.get(key) if key else None


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """`bigmodel eval ckpt_path=...`: rebuild data and model from the checkpoint and evaluate `split`."""
    if cfg.split not in ("train", "val", "test"):
        raise ConfigError(f"split={cfg.split!r} is not a split; valid: train, val, test")
    ckpt = checkpoint.load(cfg.ckpt_path)
    saved = OmegaConf.create(ckpt["config"])
    data_cfg = OmegaConf.merge(saved.data, cfg.get("data") or {})
    datamodule = instantiate(data_cfg)
    if hasattr(datamodule, "load_state_dict") and ckpt.get("data"):
        datamodule.load_state_dict(ckpt["data"])  # e.g. the vocabulary training built
    datamodule.setup()
    model = instantiate(saved.model, **ckpt["model_args"])
    checkpoint.load_model_state(model, ckpt["model"], cfg.ckpt_path)
    logger = build_logger(cfg, True)
    trainer = Trainer(trainer_config(cfg), model=model, loss_fn=instantiate(saved.loss), optimizer=None,
                      datamodule=datamodule, logger=logger, seed=saved.seed, output_dir=output_dir(cfg))
    trainer.global_step = ckpt["progress"]["global_step"]
    metrics = trainer.evaluate(cfg.split)
    print("  ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    if hasattr(trainer.metrics, "table"):
        print(trainer.metrics.table())
    logger.close()
    return metrics
