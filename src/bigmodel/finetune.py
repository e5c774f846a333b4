"""Starting a run from another run's weights: `bigmodel train ... init_from=PATH`.

Only the model's weights come over: the optimizer, schedule and step count start fresh. What does
not fit is reported, one line per kind (missing keys, unexpected keys, tensors of another shape)
and left as the new model initialized it. Two size changes are expected and handled:
- the vocabulary: the data module reuses the checkpoint's (its `reuse_vocabulary`) and appends the
  training words it lacks, so every old word keeps its id and its embedding row; new rows keep their
  fresh initialization;
- the classes: a head for another number of classes is re-initialized; the same classes in another
  order have their rows re-ordered by name.
A checkpoint written by `bigmodel prune` lists the tensors it pruned: fine-tuning from it keeps their
zeros at zero (KeepSparsity) unless `init_keep_sparsity=false`; for other checkpoints,
`init_keep_sparsity=true` keeps the zeros of every weight matrix that is mostly zeros.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bigmodel import checkpoint
from bigmodel.checkpoint import CheckpointError
from bigmodel.config import ConfigError

log = logging.getLogger("bigmodel")
SPARSE_FRACTION = 0.1  # a weight matrix with at least this share of exact zeros counts as pruned


def resolve_path(path: str) -> Path:
    """A checkpoint file, or a run folder (its checkpoints/best.pt, else last.pt)."""
    p = Path(path).expanduser()
    if p.is_dir():
        for c in (p / "checkpoints" / "best.pt", p / "checkpoints" / "last.pt", p / "best.pt", p / "last.pt"):
            if c.is_file():
                return c
        raise CheckpointError(f"init_from={path!r} is a folder without checkpoints/best.pt or last.pt")
    if not p.is_file():
        raise CheckpointError(f"init_from={path!r}: no such file (give a checkpoint .pt or a run folder)")
    return p


def head_keys(model: nn.Module, num_classes: int | None) -> list[str]:
    """The classifier head's parameter names: those of the last nn.Linear with num_classes outputs."""
    if num_classes is None:
        return []
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if not names:
        return []
    return [f"{names[-1]}.{p}" for p, _ in model.get_submodule(names[-1]).named_parameters(recurse=False)]


def fold_pruning(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torch.nn.utils.prune, not made permanent, saves `w_orig` and `w_mask`: the weight is their product."""
    out = dict(state)
    for k in [k for k in state if k.endswith("_orig") and f"{k[:-5]}_mask" in state]:
        out[k[:-5]] = out.pop(k) * out.pop(f"{k[:-5]}_mask")
    return out


def _short(keys: list[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f" ... ({len(keys)} in all)" if len(keys) > n else "")


@dataclass
class Report:
    """What init_from did, key by key; `lines` is what was logged."""

    loaded: dict[str, torch.Tensor] = field(default_factory=dict)  # key -> the tensor put into the model
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    grown: list[str] = field(default_factory=list)  # vocabulary-sized: old rows copied, new rows kept
    head_reset: list[str] = field(default_factory=list)
    pruned: list[str] | None = None  # the tensors `bigmodel prune` zeroed (None: not a pruned checkpoint)
    lines: list[str] = field(default_factory=list)

    def say(self, line: str, level: int = logging.INFO) -> None:
        self.lines.append(line)
        log.log(level, line)


def from_config(init_from: str | None, keep_sparsity: object = None) -> "InitFrom | None":
    """The top-level `init_from` / `init_keep_sparsity` keys, checked (keep_sparsity None: automatic)."""
    if keep_sparsity is not None and not isinstance(keep_sparsity, bool):
        raise ConfigError(
            f"init_keep_sparsity={keep_sparsity!r} is not valid; use true, false or null "
            "(null: keep the zeros of a checkpoint written by bigmodel prune)"
        )
    if not init_from:
        if keep_sparsity:
            raise ConfigError("init_keep_sparsity=true needs init_from=PATH (the pruned checkpoint to fine-tune)")
        return None
    return InitFrom(str(init_from), keep_sparsity=keep_sparsity)


class InitFrom:
    """A checkpoint to start from. Call reuse_vocabulary(datamodule) before its setup(), then
    load_weights(model, datamodule) on the freshly built model."""

    def __init__(self, path: str, keep_sparsity: bool | None = None) -> None:
        self.path, self.keep_sparsity = str(resolve_path(path)), keep_sparsity
        try:
            self.ckpt = checkpoint.load(self.path)
        except CheckpointError as e:
            raise CheckpointError(f"init_from: {e}") from None
        if "model" not in self.ckpt:
            raise CheckpointError(f"init_from={self.path!r} holds no model weights: not written by bigmodel train")
        self.data_state: dict[str, Any] = self.ckpt.get("data") or {}
        self.model_args: dict[str, Any] = self.ckpt.get("model_args") or {}
        self.vocab_reused = False

    def reuse_vocabulary(self, datamodule) -> None:
        """A data module with a vocabulary (text, LM) starts from the checkpoint's and extends it."""
        reuse = getattr(datamodule, "reuse_vocabulary", None)
        if reuse is not None and self.data_state:
            self.vocab_reused = bool(reuse(self.data_state))

    def load_weights(self, model: nn.Module, datamodule, config: dict[str, Any] | None = None) -> Report:
        """Copy the checkpoint's weights into `model` (built for `datamodule`) where they fit."""
        kept = ((self.ckpt.get("callbacks") or {}).get("keep_sparsity") or {}).get("tensors")  # a fine-tuned one
        report = Report(pruned=(self.ckpt.get("pruning") or {}).get("tensors", kept))
        own = model.state_dict()
        state = fold_pruning(
            {k.removeprefix("_orig_mod.").removeprefix("module."): v for k, v in self.ckpt["model"].items()}
        )
        new_args = datamodule.model_args()
        head = set(head_keys(model, new_args.get("num_classes")))
        head_rows = self._head_rows(new_args, datamodule, report) if head else None
        for k, t in own.items():
            if k not in state:
                report.missing.append(k)
                continue
            src = state[k][head_rows] if k in head and isinstance(head_rows, list) else state[k]
            if k in head and head_rows == "reset":
                report.head_reset.append(k)
            elif src.shape == t.shape:
                report.loaded[k] = src
            elif self._vocab_rows(src, t, new_args):
                grown = t.detach().clone()
                grown[: src.shape[0]] = src
                report.loaded[k], report.grown = grown, [*report.grown, k]
            else:
                report.mismatched.append(f"{k}: checkpoint {tuple(src.shape)} vs model {tuple(t.shape)}")
        report.unexpected = [k for k in state if k not in own]
        if not report.loaded:
            target = ((self.ckpt.get("config") or {}).get("model") or {}).get("_target_")
            raise CheckpointError(
                f"init_from={self.path!r}: no weight of the checkpoint fits {type(model).__name__} "
                f"(the checkpoint's model: {target})"
            )
        model.load_state_dict(report.loaded, strict=False)
        self._summarize(report, own, new_args, config)
        return report

    def _vocab_rows(self, old: torch.Tensor, new: torch.Tensor, new_args: dict[str, Any]) -> bool:
        """Whether `old` is a vocabulary-sized tensor of which `new` extends the rows (reused vocabulary)."""
        v_old, v_new = self.model_args.get("vocab_size"), new_args.get("vocab_size")
        return (
            self.vocab_reused
            and v_old is not None
            and v_new is not None
            and v_old <= v_new
            and old.dim() >= 1
            and old.shape[0] == v_old
            and new.shape[0] == v_new
            and old.shape[1:] == new.shape[1:]
        )

    def _head_rows(self, new_args: dict[str, Any], datamodule, report: Report):
        """ "reset" (re-initialize the head), a row order (old index per new class), or None (load as is)."""
        n_old, n_new = self.model_args.get("num_classes"), new_args.get("num_classes")
        old_names = self.data_state.get("class_names")
        new_names = (datamodule.state_dict() or {}).get("class_names")
        if n_old is None or n_new is None:
            return None
        if n_old != n_new:
            say = f"{n_old} classes {old_names}" if old_names and n_old <= 10 else f"{n_old} classes"
            now = f"{n_new} {new_names}" if new_names and n_new <= 10 else f"{n_new}"
            report.say(
                f"init_from: the checkpoint's head has {say}, this data has {now}: head re-initialized", logging.WARNING
            )
            return "reset"
        if not old_names or not new_names or list(old_names) == list(new_names):
            return None
        if sorted(old_names) == sorted(new_names):
            report.say(
                f"init_from: the same classes in another order: head rows re-ordered by name to {list(new_names)}"
            )
            return [list(old_names).index(n) for n in new_names]
        report.say(
            f"init_from: the checkpoint's classes {list(old_names)} are not this data's {list(new_names)}: "
            "the head is kept by position (class i stays class i)",
            logging.WARNING,
        )
        return None

    def _summarize(
        self, report: Report, own: dict[str, torch.Tensor], new_args: dict[str, Any], config: dict[str, Any] | None
    ) -> None:
        report.say(
            f"init_from {self.path}: {len(report.loaded)} of {len(own)} tensors loaded "
            "(weights only: a new optimizer, schedule and step count)"
        )
        if report.grown:
            v_old, v_new = self.model_args["vocab_size"], new_args["vocab_size"]
            report.say(
                f"init_from: vocabulary rows of {_short(report.grown)}: {v_old:,} from the checkpoint, "
                f"{v_new - v_old:,} new tokens initialized"
            )
        warn = logging.WARNING
        if report.missing:
            report.say(f"init_from: missing in the checkpoint (left as initialized): {_short(report.missing)}", warn)
        if report.unexpected:
            report.say(f"init_from: unexpected in the checkpoint (ignored): {_short(report.unexpected)}", warn)
        if report.mismatched:
            report.say(
                f"init_from: shape mismatch (left as initialized): {'; '.join(report.mismatched[:4])}"
                + (f" ... ({len(report.mismatched)} in all)" if len(report.mismatched) > 4 else ""),
                warn,
            )
        saved = (self.ckpt.get("config") or {}).get("model")
        diffs = checkpoint.config_diff(saved, (config or {}).get("model"), "model") if saved and config else []
        if diffs and (report.missing or report.unexpected or report.mismatched):
            report.say(
                "init_from: the model config differs from the checkpoint's: "
                + "; ".join(f"{k}={b!r} (checkpoint {a!r})" for k, a, b in diffs[:6]),
                warn,
            )


# ---------------------------------------------------------------- pruned checkpoints
def sparse_masks(report: Report, model: nn.Module) -> dict[str, torch.Tensor]:
    """name -> (tensor != 0) for each loaded weight matrix or kernel with >= SPARSE_FRACTION exact zeros."""
    params = dict(model.named_parameters())
    masks = {}
    for k, t in report.loaded.items():
        if k in params and t.dim() >= 2 and t.is_floating_point():
            zero = t == 0
            if zero.float().mean().item() >= SPARSE_FRACTION:
                masks[k] = ~zero
    return masks


def pruned_masks(report: Report, model: nn.Module) -> dict[str, torch.Tensor]:
    """name -> (tensor != 0) for each tensor `bigmodel prune` zeroed that was loaded into a parameter,
    whatever its share of zeros (a global threshold leaves some layers only lightly pruned)."""
    params = dict(model.named_parameters())
    return {k: report.loaded[k] != 0 for k in report.pruned or [] if k in report.loaded and k in params}


def keep_sparsity(report: Report, model: nn.Module, keep: bool | None) -> "KeepSparsity | None":
    """The callback that holds the checkpoint's zeros at zero, or a hint that one exists. keep=None:
    yes for a checkpoint `bigmodel prune` wrote, no (with the hint) for others."""
    pruned = report.pruned is not None and keep is not False
    masks = pruned_masks(report, model) if pruned else sparse_masks(report, model)
    if not masks:
        if keep:
            log.warning(
                f"init_keep_sparsity=true: no weight matrix of the checkpoint has >= {SPARSE_FRACTION:.0%} "
                "zeros (not a pruned checkpoint): nothing to keep"
            )
        return None
    zeros = sum(int((~m).sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    what = f"{len(masks)} {'pruned' if pruned else 'weight'} tensors of the checkpoint are {zeros / total:.1%} zeros"
    if not (keep or pruned):
        log.info(f"init_from: {what} (pruned?); init_keep_sparsity=true keeps them at zero while fine-tuning")
        return None
    log.info(f"init_keep_sparsity: {what}; they stay zero after every optimizer step")
    return KeepSparsity(masks)


class KeepSparsity:
    """A callback: re-applies fixed 0/1 masks to named parameters after every optimizer step, so the
    zeros of a pruned checkpoint stay zero while the remaining weights train."""

    def __init__(self, masks: dict[str, torch.Tensor]) -> None:
        self.masks = masks
        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def on_fit_start(self, trainer) -> None:
        params = {k.removeprefix("_orig_mod.").removeprefix("module."): p for k, p in trainer.model.named_parameters()}
        absent = sorted(set(self.masks) - set(params))
        if absent:  # e.g. FSDP flattens parameters under other names
            raise CheckpointError(
                f"init_keep_sparsity: parameters {_short(absent)} not found in the trained "
                "model (not supported with trainer.strategy=fsdp)"
            )
        self.pairs = [(params[k], m.to(device=params[k].device, dtype=params[k].dtype)) for k, m in self.masks.items()]
        self.apply()

    def on_train_batch_end(self, trainer, loss) -> None:
        self.apply()

    def state_dict(self) -> dict[str, Any]:
        """Saved in the run's checkpoints, so fine-tuning from them again keeps the same zeros."""
        return {"tensors": list(self.masks)}

    @torch.no_grad()
    def apply(self) -> None:
        for p, m in self.pairs:
            p.mul_(m)
