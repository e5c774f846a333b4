"""One way back from a checkpoint to a model, used by every command that reads one (eval, predict,
generate, export, quantize, prune, serve): the model is rebuilt from the config and constructor
arguments the checkpoint stores, so no command needs the run's folder or a matching config."""

from dataclasses import dataclass, field
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from bigmodel import checkpoint
from bigmodel.config import check_targets, resolved


@dataclass
class Restored:
    """A model rebuilt from a checkpoint, with what the run saved next to its weights."""

    model: torch.nn.Module  # in eval mode, on the asked device
    config: DictConfig  # the training run's resolved config
    model_args: dict[str, Any]  # constructor arguments the data decided (vocab size, classes, ...)
    data: dict[str, Any]  # the data module's saved state: vocabulary, class names, tokenizer
    progress: dict[str, Any]  # global_step, epoch, ...
    path: str
    callbacks: dict[str, Any] = field(default_factory=dict)  # their saved state: the best monitored value, ...

    def best_metric(self) -> dict[str, float]:
        """{monitored metric: its best value} as the run's model checkpoint recorded it; {} if none."""
        monitor = OmegaConf.select(self.config, "callbacks.model_checkpoint.monitor")
        best = (self.callbacks.get("model_checkpoint") or {}).get("best")
        return {monitor: best} if monitor and best is not None else {}


def restore_model(ckpt_path: str, device: torch.device | str = "cpu", needs: dict[str, str] | None = None) -> Restored:
    """The model a `bigmodel train` checkpoint holds, in eval mode on `device`. Loading never runs
    code from the file (weights_only); a file that is not a checkpoint fails with one line, and so does
    one whose saved data state lacks a key of `needs` ({key: the error line}) before anything is built."""
    ckpt = checkpoint.load(ckpt_path)
    data = ckpt.get("data") or {}
    for key, message in (needs or {}).items():
        if key not in data:
            raise checkpoint.CheckpointError(message)
    if not isinstance(ckpt.get("config"), dict) or "model" not in ckpt["config"]:
        raise checkpoint.CheckpointError(
            f"ckpt_path={str(ckpt_path)!r} holds no model config: not written by bigmodel train"
        )
    config = OmegaConf.create(ckpt["config"])
    model = instantiate(config.model, **ckpt.get("model_args", {}))
    checkpoint.load_model_state(model, ckpt["model"], ckpt_path)
    return Restored(
        model=model.to(device).eval(),
        config=config,
        model_args=dict(ckpt.get("model_args", {})),
        data=dict(data),
        progress=dict(ckpt.get("progress") or {}),
        path=str(ckpt_path),
        callbacks=dict(ckpt.get("callbacks") or {}),
    )


def restore_datamodule(restored: Restored, overrides: Any = None, setup: bool = True) -> Any:
    """The run's data module with its saved state (the vocabulary training built, ...): the same
    splits and encoding as in training. `overrides` (a `data:` config node) may change e.g. the
    batch size or a file's path; they are checked against the constructor like any config."""
    data_cfg = OmegaConf.merge(restored.config.data, overrides or {})
    assert isinstance(data_cfg, DictConfig)
    check_targets(resolved(data_cfg), "data")
    datamodule = instantiate(data_cfg)
    if hasattr(datamodule, "load_state_dict") and restored.data:
        datamodule.load_state_dict(restored.data)
    if setup:
        datamodule.setup()
    return datamodule
