"""Run folders: one per run, never shared, checked before any work, tidied on the next start.

configs/hydra/default.yaml names a run's folder `${bigmodel.new_dir:<log_dir>/<name>/runs/<time>}`
with the time to the microsecond. The `bigmodel.new_dir` resolver creates the folder with
os.mkdir, which fails when it exists, and then tries `<time>-1`, `<time>-2`, ...: two runs that
start at the same moment (or share a BIGMODEL_RUN_STAMP) get two folders. It is memoized, so
every resolution in one process gives the same folder; under torchrun rank 0 creates it and
sends its name to the other ranks.

A folder given by hand (`hydra.run.dir=...`) is used as is, so before a run writes anything,
`check_fresh` refuses to start a fresh run in a folder that already holds checkpoints (resuming
one of that folder's own checkpoints is allowed); `lock` keeps two runs started at once with the
same folder from both writing into it; `check_writable` finds a folder that cannot be written now
rather than at the first save.
"""

import copy
import itertools
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # not on Windows: runs there are not locked
    fcntl = None  # type: ignore[assignment]

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from bigmodel.config import ConfigError

log = logging.getLogger("bigmodel")

RESOLVER = "bigmodel.new_dir"
TRIAL_RESOLVER = "bigmodel.trial_name"  # ${bigmodel.trial_name:}: a sweep job's swept overrides (launch.trial_name)
LOCK_FILE = ".lock"  # held by the run writing into the folder
_claimed: dict[str, str] = {}  # requested path -> the folder this process got for it
_locks: dict[str, int] = {}  # run folder -> the open lock file this process holds


def register_resolver() -> None:
    """Make `${bigmodel.new_dir:path}` known to OmegaConf (before Hydra resolves hydra.run.dir).
    use_cache keeps the answer in the config, so a job sent to another process (submitit) reuses it."""
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, new_dir, use_cache=True)
    if not OmegaConf.has_resolver(TRIAL_RESOLVER):
        from bigmodel.launch import trial_name

        OmegaConf.register_new_resolver(TRIAL_RESOLVER, trial_name)


def new_dir(path: str) -> str:
    """The folder this process runs in for `path`: created on the first call, the same one after."""
    if path not in _claimed:
        _claimed[path] = _claim_on_rank_zero(path)
    return _claimed[path]


def _claim_on_rank_zero(path: str) -> str:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return claim(path)
    found = [claim(path) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(found, src=0)  # every rank resolves hydra.run.dir once: this pairs up
    return str(found[0])


def claim(path: str) -> str:
    """Create `path`, or `path-1`, `path-2`, ... when taken, and return the one created. A folder
    that cannot be created at all is returned unchanged for check_writable to report."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        return path
    for n in itertools.count():
        candidate = f"{path}-{n}" if n else path
        try:
            os.mkdir(candidate)  # atomic: exactly one process creates a given folder
            return candidate
        except FileExistsError:
            continue
        except OSError:
            return candidate
    raise AssertionError("unreachable")


def check_writable(folder: Path, key: str) -> None:
    """Create `folder` if needed and write a file in it, or raise ConfigError naming `key`."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise ConfigError(
            f"{key}={str(folder)!r} is not a writable folder ({e.strerror or e}); "
            "choose another one (or fix its permissions) before the run starts"
        ) from None


def lock(run_dir: Path) -> None:
    """Hold a lock on `run_dir` while this process lives (rank 0 only), or raise ConfigError when
    another process holds it: two runs given the same hydra.run.dir at once. The operating system
    drops the lock when the process ends, however it ends, so a crash leaves no stale lock."""
    key = str(run_dir.resolve())
    if fcntl is None or key in _locks or int(os.environ.get("RANK", "0")) > 0:
        return
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(
            f"hydra.run.dir={str(run_dir)!r} is in use by another run right now: wait for it to "
            "end, or leave hydra.run.dir out to get a new folder"
        ) from None
    except OSError:  # a file system without locks: the checks below still apply
        os.close(fd)
        return
    _locks[key] = fd


def unlock(run_dir: Path) -> None:
    fd = _locks.pop(str(run_dir.resolve()), None)
    if fd is not None:
        os.close(fd)  # closing the file releases the lock


def check_fresh(ckpt_dir: Path, resume_from: str | None) -> None:
    """A run writes into a checkpoint folder only if it holds no checkpoints, or if the run resumes
    one of them: anything else would overwrite another run's best.pt / last.pt."""
    found = sorted(p.name for p in ckpt_dir.glob("*.pt")) if ckpt_dir.is_dir() else []
    if not found or (resume_from and Path(resume_from).resolve().parent == ckpt_dir.resolve()):
        return
    doing = f"resuming {resume_from!r} here" if resume_from else "a fresh run (no ckpt_path) here"
    raise ConfigError(
        f"{str(ckpt_dir)!r} already holds the checkpoints of an earlier run ({', '.join(found)}) and "
        f"{doing} would overwrite them: resume that run with ckpt_path={ckpt_dir / 'last.pt'} "
        "(or ckpt_path=auto), or leave hydra.run.dir out to get a new folder"
    )


def remove_unfinished(ckpt_dir: Path) -> list[Path]:
    """Delete the temp files of saves that were cut short (checkpoint.save_atomic writes
    `.<name>.<random>.tmp` and renames it; a killed process leaves it behind)."""
    stale = [p for p in ckpt_dir.glob(".*.tmp") if p.is_file()] if ckpt_dir.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def prepare(run_dir: str, ckpt_dir: str, resume_from: str | None) -> None:
    """Start-up checks of a training run, before it writes anything (config.yaml included)."""
    check_writable(Path(run_dir), "hydra.run.dir")
    check_writable(Path(ckpt_dir), "callbacks.model_checkpoint.dirpath")
    lock(Path(run_dir))  # sweep jobs lock here; a single run already did in RunFolderCallback
    stale = remove_unfinished(Path(ckpt_dir))
    if stale:
        log.info(
            f"removed {len(stale)} unfinished checkpoint file(s) left by an interrupted save: "
            + ", ".join(p.name for p in stale)
        )
    check_fresh(Path(ckpt_dir), resume_from)


class RunFolderCallback(Callback):
    """Creates the run (or sweep) folder and checks it before Hydra writes into it (.hydra/, the
    log file), so a bad folder is one line and another run's files stay untouched."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        HydraConfig.instance().set_config(copy.deepcopy(config))  # ${name} reads ${hydra:...}; run_job sets it next
        run_dir = Path(str(config.hydra.run.dir))  # the default name creates a new folder here
        try:
            check_writable(run_dir, "hydra.run.dir")
            if "callbacks" in config:  # a training run: it writes checkpoints/
                lock(run_dir)
                ckpt, own = config.get("ckpt_path"), run_dir / "checkpoints" / "last.pt"
                resume_from = (str(own) if own.is_file() else None) if ckpt == "auto" else ckpt
                check_fresh(run_dir / "checkpoints", resume_from)
        except ConfigError as e:
            sys.exit(f"error: {e}")

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        unlock(Path(config.hydra.runtime.output_dir))  # a sweep's next job runs in this process

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:  # after SweepCallback (listed before this one), which makes ${name} resolvable here
            check_writable(Path(str(config.hydra.sweep.dir)), "hydra.sweep.dir")
        except ConfigError as e:
            sys.exit(f"error: {e}")


register_resolver()  # also on import: a sweep job unpickled in another process (submitit) imports this module
