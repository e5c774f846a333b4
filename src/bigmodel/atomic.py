"""Atomic file writes: write a temp file in the target's folder, fsync, then rename over the target,
so a crash or a concurrent reader never sees half a file. A leaf module: it imports nothing of bigmodel."""

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch


@contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """A binary file to write that appears at `path` only when the block ends without an error;
    the temp file (`.<name>.<random>.tmp`, which rundir's clean-up knows) is removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Call `write(file)` on a temp file, then move it to `path`."""
    with atomic_open(path) as f:
        write(f)


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """torch.save `obj` to `path` atomically."""
    write_atomic(path, lambda f: torch.save(obj, f))


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """`text` as UTF-8 at `path`, atomically."""
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))
