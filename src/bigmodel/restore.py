"""One way back from a checkpoint to a model, used by every command that reads one (eval, predict,
generate, export, quantize, prune, serve): the model is rebuilt from the config and constructor
arguments the checkpoint stores, so no command needs the run's folder or a matching config."""

from dataclasses import dataclass, field
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from bigmodel import checkpoint
from bigmodel.config import ConfigError, check_targets, resolved
from bigmodel.data.errors import DataError

# What a config read from a file (a checkpoint, an exported folder's bigmodel.json) may build: Hydra's
# instantiate imports and calls whatever a `_target_` names, so a crafted file could otherwise run any
# importable callable. Training writes its config resolved, so a saved one holds no interpolation either.
SAVED_TARGETS = ("bigmodel.models.", "bigmodel.data.", "bigmodel.losses.")


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


def check_saved(node: Any, key: str, source: str, built: bool = True) -> None:
    """Refuse, in one line, a saved config node with an interpolation (`${...}`: resolving it could read
    the environment) and, when it is to be `built`, one that would build anything but bigmodel's models,
    data modules and losses: a `_target_` elsewhere, or another Hydra key (`_args_`, `_partial_`, ...).
    Checked before anything is resolved or imported."""
    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=False)
    if isinstance(node, dict):
        for k, v in node.items():
            where = f"{key}.{k!s}"
            if built and k == "_target_" and not (isinstance(v, str) and v.startswith(SAVED_TARGETS)):
                raise checkpoint.CheckpointError(
                    f"{source}: {where}={v!r} is not one of bigmodel's models, data modules or losses "
                    f"({', '.join(t + '*' for t in SAVED_TARGETS)}); it is not built"
                )
            if built and isinstance(k, str) and k.startswith("_") and k != "_target_":
                raise checkpoint.CheckpointError(f"{source}: {where}: a saved config holds no Hydra key like {k}")
            check_saved(v, where, source, built)
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            check_saved(v, f"{key}[{i}]", source, built)
    elif isinstance(node, str) and "${" in node:
        raise checkpoint.CheckpointError(
            f"{source}: {key}={node!r} is an interpolation; a saved config is resolved, so it is not read"
        )


def build_saved(node: Any, key: str, source: str, **kwargs: Any) -> Any:
    """`instantiate(node, **kwargs)` for a config node read from a file, after check_saved (`kwargs`, the
    saved constructor arguments, are checked too, and may not be Hydra keys)."""
    check_saved(node, key, source)
    check_saved(kwargs, f"{key} arguments", source)
    if hidden := [k for k in kwargs if str(k).startswith("_")]:
        raise checkpoint.CheckpointError(f"{source}: the saved model arguments hold Hydra key(s) {hidden}")
    return build(node, key, source, **kwargs)


def build(node: Any, key: str, source: str, **kwargs: Any) -> Any:
    """`instantiate(node, **kwargs)`; a node that does not build (a wrong argument, a bad value) is one
    line naming the file and the target, not Hydra's several."""
    target = node.get("_target_") if isinstance(node, (dict, DictConfig)) else None
    if target is None:
        raise checkpoint.CheckpointError(f"{source}: {key} names no _target_ to build")
    try:
        return instantiate(node, **kwargs)
    except Exception as e:  # noqa: BLE001  Hydra wraps the constructor's error in several lines
        cause = e.__cause__ or e
        if isinstance(cause, (DataError, ConfigError, checkpoint.CheckpointError)):
            raise cause from None  # already one line naming the key or the file (e.g. missing data)
        raise checkpoint.CheckpointError(
            f"{source}: cannot build {key} ({target}) from the saved config: "
            f"{type(cause).__name__}: {str(cause).splitlines()[0][:300] if str(cause) else ''}"
        ) from None


def restore_model(ckpt_path: str, device: torch.device | str = "cpu", needs: dict[str, str] | None = None) -> Restored:
    """The model a `bigmodel train` checkpoint holds, in eval mode on `device`. Loading never runs
    code from the file (weights_only); a file that is not a checkpoint fails with one line, and so does
    one whose saved data state lacks a key of `needs` ({key: the error line}) before anything is built."""
    ckpt = checkpoint.load(ckpt_path)
    data = ckpt.get("data") or {}
    for key, message in (needs or {}).items():
        if key not in data:
            raise checkpoint.CheckpointError(message)
    if not isinstance(ckpt.get("config"), dict) or "model" not in ckpt["config"] or "model" not in ckpt:
        raise checkpoint.CheckpointError(
            f"ckpt_path={str(ckpt_path)!r} holds no model config or no weights: not written by bigmodel train"
        )
    source = f"ckpt_path={str(ckpt_path)!r}"
    check_saved(ckpt["config"], "config", source, built=False)  # before OmegaConf could resolve anything
    config = OmegaConf.create(ckpt["config"])
    model = build_saved(config.model, "config.model", source, **ckpt.get("model_args", {}))
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
    source = restored.path or "the saved config"
    if not isinstance(restored.config.get("data"), DictConfig):
        raise checkpoint.CheckpointError(f"{source}: its saved config has no data section to rebuild the data from")
    check_saved(restored.config.data, "config.data", source)  # the file's part; overrides are the user's
    data_cfg = OmegaConf.merge(restored.config.data, overrides or {})
    assert isinstance(data_cfg, DictConfig)
    check_targets(resolved(data_cfg), "data")
    datamodule = build(data_cfg, "config.data", source)
    if hasattr(datamodule, "load_state_dict") and restored.data:
        datamodule.load_state_dict(restored.data)
    if setup:
        datamodule.setup()
    return datamodule
