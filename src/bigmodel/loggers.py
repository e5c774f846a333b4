"""Metric loggers behind one small Protocol; only the global-zero process writes.

    log_metrics(metrics: dict[str, float], step)   scalars such as train/loss, val/acc, lr
    log_hparams(hparams: dict, metrics: dict)      the run's hyperparameters with its final metrics
    log_image(tag, image: (3, H, W) float in [0, 1], step)
    log_text(tag, text, step)
    close()
"""

import csv
import os
from pathlib import Path
from typing import Any, Protocol

import torch


class Logger(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None: ...

    def log_image(self, tag: str, image: torch.Tensor, step: int) -> None: ...

    def log_text(self, tag: str, text: str, step: int) -> None: ...

    def close(self) -> None: ...


def _hparam_value(v: Any) -> Any:
    return v if isinstance(v, (int, float, str, bool)) else str(v)


class TensorBoardLogger:
    """Scalars, images, text and the HParams tab, written with torch's SummaryWriter."""

    def __init__(self, save_dir: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.save_dir = save_dir
        self.writer = SummaryWriter(log_dir=save_dir)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        clean = {k: _hparam_value(v) for k, v in hparams.items()}
        # Written into the run's own folder so a sweep's parent folder compares all runs.
        self.writer.add_hparams(clean, {f"hparam/{k}": v for k, v in metrics.items()}, run_name=".")

    def log_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        self.writer.add_image(tag, image, step)

    def log_text(self, tag: str, text: str, step: int) -> None:
        # TensorBoard renders markdown: indent four spaces to keep line breaks and spacing.
        self.writer.add_text(tag, "    " + text.replace("\n", "\n    "), step)

    def close(self) -> None:
        self.writer.close()


class CSVLogger:
    """`metrics.csv` with one row per (step, name, value): readable without TensorBoard."""

    def __init__(self, save_dir: str) -> None:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        self.path = os.path.join(save_dir, "metrics.csv")
        self.file = open(self.path, "a", newline="")
        self.writer = csv.writer(self.file)
        if self.file.tell() == 0:
            self.writer.writerow(["step", "name", "value"])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():
            self.writer.writerow([step, k, f"{v:.6g}"])
        self.file.flush()

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        pass  # the resolved config is already saved next to this file by Hydra

    def log_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        pass

    def log_text(self, tag: str, text: str, step: int) -> None:
        with open(os.path.join(os.path.dirname(self.path), "text.log"), "a") as f:
            f.write(f"--- {tag} @ step {step}\n{text}\n")

    def close(self) -> None:
        self.file.close()


class LoggerGroup:
    """Fans every call out to several loggers (or none)."""

    def __init__(self, loggers: list[Logger]) -> None:
        self.loggers = loggers

    def __getattr__(self, name: str):
        def fan_out(*args, **kwargs):
            for logger in self.loggers:
                getattr(logger, name)(*args, **kwargs)

        return fan_out
