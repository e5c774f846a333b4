"""Small duck-typed callbacks. The trainer calls whichever of these hooks an object defines:

on_fit_start(trainer)                           after a resumed checkpoint is loaded
on_train_batch_start(trainer, batch)            before each (micro-)batch's forward
on_train_batch_end(trainer, loss: Tensor)       after each optimizer step; loss is 0-d on the device
                                                (float(loss) waits for the GPU: only when needed)
on_validation_end(trainer, metrics: dict)       metrics carry the "val/" prefix
on_fit_end(trainer)                             also after an interrupt (SIGINT/SIGTERM)
eval_weights(trainer)                           a context manager: the weights evaluation and best.pt use
state_dict() / load_state_dict(state)           saved in and restored from checkpoints: plain
                                                values only (str/int/float/bool/None, lists, dicts)
"""

import math
import os
from contextlib import nullcontext
from typing import Literal

import torch

from bigmodel import checkpoint
from bigmodel.config import ConfigError
from bigmodel.ranges import NonNegativeFloat, NonNegativeInt, PositiveInt


def _improved(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value < best - min_delta if mode == "min" else value > best + min_delta


def _check_monitor(key: str, monitor: str, names: list[str]) -> None:
    if monitor not in names:
        raise ConfigError(f"{key}={monitor!r} is not a logged metric; valid: {sorted(names)}")


def _check_mode(mode: str) -> str:
    if mode not in ("min", "max"):
        raise ConfigError(f"mode={mode!r} is not valid; use 'min' or 'max'")
    return mode


class ModelCheckpoint:
    """`last.pt`, everything a resume needs, every `every_n_val` validations, at the end and after a
    signal (SIGINT/SIGTERM); `best.pt` when `monitor` improves: the weights that were evaluated (the
    average, with callbacks.ema), without optimizer state (it is for eval, export and init_from;
    resume uses last.pt) unless `best_with_optimizer`. With `background`, the state is copied to
    CPU memory and written by a thread while training goes on (atomically, one file at a time)."""

    def __init__(
        self,
        dirpath: str,
        monitor: str = "val/loss",
        mode: Literal["min", "max"] = "min",
        save_last: bool = True,
        save_best: bool = True,
        every_n_val: PositiveInt = 1,
        best_with_optimizer: bool = False,
        background: bool = True,
    ) -> None:
        self.dirpath, self.monitor, self.mode = dirpath, monitor, _check_mode(mode)
        self.save_last, self.save_best, self.every_n_val = save_last, save_best, every_n_val
        self.best_with_optimizer, self.background = best_with_optimizer, background
        self.best: float | None = None
        self.validations = 0  # since the start of this process: the schedule of last.pt
        self.best_path = os.path.join(dirpath, "best.pt")
        self.last_path = os.path.join(dirpath, "last.pt")
        self.writer = checkpoint.BackgroundWriter()

    def on_fit_start(self, trainer) -> None:
        _check_monitor("callbacks.model_checkpoint.monitor", self.monitor, trainer.metric_names("val"))

    def on_validation_end(self, trainer, metrics: dict[str, float]) -> None:
        _check_monitor("callbacks.model_checkpoint.monitor", self.monitor, list(metrics))
        value = metrics[self.monitor]
        self.validations += 1
        if self.save_best and _improved(value, self.best, self.mode):
            self.best = value
            self.write(trainer, self.best_path, best=True)
        if self.save_last and self.validations % self.every_n_val == 0:
            self.write(trainer, self.last_path)

    def on_fit_end(self, trainer) -> None:
        if self.save_last:
            self.write(trainer, self.last_path)
        if self.save_best and self.best is None:  # no validation measured: the final weights are the best known
            self.write(trainer, self.best_path, best=True)  # (decided alike on every process: no file test)
        self.writer.wait()  # every file complete when fit() returns

    def write(self, trainer, path: str, best: bool = False) -> None:
        """Every process takes part (FSDP gathers shards); rank 0 writes."""
        with trainer.eval_weights() if best else nullcontext():  # copied inside: the state holds views
            state = trainer.state_dict()
            if not trainer.is_global_zero:
                return
            if best and not self.best_with_optimizer:
                state = {**state, "optimizer": None}
            if not self.background:
                checkpoint.save(state, path)
                return
            state = checkpoint.to_host(state)
            copied = torch.cuda.Event() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
            if copied is not None:
                copied.record()  # after the copies on the stream, before anything changes the weights
        self.writer.write(state, path, copied)

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.best = state["best"]


class EarlyStopping:
    """Stops training when `monitor` has not improved by `min_delta` for `patience` validations."""

    def __init__(
        self,
        monitor: str = "val/loss",
        mode: Literal["min", "max"] = "min",
        patience: NonNegativeInt = 5,
        min_delta: NonNegativeFloat = 0.0,
    ) -> None:
        self.monitor, self.mode, self.patience, self.min_delta = monitor, _check_mode(mode), patience, min_delta
        self.best: float | None = None
        self.bad_evals = 0

    def on_fit_start(self, trainer) -> None:
        _check_monitor("callbacks.early_stopping.monitor", self.monitor, trainer.metric_names("val"))

    def on_validation_end(self, trainer, metrics: dict[str, float]) -> None:
        _check_monitor("callbacks.early_stopping.monitor", self.monitor, list(metrics))
        value = metrics[self.monitor]
        if _improved(value, self.best, self.mode, self.min_delta):
            self.best, self.bad_evals = value, 0
        else:
            self.bad_evals += 1
            if self.bad_evals >= self.patience:
                trainer.print(f"early stopping: {self.monitor} has not improved for {self.patience} evaluations")
                trainer.should_stop = True

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_evals = state["best"], state["bad_evals"]


class LearningRateMonitor:
    """Logs the learning rate of the first parameter group as `lr` every `every_n_steps` steps."""

    def __init__(self, every_n_steps: PositiveInt = 10) -> None:
        self.every_n_steps = every_n_steps

    def on_train_batch_end(self, trainer, loss) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            trainer.logger.log_metrics({"lr": trainer.optimizer.param_groups[0]["lr"]}, trainer.global_step)
