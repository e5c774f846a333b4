"""An exponential moving average of the weights (callbacks=ema): evaluation and best.pt use the average.

After every optimizer step the average moves toward the weights:

    avg <- d * avg + (1 - d) * w,   d = min(decay, (1 + n) / (10 + n))   (n: updates so far)

The warm-up term lets the average forget its starting point quickly while the weights still move
fast; `warmup=false` uses `decay` from the first step. Only parameters are averaged: buffers
(BatchNorm statistics) are the model's own, used as they are.

The trainer enters `eval_weights(trainer)` around each evaluation and the writing of best.pt: the
average and the weights exchange values (exact both ways) and exchange back afterwards. A checkpoint
written in between records `swapped`, so resuming from best.pt is as exact as from last.pt.
Under DDP the average is of the unwrapped module's parameters (the same on every process); under
FSDP each process averages its own shards and the checkpoint holds the full tensors, gathered on
every process while it is written (memory for one full copy of the weights each).
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from bigmodel.checkpoint import CheckpointError
from bigmodel.ranges import Probability


def _full(t: torch.Tensor) -> torch.Tensor:
    """A CPU copy of the whole tensor (an FSDP shard is gathered: every process must call this)."""
    if hasattr(t, "full_tensor"):  # a DTensor
        t = t.full_tensor()
    return t.detach().to("cpu", copy=True)


def _like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`full` laid out as `like`: sharded the same way when `like` is an FSDP shard."""
    if hasattr(like, "full_tensor"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full.to(like.device), like.device_mesh, like.placements)  # type: ignore[attr-defined]
    return full


def _reshard(model: nn.Module) -> None:
    """FSDP keeps the root's gathered weights after a forward without backward (evaluation): drop
    them, so the next forward gathers the values written into the shards."""
    if not torch.distributed.is_available():
        return
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


class EMA:
    """Keeps `decay`-weighted average of the model's parameters, updated after every optimizer step;
    with `use_for_eval`, validation, test and best.pt use it."""

    def __init__(self, decay: Probability = 0.999, warmup: bool = True, use_for_eval: bool = True) -> None:
        self.decay, self.warmup, self.use_for_eval = decay, warmup, use_for_eval
        self.updates = 0  # optimizer steps averaged so far
        self.swapped = False  # the model holds the average and `average` the weights (inside eval_weights)
        self.params: dict[str, nn.Parameter] = {}
        self.average: dict[str, torch.Tensor] = {}
        self._loaded: dict | None = None  # a checkpoint's state, applied once the model is known

    def decay_at(self, n: int) -> float:
        """The decay of update number `n` (0-based)."""
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    def on_fit_start(self, trainer) -> None:
        # trainer.model is the unwrapped module (DDP) or the sharded one (FSDP: DTensor shards)
        self.params = {n: p for n, p in trainer.model.named_parameters() if p.is_floating_point()}
        with torch.no_grad():
            self.average = {n: p.detach().clone() for n, p in self.params.items()}
        if self._loaded is not None:
            self._restore(trainer, self._loaded)
            self._loaded = None

    def on_train_batch_end(self, trainer, loss) -> None:
        if not self.params:
            return
        d = self.decay_at(self.updates)
        with torch.no_grad():  # avg + (1 - d) * (w - avg)
            torch._foreach_lerp_(list(self.average.values()), list(self.params.values()), 1.0 - d)
        self.updates += 1

    @contextmanager
    def eval_weights(self, trainer) -> Iterator[None]:
        if not (self.use_for_eval and self.params):
            yield
            return
        self._exchange(trainer)
        try:
            yield
        finally:
            self._exchange(trainer)

    def _exchange(self, trainer) -> None:
        _reshard(trainer.model)
        with torch.no_grad():
            for name, p in self.params.items():
                avg = self.average[name]
                held = p.detach().clone()
                p.copy_(avg)
                avg.copy_(held)
        self.swapped = not self.swapped

    def state_dict(self) -> dict:
        return {
            "updates": self.updates,
            "swapped": self.swapped,
            "average": {n: _full(a) for n, a in self.average.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.updates = state["updates"]
        self._loaded = state

    def _restore(self, trainer, state: dict) -> None:
        missing = sorted(set(self.average) - set(state["average"]))
        if missing:
            raise CheckpointError(f"callbacks.ema: the checkpoint's average lacks {missing[:5]}")
        with torch.no_grad():
            for name, avg in self.average.items():
                avg.copy_(_like(state["average"][name], avg))
        self.swapped = state["swapped"]
        if self.swapped:  # written inside eval_weights (best.pt): put the training weights back
            self._exchange(trainer)
