"""Evaluation metrics, accumulated over batches.

A metrics object has `reset()`, `update(logits, targets)`, `compute() -> dict[str, float]`
(scalar names without a split prefix, e.g. {"acc": 0.91}) and `report(logger, prefix, step)`
for what is not a scalar (figures, tables, PR curves). Under DDP the trainer sums `state()` across ranks.
`train_counts(logits, targets, ignore_index)` gives a training batch's (correct, counted) as device
tensors without reading them back, so the train loop stays free of host syncs.
"""

import math
from typing import Any, Protocol

import torch
import torch.nn.functional as F

PR_THRESHOLDS = 101  # PR curves: scores binned at 0.00, 0.01, ..., 1.00
MAX_REPORTED_CLASSES = 100  # more classes: no confusion figure, no PR curves


class Metrics(Protocol):
    """What the Trainer and `bigmodel eval` need of a data module's metrics (no base class to inherit)."""

    def reset(self) -> None: ...

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None: ...

    def state(self) -> list[torch.Tensor]: ...  # summed across processes before compute()

    def compute(self) -> dict[str, float]: ...

    def report(self, logger: Any, prefix: str, step: int) -> None: ...

    def train_counts(
        self, logits: torch.Tensor, targets: torch.Tensor, ignore_index: int
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


def train_counts(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct argmax predictions, targets not equal to `ignore_index`), both 0-d on the logits' device."""
    keep = targets != ignore_index
    return ((logits.argmax(-1) == targets) & keep).sum(), keep.sum()  # no mask indexing: no sync


class Classification:
    """Accuracy, macro precision/recall/F1 and a confusion matrix for `num_classes` classes.

    Works for (B, C) logits with (B,) targets and for (B, T, C) with (B, T) (token level);
    targets equal to `ignore_index` are skipped. With `detailed`, up to MAX_REPORTED_CLASSES
    classes, it also keeps histograms of each class's softmax score over the examples of that
    class and over the others: the PR curves come from them, and they sum across processes.
    """

    def __init__(
        self, num_classes: int, class_names: list[str] | None = None, ignore_index: int = -100, detailed: bool = True
    ) -> None:
        self.num_classes, self.ignore_index, self.detailed = num_classes, ignore_index, detailed
        self.class_names = class_names or [str(i) for i in range(num_classes)]
        self.reset()

    def reset(self) -> None:
        n = self.num_classes if self.detailed else 1
        self.confusion = torch.zeros(n, n, dtype=torch.long)  # rows: true, cols: predicted
        self.correct = torch.zeros((), dtype=torch.long)
        self.total = torch.zeros((), dtype=torch.long)
        c = self.num_classes if self._curves() else 0
        self.scores = torch.zeros(2, c, PR_THRESHOLDS, dtype=torch.long)  # [negative, positive], class, bin

    def _curves(self) -> bool:
        return self.detailed and self.num_classes <= MAX_REPORTED_CLASSES

    @torch.no_grad()
    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        flat = logits.reshape(-1, logits.shape[-1])
        preds = flat.argmax(-1).cpu()
        targets = targets.flatten().cpu()
        keep = targets != self.ignore_index
        preds, targets = preds[keep], targets[keep]
        self.correct += (preds == targets).sum()
        self.total += targets.numel()
        if self.detailed:
            idx = targets * self.num_classes + preds
            self.confusion += torch.bincount(idx, minlength=self.num_classes**2).view_as(self.confusion)
        if self._curves():
            probs = flat.float().softmax(-1).cpu()[keep]  # (N, C)
            bins = (probs * (PR_THRESHOLDS - 1)).floor().long().clamp(0, PR_THRESHOLDS - 1)
            positive = F.one_hot(targets, self.num_classes)  # (N, C): 1 where the class is the true one
            classes = torch.arange(self.num_classes).expand_as(bins)
            idx = (positive * self.num_classes + classes) * PR_THRESHOLDS + bins
            self.scores += torch.bincount(idx.flatten(), minlength=self.scores.numel()).view_as(self.scores)

    def train_counts(
        self, logits: torch.Tensor, targets: torch.Tensor, ignore_index: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch's (correct, counted); `ignore_index` from the loss, else this object's."""
        return train_counts(logits, targets, self.ignore_index if ignore_index is None else ignore_index)

    def state(self) -> list[torch.Tensor]:
        """Tensors to sum across processes."""
        return [self.confusion, self.correct, self.total, self.scores]

    def compute(self) -> dict[str, float]:
        out = {"acc": self.correct.item() / max(self.total.item(), 1)}
        if self.detailed:
            cm = self.confusion.double()
            tp = cm.diag()
            precision = tp / cm.sum(0).clamp(min=1)
            recall = tp / cm.sum(1).clamp(min=1)
            f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
            out |= {"precision": precision.mean().item(), "recall": recall.mean().item(), "f1": f1.mean().item()}
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

    def per_class(self) -> str:
        """Precision, recall, F1 and support of each class, as aligned text."""
        cm = self.confusion.double()
        tp, support = cm.diag(), cm.sum(1)
        precision, recall = tp / cm.sum(0).clamp(min=1), tp / support.clamp(min=1)
        f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
        width = max(len("class"), *(len(n) for n in self.class_names))
        lines = [f"{'class':<{width}}  precision  recall     f1  support"]
        for i, name in enumerate(self.class_names):
            lines.append(f"{name:<{width}}  {precision[i]:9.4f}  {recall[i]:6.4f}  {f1[i]:.4f}  {int(support[i]):7d}")
        lines.append(
            f"{'macro':<{width}}  {precision.mean():9.4f}  {recall.mean():6.4f}  {f1.mean():.4f}  "
            f"{int(support.sum()):7d}"
        )
        return "\n".join(lines)

    def pr_counts(self, c: int) -> tuple[torch.Tensor, ...]:
        """(tp, fp, tn, fn) of class `c` at the thresholds 0, 1/(PR_THRESHOLDS-1), ..., 1: an example
        counts as predicted `c` when its score for `c` is at least the threshold."""
        neg, pos = self.scores[0, c], self.scores[1, c]
        tp, fp = _at_least(pos), _at_least(neg)
        return tp, fp, neg.sum() - fp, pos.sum() - tp

    def report(self, logger, prefix: str, step: int) -> None:
        """A confusion-matrix figure, the per-class table (Text tab) and one PR curve per class."""
        if not self._curves() or self.total.item() == 0:
            return
        from bigmodel.figures import confusion_figure

        title = f"{prefix} at step {step}: accuracy {self.correct.item() / self.total.item():.2%}"
        logger.log_image(f"{prefix}/confusion_matrix", confusion_figure(self.confusion, self.class_names, title), step)
        logger.log_text(f"{prefix}/per_class", self.per_class(), step)
        for c, name in enumerate(self.class_names):
            logger.log_pr_curve(f"{prefix}/pr_curve/{name.replace('/', '_')}", *self.pr_counts(c), step)


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

    def train_counts(
        self, logits: torch.Tensor, targets: torch.Tensor, ignore_index: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
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


def _at_least(hist: torch.Tensor) -> torch.Tensor:
    """From counts per score bin to counts of scores at or above each bin's threshold."""
    return hist.flip(0).cumsum(0).flip(0)
