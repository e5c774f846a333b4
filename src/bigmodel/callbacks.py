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
from pathlib import Path
from typing import Literal

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
    """Writes `last.pt` after every validation and at the end, and `best.pt` when `monitor` improves.
    `best.pt` holds the weights that were evaluated (the average, with callbacks.ema)."""

    def __init__(self, dirpath: str, monitor: str = "val/loss", mode: Literal["min", "max"] = "min",
                 save_last: bool = True, save_best: bool = True) -> None:
        self.dirpath, self.monitor, self.mode = dirpath, monitor, _check_mode(mode)
        self.save_last, self.save_best = save_last, save_best
        self.best: float | None = None
        self.best_path = os.path.join(dirpath, "best.pt")
        self.last_path = os.path.join(dirpath, "last.pt")

    def on_fit_start(self, trainer) -> None:
        _check_monitor("callbacks.model_checkpoint.monitor", self.monitor, trainer.metric_names("val"))

    def on_validation_end(self, trainer, metrics: dict[str, float]) -> None:
        _check_monitor("callbacks.model_checkpoint.monitor", self.monitor, list(metrics))
        value = metrics[self.monitor]
        if self.save_best and _improved(value, self.best, self.mode):
            self.best = value
            trainer.save_checkpoint(self.best_path, eval_weights=True)
        if self.save_last:
            trainer.save_checkpoint(self.last_path)

    def on_fit_end(self, trainer) -> None:
        if self.save_last:
            trainer.save_checkpoint(self.last_path)
        if self.save_best and not Path(self.best_path).exists():
            trainer.save_checkpoint(self.best_path, eval_weights=True)  # no validation ran: the final weights are the best known

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.best = state["best"]


class EarlyStopping:
    """Stops training when `monitor` has not improved by `min_delta` for `patience` validations."""

    def __init__(self, monitor: str = "val/loss", mode: Literal["min", "max"] = "min", patience: NonNegativeInt = 5,
                 min_delta: NonNegativeFloat = 0.0) -> None:
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
