"""Checkpoint files: atomic writes, RNG capture, clear errors, and finding the newest run."""

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import torch

from bigmodel import distributed

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or does not fit the current run."""


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temp file in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by the Trainer, or fail with one line naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ckpt_path={str(path)!r}: no such file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated, not a torch file, ...
        raise CheckpointError(f"ckpt_path={str(path)!r} is not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"ckpt_path={str(path)!r} is not a bigmodel checkpoint (format {FORMAT_VERSION})")
    return ckpt


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str = "") -> None:
    """load_state_dict with a message that lists what differs instead of a wall of keys."""
    state = {k.removeprefix("_orig_mod.").removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own.keys() & state.keys() if own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if shapes:
            parts.append("shape mismatch " + "; ".join(shapes[:5]))
        raise CheckpointError(f"checkpoint {path!r} does not fit this model: " + ", ".join(parts))
    distributed.load_model_state_dict(model, state)  # also into a model sharded by FSDP


def config_diff(saved: Any, now: Any, key: str) -> list[tuple[str, Any, Any]]:
    """(key.sub, value in the checkpoint, value now) for each value that differs between two config trees."""
    if isinstance(saved, dict) and isinstance(now, dict):
        return [d for k in sorted(set(saved) | set(now), key=str)
                for d in config_diff(saved.get(k), now.get(k), f"{key}.{k}")]
    return [] if saved == now else [(key, saved, now)]


def check_resumable(ckpt: dict[str, Any], config: dict[str, Any] | None, path: str) -> None:
    """Resuming needs the checkpoint's model architecture and optimizer: name the keys that differ."""
    saved = ckpt.get("config") or {}
    if not config or not saved:
        return
    changed = [d for d in config_diff(saved.get("model"), config.get("model"), "model")
               if not d[0].endswith("dropout")]  # dropout may change on resume; shapes may not
    lines = [f"{k}: {a!r} in the checkpoint, {b!r} now" for k, a, b in changed]
    opt_then, opt_now = ((c.get("optimizer") or {}).get("_target_") for c in (saved, config))
    if opt_then != opt_now:
        lines.append(f"optimizer: {opt_then} in the checkpoint, {opt_now} now")
    if lines:
        raise CheckpointError(f"ckpt_path={path!r} does not fit this run: {'; '.join(lines)}")


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def newest(run_glob_root: str | os.PathLike, name: str = "last.pt", exclude: str | None = None) -> Path:
    """The most recently written `checkpoints/<name>` under a folder of runs (for ckpt_path=auto)."""
    root = Path(run_glob_root)
    skip = Path(exclude).resolve() if exclude is not None else None  # runs/1 excludes runs/1/..., not runs/1-1
    found = [p for p in root.glob(f"**/checkpoints/{name}") if skip is None or skip not in p.resolve().parents]
    if not found:
        raise CheckpointError(f"ckpt_path=auto: no checkpoints/{name} under {str(root)!r} to resume from")
    return max(found, key=lambda p: p.stat().st_mtime)


def save(obj: Any, path: str | os.PathLike) -> None:
    """save_atomic for the Trainer: a full disk or a read-only file system is one line naming the
    file, and the checkpoints written before stay as they were (the temp file is removed)."""
    try:
        save_atomic(obj, path)
    except OSError as e:
        raise CheckpointError(f"could not write the checkpoint {str(path)!r}: {e.strerror or e}; the checkpoints "
                              "saved before it are unchanged (free space, or set callbacks.model_checkpoint.dirpath "
                              "to another disk)") from None
