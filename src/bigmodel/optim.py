"""Optimizers (parameter groups, fused kernels on CUDA) and learning-rate schedules.

Schedules are stepped once per optimizer step, except one that names a `monitor` (plateau): the
trainer steps it once per validation, with that metric.
"""

import math
from collections.abc import Callable
from typing import Annotated, Literal

import torch
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

from bigmodel.config import ConfigError
from bigmodel.ranges import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Probability, Range


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and conv kernels only; none on biases, norms and other vectors."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


FUSED = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)  # optimizers with a fused CUDA kernel


def make_optimizer(
    factory: Callable[..., torch.optim.Optimizer], model: torch.nn.Module, weight_decay: float, device: torch.device
) -> torch.optim.Optimizer:
    """`factory` (optimizer=..., a partial) over param_groups(model); with fused=True when the model
    trains on CUDA and the optimizer has a fused kernel (one launch per step, not one per tensor),
    unless the config chose `fused` or `foreach` itself. On the CPU it is built as configured."""
    groups = param_groups(model, weight_decay)
    chosen = getattr(factory, "keywords", {}) or {}
    if device.type == "cuda" and getattr(factory, "func", factory) in FUSED and not {"fused", "foreach"} & set(chosen):
        return factory(groups, fused=True)
    return factory(groups)


def cosine(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: NonNegativeInt = 0,
    min_lr_ratio: Probability = 0.0,
) -> LambdaLR:
    """Linear warm-up over `warmup_steps`, then cosine decay to `min_lr_ratio` x lr at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def onecycle(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_frac: Probability = 0.2, final_ratio: Probability = 0.0
) -> LambdaLR:
    """Linear ramp up over `warmup_frac` of training, then linear decay to `final_ratio` x lr."""
    warmup = max(int(warmup_frac * total_steps), 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return final_ratio + (1 - final_ratio) * max(total_steps - step, 0) / max(total_steps - warmup, 1)

    return LambdaLR(optimizer, factor)


def step(
    optimizer: torch.optim.Optimizer, total_steps: int, step_size: PositiveInt = 1000, gamma: PositiveFloat = 0.1
) -> LambdaLR:
    """Multiply the learning rate by `gamma` every `step_size` optimizer steps."""
    return LambdaLR(optimizer, lambda s: gamma ** (s // step_size))


def plateau(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    monitor: str = "val/loss",
    mode: Literal["min", "max"] = "min",
    factor: Annotated[float, Range(gt=0, lt=1)] = 0.1,
    patience: NonNegativeInt = 10,
    threshold: NonNegativeFloat = 1e-4,
    cooldown: NonNegativeInt = 0,
    min_lr: NonNegativeFloat = 0.0,
) -> ReduceLROnPlateau:
    """Multiply the learning rate by `factor` once `monitor` has not improved (by a relative `threshold`)
    for `patience` validations in a row; then wait `cooldown` validations. Stepped at each validation."""
    if mode not in ("min", "max"):
        raise ConfigError(f"scheduler.mode={mode!r} is not valid; use 'min' or 'max'")
    scheduler = ReduceLROnPlateau(
        optimizer, mode=mode, factor=factor, patience=patience, threshold=threshold, cooldown=cooldown, min_lr=min_lr
    )
    scheduler.monitor = monitor  # type: ignore[attr-defined]  # a plain str: saved with the rest of its state_dict()
    return scheduler


def check_monitor(scheduler, names: list[str]) -> None:
    """A scheduler stepped on a metric must name one that validation logs (checked before training)."""
    monitor = getattr(scheduler, "monitor", None)
    if monitor is not None and monitor not in names:
        raise ConfigError(f"scheduler.monitor={monitor!r} is not a logged metric; valid: {sorted(names)}")
