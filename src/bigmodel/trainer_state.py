"""What a Trainer checkpoint holds and how a Trainer resumes from one: weights, optimizer, scheduler,
loss scale, progress (with the log window's running sums), callbacks' state and the RNGs."""

from typing import Any

from bigmodel import checkpoint, distributed
from bigmodel.config import ConfigError


def state_dict(trainer: Any) -> dict[str, Any]:
    """Tensors and plain values only: checkpoints are loaded with weights_only=True. Every process
    calls this (FSDP gathers shards, the log window sums across processes)."""
    callbacks = {name: cb.state_dict() for name, cb in trainer.callbacks.items() if hasattr(cb, "state_dict")}
    state = {
        "format": checkpoint.FORMAT_VERSION,
        "model": distributed.model_state_dict(trainer.model),  # full, also under FSDP
        "optimizer": distributed.optimizer_state_dict(trainer.model, trainer.optimizer) if trainer.optimizer else None,
        "scheduler": trainer.scheduler.state_dict() if trainer.scheduler else None,
        "scaler": trainer.scaler.state_dict(),
        "progress": {
            "global_step": trainer.global_step,
            "epoch": trainer.epoch,
            "batch_in_epoch": trainer.batch_in_epoch,
            "last_val_step": trainer.last_val_step,
            "window": trainer.window.state_dict(),
        },
        "callbacks": checkpoint.plain(callbacks),
        "rng": checkpoint.rng_state(),
        **checkpoint.plain(trainer.checkpoint_extras),  # the resolved config holds enum members
    }
    checkpoint.check_plain(state)  # on every rank, before anything is written
    return state


def load(trainer: Any, path: str) -> None:
    """Resume `trainer` from the checkpoint at `path`, after checking it was written by the same config."""
    ckpt = checkpoint.load(path)
    checkpoint.check_resumable(ckpt, checkpoint.plain(trainer.checkpoint_extras.get("config")), path)
    checkpoint.load_model_state(trainer.model, ckpt["model"], path)
    try:
        distributed.load_optimizer_state_dict(trainer.model, trainer.optimizer, ckpt["optimizer"])
    except (ValueError, KeyError) as e:
        raise checkpoint.CheckpointError(
            f"checkpoint {path!r}: optimizer state does not fit optimizer={type(trainer.optimizer).__name__} ({e})"
        ) from None
    if trainer.scheduler is not None and ckpt["scheduler"] is not None:
        trainer.scheduler.load_state_dict(ckpt["scheduler"])
    trainer.scaler.load_state_dict(ckpt["scaler"])
    p = ckpt["progress"]
    trainer.global_step, trainer.epoch, trainer.batch_in_epoch = p["global_step"], p["epoch"], p["batch_in_epoch"]
    trainer.last_val_step = p["last_val_step"]
    trainer.window.load_state_dict(p["window"])
    for name, state in ckpt["callbacks"].items():
        if name in trainer.callbacks and hasattr(trainer.callbacks[name], "load_state_dict"):
            trainer.callbacks[name].load_state_dict(state)
    checkpoint.set_rng_state(ckpt["rng"])


def check_steps_left(trainer: Any, ckpt_path: str) -> None:
    """Resuming a run that already reached its limit would train nothing and exit as if it had."""
    if trainer._done():
        key = "max_steps" if trainer.config.max_steps > 0 else "max_epochs"
        raise ConfigError(
            f"ckpt_path={ckpt_path!r} is at epoch {trainer.epoch}, step {trainer.global_step}: "
            f"trainer.{key}={getattr(trainer.config, key)} is reached, nothing to train; "
            f"raise trainer.{key} to train on"
        )
