"""One evaluation loop, shared by the Trainer (validation, test) and `bigmodel eval` (no Trainer)."""

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from bigmodel.config import TrainerConfig
from bigmodel.data.errors import DataError
from bigmodel.losses import ignore_index
from bigmodel.metrics import Metrics
from bigmodel.runtime import Runtime


def batch_limit(config: TrainerConfig, split: str) -> int:
    """How many batches of `split` to evaluate (-1: all)."""
    return config.limit_val_batches if split == "val" else config.limit_test_batches


@torch.no_grad()
def evaluate(
    runtime: Runtime,
    model: nn.Module,
    loader: Iterable,
    loss_fn: Any,
    metrics: Metrics,
    limit: int = -1,
    split: str = "val",
) -> dict[str, float]:
    """{"loss": ..., **metrics.compute()} over at most `limit` batches of `loader`, summed across
    processes; no split prefix. `model` (the uncompiled module) runs in eval mode for the duration."""
    was_training = model.training
    model.eval()
    metrics.reset()
    ignored = ignore_index(loss_fn)
    loss_sum = torch.zeros((), dtype=torch.float64, device=runtime.device)
    count = torch.zeros((), dtype=torch.float64, device=runtime.device)
    try:
        for i, batch in enumerate(loader):
            if 0 <= limit <= i:
                break
            args, targets = runtime.prepare(batch)
            with runtime.autocast():
                logits = model(*args)
                loss = loss_fn(logits, targets)
            n = (targets != ignored).sum()
            loss_sum += loss.double() * n
            count += n
            metrics.update(logits.float(), targets)
    finally:
        model.train(was_training)
    runtime.all_reduce_sum([loss_sum, count, *metrics.state()])
    if count.item() == 0:  # never report a loss and metrics of nothing as if measured
        raise DataError(f"the {split} split has no examples to evaluate")
    return {"loss": (loss_sum / count).item(), **metrics.compute()}


def evaluate_split(
    runtime: Runtime,
    model: nn.Module,
    datamodule: Any,
    split: str,
    loss_fn: Any,
    metrics: Metrics,
    limit: int,
    logger: Any,
    step: int,
) -> dict[str, float]:
    """`evaluate` over the data module's `split` (this process's share), prefixed with the split and
    logged at `step` by rank 0 with the metrics' report (confusion matrix, ...)."""
    loader = datamodule.loader(split, rank=runtime.rank, world_size=runtime.world_size, device=runtime.device)
    results = evaluate(runtime, model, loader, loss_fn, metrics, limit, split)
    prefixed = {f"{split}/{k}": v for k, v in results.items()}
    if runtime.is_global_zero:
        logger.log_metrics(prefixed, step)
        metrics.report(logger, split, step)
    return prefixed
