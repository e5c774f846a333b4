"""Metric loggers behind one small Protocol; only the global-zero process writes.

log_metrics(metrics: dict[str, float], step)   scalars such as train/loss, val/acc, lr
log_hparams(hparams, metrics: list[str], shown: list[str])
                                               the run's settings (bigmodel.hparams), the metric
                                               tags to compare runs by, the settings shown first
log_image(tag, image: (3, H, W) float in [0, 1], step)
log_text(tag, text, step)                      shown preformatted
log_pr_curve(tag, tp, fp, tn, fn, step)        counts at evenly spaced thresholds 0..1
log_embedding(tag, vectors: (N, D), labels, step)   points for the Projector tab, one label each
close()
"""

import csv
import os
from pathlib import Path
from typing import Any, Protocol

import torch

from bigmodel import hparams as hp


class Logger(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_hparams(self, hparams: dict[str, Any], metrics: list[str], shown: list[str]) -> None: ...

    def log_image(self, tag: str, image: torch.Tensor, step: int) -> None: ...

    def log_text(self, tag: str, text: str, step: int) -> None: ...

    def log_pr_curve(
        self, tag: str, tp: torch.Tensor, fp: torch.Tensor, tn: torch.Tensor, fn: torch.Tensor, step: int
    ) -> None: ...

    def log_embedding(self, tag: str, vectors: torch.Tensor, labels: list[str], step: int) -> None: ...

    def close(self) -> None: ...


class TensorBoardLogger:
    """Scalars, images, text, PR curves and the HParams tab, in event files in `save_dir`/`subdir`.

    TensorBoard names a run after the folder of its event files, so they go straight into the run
    folder (`sst2_lstm/runs/2026-11-25_14-00-00.123456`); a sweep job adds `subdir`, its swept
    overrides (`0/optimizer.lr=0.001`)."""

    def __init__(self, save_dir: str, subdir: str = "") -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.save_dir = os.path.join(save_dir, subdir) if subdir else save_dir
        self.writer = SummaryWriter(log_dir=self.save_dir)

    def _file_writer(self) -> Any:
        writer = self.writer.file_writer
        assert writer is not None, "the logger is closed"
        return writer

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)

    def log_hparams(self, hparams: dict[str, Any], metrics: list[str], shown: list[str]) -> None:
        for summary in hp.summaries(hparams, metrics, shown):
            self._file_writer().add_summary(summary)

    def log_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        self.writer.add_image(tag, image, step)

    def log_text(self, tag: str, text: str, step: int) -> None:
        from tensorboard.compat.proto import types_pb2
        from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
        from tensorboard.compat.proto.tensor_pb2 import TensorProto
        from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto

        # TensorBoard renders markdown: indented four spaces, line breaks and spacing are kept.
        body = "    " + text.replace("\n", "\n    ")
        tensor = TensorProto(
            dtype=types_pb2.DT_STRING,
            string_val=[body.encode()],
            tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]),
        )
        md = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="text"))
        # written under `tag` itself (SummaryWriter.add_text would append "/text_summary")
        self._file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, metadata=md, tensor=tensor)]), step)

    def log_pr_curve(
        self, tag: str, tp: torch.Tensor, fp: torch.Tensor, tn: torch.Tensor, fn: torch.Tensor, step: int
    ) -> None:
        tp, fp, tn, fn = (t.double() for t in (tp, fp, tn, fn))
        precision, recall = tp / (tp + fp).clamp(min=1), tp / (tp + fn).clamp(min=1)
        self.writer.add_pr_curve_raw(tag, tp, fp, tn, fn, precision, recall, step, num_thresholds=len(tp))

    def log_embedding(self, tag: str, vectors: torch.Tensor, labels: list[str], step: int) -> None:
        self.writer.add_embedding(vectors, metadata=labels, tag=tag, global_step=step)

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

    def log_hparams(self, hparams: dict[str, Any], metrics: list[str], shown: list[str]) -> None:
        pass  # the resolved config is already saved next to this file by Hydra

    def log_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        pass

    def log_pr_curve(
        self, tag: str, tp: torch.Tensor, fp: torch.Tensor, tn: torch.Tensor, fn: torch.Tensor, step: int
    ) -> None:
        pass

    def log_embedding(self, tag: str, vectors: torch.Tensor, labels: list[str], step: int) -> None:
        pass

    def log_text(self, tag: str, text: str, step: int) -> None:
        with open(os.path.join(os.path.dirname(self.path), "text.log"), "a") as f:
            f.write(f"--- {tag} @ step {step}\n{text}\n")

    def close(self) -> None:
        self.file.close()


class LoggerGroup:
    """Sends every call to each of several loggers (or to none, on ranks > 0)."""

    def __init__(self, loggers: list[Logger]) -> None:
        self.loggers = loggers

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for logger in self.loggers:
            logger.log_metrics(metrics, step)

    def log_hparams(self, hparams: dict[str, Any], metrics: list[str], shown: list[str]) -> None:
        for logger in self.loggers:
            logger.log_hparams(hparams, metrics, shown)

    def log_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        for logger in self.loggers:
            logger.log_image(tag, image, step)

    def log_text(self, tag: str, text: str, step: int) -> None:
        for logger in self.loggers:
            logger.log_text(tag, text, step)

    def log_pr_curve(
        self, tag: str, tp: torch.Tensor, fp: torch.Tensor, tn: torch.Tensor, fn: torch.Tensor, step: int
    ) -> None:
        for logger in self.loggers:
            logger.log_pr_curve(tag, tp, fp, tn, fn, step)

    def log_embedding(self, tag: str, vectors: torch.Tensor, labels: list[str], step: int) -> None:
        for logger in self.loggers:
            logger.log_embedding(tag, vectors, labels, step)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()
