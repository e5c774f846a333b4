"""How runs start: several processes for one run, and sweeps of many runs.

`trainer.devices=N` starts N copies of this command with torchrun, and every process that
torchrun starts (that way or by hand) agrees on one run folder.

Each process runs Hydra. The run folder's name holds the start time (`${now:...}`), which
differs between processes, so rank 0's time is broadcast to all of them and read by
configs/hydra/default.yaml as ${oc.env:BIGMODEL_RUN_STAMP}; rank 0 alone creates the folder and
tells the others its name (bigmodel.rundir). Ranks > 0 write no .hydra/ folder and no train.log,
and log warnings only, so the console shows each line once.

Sweeps (`-m`, `hparams_search=...`) put their runs under one folder named after `${name}`;
SweepCallback (registered in configs/hydra/default.yaml) makes `${name}` resolvable there. A job
that fails is recorded in its folder's error.txt (`job_failed`) and the sweep goes on; the summary
at the end lists the failed jobs, and the sweep then exits with status 1.
"""

import copy
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("bigmodel")

ERROR_FILE = "error.txt"  # in a failed sweep job's folder
STAMP_ENV = "BIGMODEL_RUN_STAMP"
SWEPT_ENV = "BIGMODEL_SWEPT_KEYS"  # the keys a sweep varies, comma-separated (set by SweepCallback)
STAMP_FORMAT = "%Y-%m-%d_%H-%M-%S.%f"  # as in configs/hydra/default.yaml
QUIET = [  # Hydra overrides for ranks > 0
    "hydra.output_subdir=null",
    "~hydra.job_logging.handlers.file",
    "hydra.job_logging.root.handlers=[console]",
    "hydra.job_logging.root.level=WARNING",
    "hydra.hydra_logging.root.level=WARNING",
]


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def prepare(argv: list[str]) -> list[str]:
    """The overrides this process runs `bigmodel train` with; starts torchrun (and exits) for trainer.devices > 1."""
    if under_torchrun():
        return join_group(argv)
    maybe_launch(argv)
    return argv


def join_group(argv: list[str]) -> list[str]:
    from bigmodel import distributed

    os.environ[STAMP_ENV] = distributed.shared_stamp(STAMP_FORMAT)  # joins the process group
    rank = int(os.environ.get("RANK", "0"))
    return argv if rank == 0 else [*argv, *QUIET]


def maybe_launch(argv: list[str]) -> None:
    devices = next((a.split("=", 1)[1] for a in argv if a.lstrip("+").startswith("trainer.devices=")), "1")
    if "LOCAL_RANK" in os.environ:
        return
    try:
        n = int(devices)
    except ValueError:
        sys.exit(f"bigmodel: trainer.devices={devices!r} is not an integer")
    if n <= 1:
        return
    if "-m" in argv or "--multirun" in argv or any(a.startswith("hparams_search=") for a in argv):
        print(
            f"bigmodel: trainer.devices={n} is ignored in a sweep (-m): each job runs in one process; "
            "for multi-GPU jobs use hydra/launcher=submitit_slurm (README: Scaling out)",
            file=sys.stderr,
        )
        return
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={n}",
        "-m",
        "bigmodel",
        "train",
        *argv,
    ]
    proc = subprocess.Popen(cmd)
    # Ctrl-C reaches torchrun and its workers directly (one process group): wait for their clean stop.
    # A SIGTERM sent to this process alone (kill, a scheduler) is passed on to torchrun.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signum))
    sys.exit(proc.wait())


def job_failed(message: str, details: str | None = None) -> None:
    """Record a failed sweep job: one line on the console, the error (and `details`, a traceback)
    in the job's error.txt for the summary. Returns None, the job's result, so the sweep goes on."""
    hydra = HydraConfig.get()
    first = f"job {hydra.job.num} ({' '.join(hydra.overrides.task)}) failed: {message}"
    path = Path(hydra.runtime.output_dir) / ERROR_FILE
    try:
        path.write_text(first + "\n" + (f"\n{details}" if details else ""))
    except OSError:  # e.g. the disk is full: the console line must do
        pass
    log.error(f"error: {first}" + (f" (traceback in {path})" if details else ""))


def swept_keys(config: DictConfig) -> list[str]:
    """The keys a sweep varies: its sweep overrides (`optimizer.lr=1e-3,3e-3`, `range(...)`) and
    the search space of `hydra.sweeper.params` (hparams_search=...)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    keys = [o.key_or_group for o in parsed if o.is_sweep_override()]
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    return list(dict.fromkeys([*keys, *(str(k) for k in params)]))


def trial_name() -> str:
    """In a sweep job, its values of the swept keys as a folder name (`optimizer.lr=0.001,seed=1`);
    "" outside sweeps. TensorBoard names each trial after it (configs/logger/tensorboard.yaml)."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return ""
    swept = [k for k in os.environ.get(SWEPT_ENV, "").split(",") if k]
    task = HydraConfig.get().overrides.task
    chosen = [o for o in task if not swept or o.split("=", 1)[0].lstrip("+~") in swept]
    name = ",".join(chosen).replace(os.sep, "_").replace("/", "_").lstrip(".")
    return name[:120]


class SweepCallback(Callback):
    """Makes `${hydra:...}` (used by `${name}`) resolvable before the first job of a sweep, so the
    sweep folder can be named after the run name; at the end, says where the runs are and which
    jobs failed."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        HydraConfig.instance().set_config(copy.deepcopy(config))
        os.environ[SWEPT_ENV] = ",".join(swept_keys(config))  # read by each job's trial_name()

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN:  # a job run again: forget its earlier failure
            (Path(config.hydra.runtime.output_dir) / ERROR_FILE).unlink(missing_ok=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        runs = sorted(p.parent.name for p in sweep_dir.glob("*/config.yaml"))
        log.info(
            f"sweep: {len(runs)} runs under {sweep_dir}; compare them (HParams tab): "
            f"bigmodel tensorboard --logdir {sweep_dir}"
        )
        best = sweep_dir / "optimization_results.yaml"
        if best.is_file():
            log.info(f"best trial ({best}):\n{best.read_text().strip()}")
        failed = sorted(sweep_dir.rglob(ERROR_FILE), key=lambda p: (len(str(p)), str(p)))  # 2 before 10
        if failed:
            lines = [p.read_text().splitlines()[0] for p in failed]
            log.error(
                f"sweep: {len(failed)} job(s) failed (their errors are in {ERROR_FILE} in each "
                "job's folder):\n  " + "\n  ".join(lines)
            )
            sys.exit(1)
