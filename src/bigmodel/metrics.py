"""Evaluation metrics, accumulated over batches.

A metrics object has `reset()`, `update(logits, targets)`, `compute() -> dict[str, float]`
(scalar names without a split prefix, e.g. {"acc": 0.91}) and `report(logger, prefix, step)`
for what is not a scalar (images, tables). Under DDP the trainer sums `state()` across ranks.
`train_counts(logits, targets, ignore_index)` gives a training batch's (correct, counted) as device
tensors without reading them back, so the train loop stays free of host syncs.
"""

import math

import torch
import torch.nn.functional as F


def train_counts(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct argmax predictions, targets not equal to `ignore_index`), both 0-d on the logits' device."""
    keep = targets != ignore_index
    return ((logits.argmax(-1) == targets) & keep).sum(), keep.sum()  # no mask indexing: no sync


class Classification:
    """Accuracy, macro precision/recall/F1 and a confusion matrix for `num_classes` classes.

    Works for (B, C) logits with (B,) targets and for (B, T, C) with (B, T) (token level);
    targets equal to `ignore_index` are skipped.
    """

    def __init__(self, num_classes: int, class_names: list[str] | None = None,
                 ignore_index: int = -100, detailed: bool = True) -> None:
        self.num_classes, self.ignore_index, self.detailed = num_classes, ignore_index, detailed
        self.class_names = class_names or [str(i) for i in range(num_classes)]
        self.reset()

    def reset(self) -> None:
        n = self.num_classes if self.detailed else 1
        self.confusion = torch.zeros(n, n, dtype=torch.long)  # rows: true, cols: predicted
        self.correct = torch.zeros((), dtype=torch.long)
        self.total = torch.zeros((), dtype=torch.long)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        preds = logits.argmax(-1).flatten().cpu()
        targets = targets.flatten().cpu()
        keep = targets != self.ignore_index
        preds, targets = preds[keep], targets[keep]
        self.correct += (preds == targets).sum()
        self.total += targets.numel()
        if self.detailed:
            idx = targets * self.num_classes + preds
            self.confusion += torch.bincount(idx, minlength=self.num_classes**2).view_as(self.confusion)

    def train_counts(self, logits: torch.Tensor, targets: torch.Tensor,
                     ignore_index: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch's (correct, counted); `ignore_index` from the loss, else this object's."""
        return train_counts(logits, targets, self.ignore_index if ignore_index is None else ignore_index)

    def state(self) -> list[torch.Tensor]:
        """Tensors to sum across processes."""
        return [self.confusion, self.correct, self.total]

    def compute(self) -> dict[str, float]:
        out = {"acc": self.correct.item() / max(self.total.item(), 1)}
        if self.detailed:
            cm = self.confusion.double()
            tp = cm.diag()
            precision = tp / cm.sum(0).clamp(min=1)
            recall = tp / cm.sum(1).clamp(min=1)
            f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
            out |= {"precision": precision.mean().item(), "recall": recall.mean().item(),
                    "f1": f1.mean().item()}
        return out

    def table(self) -> str:
        """The confusion matrix as aligned text (rows: true label, columns: predicted)."""
        if not self.detailed:
            return "(no confusion matrix: detailed=false)"
        names = [n[:10] for n in self.class_names]
        width = max([len(n) for n in names] + [len(str(self.confusion.max().item()))]) + 1
        lines = ["true\\pred".ljust(width) + "".join(n.rjust(width) for n in names)]
        for name, row in zip(names, self.confusion.tolist()):
            lines.append(name.ljust(width) + "".join(str(v).rjust(width) for v in row))
        return "\n".join(lines)

    def report(self, logger, prefix: str, step: int) -> None:
        if self.detailed and self.num_classes <= 100:
            logger.log_image(f"{prefix}/confusion_matrix", confusion_image(self.confusion), step)


class LanguageModel:
    """Token-level cross-entropy, perplexity and accuracy for (B, T, V) logits."""

    def __init__(self, ignore_index: int = -100) -> None:
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        self.nll = torch.zeros((), dtype=torch.float64)
        self.correct = torch.zeros((), dtype=torch.long)
        self.total = torch.zeros((), dtype=torch.long)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        flat, t = logits.flatten(0, -2).float(), targets.flatten()
        self.nll += F.cross_entropy(flat, t, ignore_index=self.ignore_index, reduction="sum").cpu().double()
        keep = t != self.ignore_index
        self.correct += (flat.argmax(-1)[keep] == t[keep]).sum().cpu()
        self.total += keep.sum().cpu()

    def train_counts(self, logits: torch.Tensor, targets: torch.Tensor,
                     ignore_index: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch's (correct next tokens, counted tokens), as Classification.train_counts."""
        return train_counts(logits, targets, self.ignore_index if ignore_index is None else ignore_index)

    def state(self) -> list[torch.Tensor]:
        return [self.nll, self.correct, self.total]

    def compute(self) -> dict[str, float]:
        n = max(self.total.item(), 1)
        loss = self.nll.item() / n
        return {"ppl": math.exp(min(loss, 50.0)), "acc": self.correct.item() / n}

    def report(self, logger, prefix: str, step: int) -> None:
        pass


def confusion_image(confusion: torch.Tensor, cell: int = 12) -> torch.Tensor:
    """A (3, H, W) float image of a row-normalized confusion matrix: white = 0, dark blue = 1."""
    cm = confusion.double()
    frac = (cm / cm.sum(1, keepdim=True).clamp(min=1)).float()
    img = frac.repeat_interleave(cell, 0).repeat_interleave(cell, 1)
    rgb = torch.stack([1 - img, 1 - 0.6 * img, torch.ones_like(img) - 0.2 * img])
    return rgb.clamp(0, 1)
