"""A model summary at the start of training (callbacks.model_summary): one row per top-level module
with its type, parameter counts and the shape of its output on the first training batch, logged
and written to the run folder as model_summary.txt.

The shapes come from forward hooks on one forward pass under no_grad in eval mode (no BatchNorm
statistics change, no random numbers are drawn), so a run with the summary trains exactly as one
without it. The pass runs on rank 0 only; under FSDP every process takes part (each forward
gathers the shards), and rank 0 writes.
"""

import logging
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from bigmodel.distributed import is_sharded

log = logging.getLogger("bigmodel")


@dataclass
class Row:
    name: str
    type: str
    params: int
    trainable: int
    output: str  # the output shape, e.g. [8, 16, 4, 4]; "-" when the module was not called


def _shape(out) -> str:
    if isinstance(out, torch.Tensor):
        return str(list(out.shape))
    if isinstance(out, PackedSequence):  # the packed tokens (sum of lengths, features)
        return f"packed {list(out.data.shape)}"
    if isinstance(out, (tuple, list)) and out:
        return "(" + ", ".join(_shape(o) for o in out) + ")"
    return "-"


def summarize(model: nn.Module, args: tuple, autocast=None) -> list[Row]:
    """One row per child of `model`, after calling `model(*args)` once (eval mode, no_grad)."""
    shapes: dict[str, str] = {}

    def record(name):
        def hook(module, inputs, out) -> None:  # returns None: a hook's return value replaces the output
            shapes.setdefault(name, _shape(out))

        return hook

    children = list(model.named_children())
    hooks = [m.register_forward_hook(record(name)) for name, m in children]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast() if autocast else nullcontext():
            model(*args)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return [
        Row(
            name,
            type(m).__name__,
            sum(p.numel() for p in m.parameters()),
            sum(p.numel() for p in m.parameters() if p.requires_grad),
            shapes.get(name, "-"),
        )
        for name, m in children
    ]


def table(model: nn.Module, rows: list[Row]) -> str:
    """The rows as aligned columns, then the totals (shared parameters counted once)."""
    head = ["", "name", "type", "params", "trainable", "output shape"]
    body = [[str(i), r.name, r.type, f"{r.params:,}", f"{r.trainable:,}", r.output] for i, r in enumerate(rows)]
    widths = [max(len(line[c]) for line in [head, *body]) for c in range(len(head))]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in [head, *body]]
    lines.insert(1, "-" * len(lines[0]))
    params = list(model.parameters())  # each tensor once, also when two modules share it
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    size_mb = sum(p.numel() * p.element_size() for p in params) / 1e6
    lines += [
        "",
        f"{trainable:,} trainable params",
        f"{total - trainable:,} non-trainable params",
        f"{total:,} total params",
        f"{size_mb:.2f} MB of parameters",
    ]
    return "\n".join(lines)


class ModelSummary:
    """Logs the summary table once, at the first training batch, and writes `dirpath`/model_summary.txt."""

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath, self.done = dirpath, False

    def on_train_batch_start(self, trainer, batch) -> None:
        if self.done:
            return
        self.done = True
        if not (trainer.is_global_zero or is_sharded(trainer.model)):
            return
        args, _ = trainer.runtime.prepare(batch)
        text = table(trainer.model, summarize(trainer.model, args, trainer.autocast))
        if not trainer.is_global_zero:
            return
        log.info(f"model summary:\n{text}")
        path = Path(self.dirpath or trainer.output_dir) / "model_summary.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
