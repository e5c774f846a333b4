"""Checkpoint files: atomic writes, RNG capture, clear errors, and finding the newest run.

A checkpoint is loaded with torch.load(weights_only=True), so opening one never runs code from it:
besides tensors it holds only dicts, lists and tuples of str/int/float/bool/None (`plain` makes a
state so, `check_plain` refuses anything else before it is written). A file that holds other
objects, or a bare pickle, is refused with one line and nothing in it is run.
"""

import os
import pickle
import random
import re
import threading
import warnings
from contextlib import nullcontext
from enum import Enum
from pathlib import Path, PurePath
from typing import Any

import torch

from bigmodel import distributed
from bigmodel.atomic import save_atomic  # noqa: F401  (checkpoint.save_atomic: the name callers know)
from bigmodel.config import Device, NonFinite, Precision, Profiler, Strategy

FORMAT_VERSION = 1
PLAIN = (str, int, float, bool, type(None), torch.Tensor)
# Format-1 files written before configs were stored plain hold these enum members in config.trainer.
# Unpickling one only looks a member up by value (Device("cpu")), so they are allowed, and nothing else.
LEGACY_ENUMS = [Device, Precision, NonFinite, Profiler, Strategy]


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or does not fit the current run."""


def plain(obj: Any) -> Any:
    """`obj` with enum members as their names (as config.yaml writes them), paths as str and numpy
    scalars as Python numbers, inside dicts, lists and tuples; everything else as it is."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [plain(v) for v in obj]
    if isinstance(obj, tuple):  # also a named tuple or torch.Size: a tuple loads without allowed globals
        return tuple(plain(v) for v in obj)
    if isinstance(obj, Enum):
        return obj.name
    if isinstance(obj, PurePath):
        return str(obj)
    if type(obj).__module__ == "numpy" and hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:
        return obj.item()
    return obj


def check_plain(obj: Any, key: str = "checkpoint") -> None:
    """Raise CheckpointError naming the first entry that torch.load(weights_only=True) would refuse."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise CheckpointError(f"{key} has a key of type {type(k).__name__}: checkpoints hold str or int keys")
            check_plain(v, f"{key}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_plain(v, f"{key}[{i}]")
    elif not isinstance(obj, PLAIN):
        raise CheckpointError(
            f"{key} holds a {type(obj).__module__}.{type(obj).__qualname__}: checkpoints hold "
            "only tensors and dicts/lists of str, int, float, bool and None"
        )


def _refusal(path: Path, e: Exception) -> str:
    """One line saying why torch.load(weights_only=True) refused the file."""
    name = f"ckpt_path={str(path)!r}"
    if isinstance(e, PermissionError):
        return f"{name} cannot be read ({e.strerror or e})"
    with open(path, "rb") as f:
        head = f.read(2)
    found = re.search(r"GLOBAL ([\w.]+)", str(e))
    if found:
        return (
            f"{name} is not a bigmodel checkpoint: it holds objects that are not allowed ({found[1]}), so it "
            "was not loaded; a checkpoint holds only tensors and plain values"
        )
    if head[:1] == b"\x80":  # the PROTO opcode that starts every pickle (protocol 2+), outside a torch zip
        return (
            f"{name} is not a bigmodel checkpoint: it is a bare pickle, not a file torch.save wrote, "
            "so it was not loaded"
        )
    detail = str(e).split("WeightsUnpickler error:")[-1].strip().split("\n")[0][:200]  # torch's advice: not shown
    if isinstance(e, pickle.UnpicklingError) and head == b"PK":
        return (
            f"{name} is not a bigmodel checkpoint: it holds pickle data that is not allowed ({detail}), "
            "so it was not loaded"
        )
    return f"{name} is not a readable checkpoint (truncated, or not a checkpoint file; {type(e).__name__}: {detail})"


def load(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by the Trainer, or fail with one line naming the file and the problem.
    Only tensors and plain values are unpickled (weights_only=True): nothing in the file can run."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"ckpt_path={str(path)!r} is a folder; give a checkpoint file (e.g. .../checkpoints/best.pt)"
        )
    if not path.is_file():
        raise CheckpointError(f"ckpt_path={str(path)!r}: no such file")
    scoped = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5; before: process-wide
    if scoped is None:
        torch.serialization.add_safe_globals(list(LEGACY_ENUMS))
    try:
        with warnings.catch_warnings(), scoped(LEGACY_ENUMS) if scoped else nullcontext():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols of foreign files: we refuse them
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # foreign objects, a bare pickle, truncated, not a torch file, ...
        raise CheckpointError(_refusal(path, e)) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"ckpt_path={str(path)!r} is not a bigmodel checkpoint (format {FORMAT_VERSION})")
    check_layout(ckpt, f"ckpt_path={str(path)!r}")
    if "config" in ckpt:
        ckpt["config"] = plain(ckpt["config"])  # format-1 files from before: enum members as names
    return ckpt


SECTIONS = ("model", "model_args", "data", "config", "progress", "callbacks")  # each a dict when present


def check_layout(ckpt: dict[str, Any], source: str) -> None:
    """One line for a checkpoint whose sections are not what the Trainer writes (a damaged or foreign
    file): each a dict, the weights a dict of tensors, the model's arguments keyed by name."""
    for key in SECTIONS:
        if key in ckpt and not isinstance(ckpt[key], dict):
            raise CheckpointError(
                f"{source}: its {key!r} is a {type(ckpt[key]).__name__}, not a dict: not a bigmodel checkpoint"
            )
    weights = ckpt.get("model") or {}
    if bad := next((k for k, v in weights.items() if not isinstance(k, str) or not torch.is_tensor(v)), None):
        raise CheckpointError(
            f"{source}: its weights hold {bad!r}, which is not a named tensor: not a bigmodel checkpoint"
        )
    if bad := next((k for k in ckpt.get("model_args") or {} if not isinstance(k, str)), None):
        raise CheckpointError(f"{source}: its model_args hold a key {bad!r} that is not a name")


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str = "") -> None:
    """load_state_dict with a message that lists what differs instead of a wall of keys."""
    state = {k.removeprefix("_orig_mod.").removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own.keys() & state.keys()
        if own[k].shape != state[k].shape
    ]
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
        return [
            d
            for k in sorted(set(saved) | set(now), key=str)
            for d in config_diff(saved.get(k), now.get(k), f"{key}.{k}")
        ]
    return [] if saved == now else [(key, saved, now)]


def check_resumable(ckpt: dict[str, Any], config: dict[str, Any] | None, path: str) -> None:
    """Resuming needs the checkpoint's model architecture and optimizer: name the keys that differ."""
    if "optimizer" in ckpt and ckpt["optimizer"] is None:  # a Trainer checkpoint always has the entry
        raise CheckpointError(
            f"ckpt_path={path!r} holds no optimizer state (best.pt is written for eval, export "
            "and init_from): resume from the run's checkpoints/last.pt (ckpt_path=auto finds it)"
        )
    saved = ckpt.get("config") or {}
    if not config or not saved:
        return
    changed = [
        d for d in config_diff(saved.get("model"), config.get("model"), "model") if not d[0].endswith("dropout")
    ]  # dropout may change on resume; shapes may not
    lines = [f"{k}: {a!r} in the checkpoint, {b!r} now" for k, a, b in changed]
    opt_then, opt_now = ((c.get("optimizer") or {}).get("_target_") for c in (saved, config))
    if opt_then != opt_now:
        lines.append(f"optimizer: {opt_then} in the checkpoint, {opt_now} now")
    if lines:
        raise CheckpointError(f"ckpt_path={path!r} does not fit this run: {'; '.join(lines)}")


def _own_rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state(torch.cuda.current_device())  # this process's GPU only
    return state


def rng_state() -> dict[str, Any]:
    """Python's, torch's and this process's GPU's RNG states; with several processes (every one
    calls this) also each rank's under "ranks", as each draws its own dropout masks."""
    own = _own_rng_state()
    ranks = distributed.gather_objects(own)
    return own if len(ranks) == 1 else {**ranks[0], "ranks": ranks}


def _set_cuda_rng_state(cuda: Any) -> None:
    device = torch.cuda.current_device()
    if isinstance(cuda, (list, tuple)):  # written before: one state per GPU visible then
        if device >= len(cuda):
            return  # a GPU the saving run did not see: it keeps its stream
        cuda = cuda[device]
    torch.cuda.set_rng_state(cuda, device)


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what rng_state() saved: this rank's states (rank 0's from a one-process run). A rank
    the saving run did not have keeps the seed + rank stream it started with. Resuming on fewer
    visible GPUs works: only this process's GPU is restored."""
    if "ranks" in state:
        rank = distributed.rank()
        if rank >= len(state["ranks"]):
            return
        state = state["ranks"][rank]
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        _set_cuda_rng_state(state["cuda"])


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
        raise CheckpointError(
            f"could not write the checkpoint {str(path)!r}: {e.strerror or e}; the checkpoints "
            "saved before it are unchanged (free space, or set callbacks.model_checkpoint.dirpath "
            "to another disk)"
        ) from None


def to_host(obj: Any) -> Any:
    """A copy of a state for writing later: every tensor copied to CPU memory (from a GPU into pinned
    memory, queued on the stream, so the host does not wait), every dict/list/tuple rebuilt, so
    training may change the live state while the copy is written."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        if t.device.type == "cpu":
            return t.clone()
        return torch.empty_like(t, device="cpu", pin_memory=torch.cuda.is_available()).copy_(t, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_host(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_host(v) for v in obj) if not hasattr(obj, "_fields") else type(obj)(*map(to_host, obj))
    return obj


class BackgroundWriter:
    """Writes checkpoints with save() in one background thread, one file at a time: write() first
    waits for the previous write (and raises its error, if it failed); wait() at the end of a run.
    The thread is not a daemon, so a write under way completes even when the run fails."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def write(self, state: dict[str, Any], path: str | os.PathLike, copied: Any = None) -> None:
        """Write `state` (already copied by to_host) to `path`; `copied`: a CUDA event the copies wait for."""
        self.wait()
        self._thread = threading.Thread(target=self._run, args=(state, path, copied), name="checkpoint-writer")
        self._thread.start()

    def _run(self, state: dict[str, Any], path: str | os.PathLike, copied: Any) -> None:
        try:
            if copied is not None:
                copied.synchronize()  # the device-to-host copies have landed
            save(state, path)
        except BaseException as e:  # handed to the training thread at the next write or wait()
            self._error = e

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error
