"""Loss components: called as loss_fn(logits, targets) -> scalar."""

import torch
import torch.nn.functional as F
from torch import nn

from bigmodel.ranges import Probability


class CrossEntropy(nn.Module):
    """Cross-entropy over the last logits dimension; (B, C) vs (B,) or (B, T, V) vs (B, T)."""

    def __init__(self, label_smoothing: Probability = 0.0, ignore_index: int = -100) -> None:
        super().__init__()
        self.label_smoothing, self.ignore_index = label_smoothing, ignore_index

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits.flatten(0, -2).float(),
            targets.flatten(),
            label_smoothing=self.label_smoothing,
            ignore_index=self.ignore_index,
        )


def ignore_index(loss_fn: object) -> int:
    """The target value `loss_fn` ignores (padding, masked tokens): its `ignore_index`, else -100
    (torch's cross-entropy default)."""
    return getattr(loss_fn, "ignore_index", -100)
