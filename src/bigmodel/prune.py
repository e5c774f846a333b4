"""`bigmodel prune ckpt_path=... amount=0.5 [structured=false]`: magnitude pruning of a checkpoint.

Unstructured (the default): one global L1 threshold over every weight matrix and convolution kernel
(`torch.nn.utils.prune.global_unstructured`), so layers lose different shares of their weights.
Biases, norms and embeddings are left dense: they are a small share of the weights and pruning them
costs accuracy out of proportion (an embedding row is a whole word). A weight tied to an embedding
(the GPT's output layer) is left out with it.

Structured (`structured=true`): each convolution loses its output channels of smallest L1 norm
(`ln_structured`, the same share in every layer); see bigmodel.prune_channels. The CNN's channels
are then removed for real (`shrink=true`): the checkpoint rebuilds a smaller, faster model.

The pruning is made permanent (`prune.remove`) and the result is written as a training checkpoint
(same config, data state and model args), so eval, predict and `train init_from=` take it; the
file records what was pruned, so fine-tuning from it keeps those zeros at zero.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from torch import nn
from torch.nn.utils import prune as torch_prune

from bigmodel import checkpoint
from bigmodel.checkpoint import CheckpointError
from bigmodel.config import ConfigError, PathsConfig, require
from bigmodel.prune_channels import prune_channels
from bigmodel.restore import Restored, restore_model

log = logging.getLogger("bigmodel")


@dataclass
class PruneConfig:
    """`bigmodel prune`'s keys; configs/prune.yaml says what each one does."""

    name: str = "prune"
    ckpt_path: str = MISSING
    amount: float = 0.5
    structured: bool = False
    shrink: bool = True
    output: str | None = None
    overwrite: bool = False
    paths: PathsConfig = field(default_factory=PathsConfig)


def prunable(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(name, module, parameter name) of each weight matrix and kernel: parameters of 2+ dimensions
    named *weight*, outside embeddings; a parameter shared with an embedding is left out with it."""
    seen = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    out = []
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Embedding):
            continue
        for pname, p in module.named_parameters(recurse=False):
            if p.dim() >= 2 and "weight" in pname and id(p) not in seen:
                seen.add(id(p))
                out.append((f"{module_name}.{pname}" if module_name else pname, module, pname))
    return out


def prune_global(model: nn.Module, amount: float) -> list[str]:
    """Zero the `amount` share of smallest-magnitude weights over all prunable tensors together,
    made permanent; returns the pruned tensors' names."""
    targets = prunable(model)
    if not targets:
        raise CheckpointError(f"{type(model).__name__} has no weight matrix or kernel to prune")
    torch_prune.global_unstructured(
        [(m, p) for _, m, p in targets], pruning_method=torch_prune.L1Unstructured, amount=amount
    )
    for _, module, pname in targets:
        torch_prune.remove(module, pname)  # weight = weight_orig * weight_mask, as a plain parameter again
    return [name for name, _, _ in targets]


def sparsity_table(model: nn.Module, names: list[str]) -> tuple[str, float]:
    """A per-tensor table (shape, zeros, share) of the named tensors, and their overall sparsity."""
    params = dict(model.named_parameters(remove_duplicate=False))  # a tied weight under each of its names
    rows, zeros, total = [], 0, 0
    for name in names:
        p = params[name]
        z = int((p == 0).sum())
        zeros, total = zeros + z, total + p.numel()
        rows.append(f"{name:<32} {tuple(p.shape)!s:<18} {p.numel():>10,} {z:>10,} {z / p.numel():>8.1%}")
    everything = sum(p.numel() for p in model.parameters())
    all_zeros = sum(int((p == 0).sum()) for p in model.parameters())
    head = f"{'tensor':<32} {'shape':<18} {'weights':>10} {'zeros':>10} {'sparsity':>8}"
    rows += [
        f"{'total (pruned tensors)':<51} {total:>10,} {zeros:>10,} {zeros / total:>8.1%}",
        f"{'total (all parameters)':<51} {everything:>10,} {all_zeros:>10,} {all_zeros / everything:>8.1%}",
    ]
    return "\n".join([head, *rows]), zeros / total


def _shown(value: Any) -> str:
    """A value as it would be typed on the command line (true, 1.5, 'half')."""
    return str(value).lower() if isinstance(value, bool) else repr(value)


def check_args(cfg: DictConfig) -> None:
    """amount in (0, 1) and the switches true/false, each named with what would be valid."""
    require(cfg, "ckpt_path", "bigmodel prune ckpt_path=logs/<name>/runs/<run>/checkpoints/best.pt amount=0.5")
    amount = cfg.amount
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0 < amount < 1:
        raise ConfigError(
            f"amount={_shown(amount)} is not valid: the share of weights to prune, strictly between "
            "0 and 1 (e.g. amount=0.5)"
        )
    for key in ("structured", "shrink", "overwrite"):
        if not isinstance(cfg[key], bool):
            raise ConfigError(f"{key}={_shown(cfg[key])} is not valid; use true or false")


def output_path(cfg: DictConfig) -> Path:
    """`output`, or <checkpoint>-pruned<NN>[-channels].pt next to the checkpoint; never an existing
    file unless overwrite=true."""
    src = Path(cfg.ckpt_path).expanduser()
    default = src.with_name(f"{src.stem}-pruned{round(cfg.amount * 100)}{'-channels' if cfg.structured else ''}.pt")
    out = Path(cfg.output).expanduser() if cfg.output else default
    if out.resolve() == src.resolve():
        raise ConfigError(f"output={str(out)!r} is the checkpoint being pruned: give another file")
    if out.exists() and not cfg.overwrite:
        raise ConfigError(f"output={str(out)!r} exists: give another output=PATH, or overwrite=true to replace it")
    return out


def pruned_checkpoint(
    restored: Restored, model: nn.Module, record: dict[str, Any], model_config: dict[str, Any]
) -> dict[str, Any]:
    """The training checkpoint with the pruned weights, the (maybe smaller) model config and a record
    of the pruning. The optimizer state is dropped: a pruned model starts a new run (init_from)."""
    config = OmegaConf.to_container(restored.config)  # saved resolved: the same plain dict
    assert isinstance(config, dict)
    return {
        "format": checkpoint.FORMAT_VERSION,
        "config": {**config, "model": model_config},
        "model_args": restored.model_args,
        "data": restored.data,
        "progress": restored.progress,
        "model": model.state_dict(),
        "pruning": checkpoint.plain(record),
    }


def prune(cfg: DictConfig) -> dict[str, Any]:
    """Prune `ckpt_path` by `amount`, write the result, print its sparsity; returns the record."""
    check_args(cfg)
    out = output_path(cfg)
    restored = restore_model(cfg.ckpt_path, "cpu")
    model, amount = restored.model, float(cfg.amount)
    original: dict[str, Any] = OmegaConf.to_container(restored.config.model, resolve=True)  # type: ignore[assignment]
    model_config = dict(original)
    before = sum(p.numel() for p in model.parameters())
    if cfg.structured:
        model, names, model_config, lines = prune_channels(
            model, amount, model_config, restored.model_args, shrink=cfg.shrink
        )
    else:
        names, lines = prune_global(model, amount), []
    record = {"amount": amount, "structured": bool(cfg.structured), "tensors": names, "source": str(cfg.ckpt_path)}
    after = sum(p.numel() for p in model.parameters())
    if names:
        table, sparsity = sparsity_table(model, names)
        record["sparsity"] = sparsity
        print(table)
    if lines:
        print("\n".join(lines))
    record["parameters"] = [before, after]
    out.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.save(pruned_checkpoint(restored, model, record, model_config), out)  # atomic: temp file, then rename
    print(f"parameters: {before:,} -> {after:,}; wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    how = "the zeros stay zero" if names else "the smaller model"
    print(
        f"fine-tune it ({how}): bigmodel train <the run's overrides> init_from={out}"
        + shrunk_overrides(model_config, original)
    )
    return record


def shrunk_overrides(new: dict[str, Any], old: dict[str, Any]) -> str:
    """The model.* overrides a fine-tuning run needs to build the smaller model ("" when unchanged)."""
    parts = []
    for k, v in new.items():
        if not k.startswith("_") and old.get(k) != v:
            parts.append(f" model.{k}=" + (f"[{','.join(map(str, v))}]" if isinstance(v, (list, tuple)) else str(v)))
    return "".join(parts)
