"""Resumable Optuna searches (`hparams_search=optuna`): the study lives in a file that outlives the sweep.

Every sweep folder is new (its name is the start time), so the study is kept next to the runs of
the same name instead, in <log_dir>/<name>/optuna/<study>.db (SQLite). The study's name is
`<name>-<key>`, where <key> is a short hash of the search: the command's overrides (hydra.* ones
aside), the searched parameters and the direction. Re-running the same command, after a crash or a
Ctrl-C, finds the study and runs only the trials still missing: `hydra.sweeper.n_trials` is the
study's total. Raising n_trials and re-running adds trials to the same study; changing the search
(an override, a range) starts another study. `hydra.sweeper.storage` / `study_name` given by hand
are used as they are.

A trial whose job failed (see bigmodel.launch.job_failed) is told to Optuna as FAIL, counts
towards n_trials, and the search goes on. A trial cut short (the process was stopped or killed)
is marked FAIL with the user attribute `interrupted` on the next start and does not count.
"""

import hashlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger("bigmodel")

SWEEPER_LOGGER = "hydra_plugins.hydra_optuna_sweeper._impl"


def directions(sweeper: DictConfig) -> list[str]:
    """`direction` as Optuna's list of names: maximize / minimize, or a list of them."""
    value = sweeper.direction
    items = list(value) if OmegaConf.is_list(value) or isinstance(value, (list, tuple)) else [value]
    return [getattr(v, "name", str(v)) for v in items]


def study_key(config: DictConfig) -> str:
    """A short hash of what defines the search, stable across re-runs of the same command."""
    sweeper = config.hydra.sweeper
    search = {
        "overrides": sorted(config.hydra.overrides.task),
        "params": OmegaConf.to_container(sweeper.params) if sweeper.get("params") else None,
        "direction": directions(sweeper),
    }
    return hashlib.sha1(json.dumps(search, sort_keys=True, default=str).encode()).hexdigest()[:8]


def study_location(config: DictConfig) -> tuple[str, str]:
    """(study name, storage URL): the ones set by hand, else the defaults described above."""
    sweeper = config.hydra.sweeper
    name = sweeper.study_name or f"{config.name}-{study_key(config)}"
    if sweeper.storage:
        return name, str(sweeper.storage)
    folder = Path(str(config.paths.log_dir)) / str(config.name) / "optuna"
    folder.mkdir(parents=True, exist_ok=True)
    return name, f"sqlite:///{(folder / f'{name}.db').resolve()}"


def counted(trial: Any) -> bool:
    """Whether a trial counts towards n_trials: it finished (well or not), it was not cut short."""
    from optuna.trial import TrialState

    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) and not trial.user_attrs.get(
        "interrupted"
    )


def close_interrupted(study: Any) -> int:
    """Mark the trials an earlier, stopped process left running as FAIL (interrupted); how many."""
    from optuna.trial import Trial, TrialState

    stale = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
    for t in stale:
        Trial(study, t._trial_id).set_user_attr("interrupted", True)
        study.tell(t.number, state=TrialState.FAIL)
    return len(stale)


class FailedTrialMessage(logging.Filter):
    """The sweeper says a failed job's result (None) is not a float; say what happened instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "Return value must be float-castable" not in message or "Got 'None'" not in message:
            return True
        if message.startswith("Failed ["):  # the failure-rate check repeats it; the search goes on anyway
            return False
        record.msg, record.args = "trial recorded as failed (its error is in error.txt); the search goes on", None
        return True


class ResumableStudy(Callback):
    """Points the Optuna sweeper at a study that survives the sweep, and runs only its missing trials.
    A search in which no trial succeeded has no best trial: it ends with the sweep's list of failed
    jobs and status 1 (the sweeper would fail with Optuna's ValueError instead)."""

    pid: int | None = None  # the process that runs the sweeper (set when it is Optuna's)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweeper = config.hydra.sweeper
        if "storage" not in sweeper or "n_trials" not in sweeper:  # not the Optuna sweeper
            return
        import optuna

        name, storage = study_location(config)
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created ...": said below
        study = optuna.create_study(
            study_name=name, storage=storage, directions=directions(sweeper), load_if_exists=True
        )
        stale = close_interrupted(study)
        trials = study.get_trials(deepcopy=False)
        done = sum(counted(t) for t in trials)
        failed = sum(counted(t) and t.state.name == "FAIL" for t in trials)
        todo = max(0, int(sweeper.n_trials) - done)
        if done or stale:
            log.info(
                f"optuna: resuming study {name!r} ({storage}): {done} trial(s) done ({failed} failed), "
                f"{stale} cut short by an earlier stop; running {todo} more of n_trials={sweeper.n_trials}"
            )
        else:
            log.info(f"optuna: study {name!r} in {storage}; re-run the same command to continue it")
        # plain values only: a launcher may pickle the callbacks (submitit), and only this process counts jobs
        self.pid, self.study_name, self.storage, self.todo, self.launched = os.getpid(), name, storage, todo, 0
        self.succeeded = any(t.state.name == "COMPLETE" for t in trials)
        if todo == 0:
            self.check_some_succeeded(config)
        with read_write(config), open_dict(config):
            sweeper.study_name, sweeper.storage, sweeper.n_trials = name, storage, todo
            if trials and sweeper.get("sampler") and sweeper.sampler.get("seed") is not None:
                sweeper.sampler.seed = int(sweeper.sampler.seed) + len(trials)  # not the first run's draws again
        logging.getLogger(SWEEPER_LOGGER).addFilter(FailedTrialMessage())

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if self.pid != os.getpid():
            return
        from hydra.core.utils import JobStatus

        self.launched += 1
        self.succeeded |= job_return.status == JobStatus.COMPLETED and job_return._return_value is not None
        if self.launched >= self.todo:
            self.check_some_succeeded(config)

    def check_some_succeeded(self, config: DictConfig) -> None:
        """Without a single successful trial, end as a sweep with failed jobs does (one line each, status 1)."""
        if self.succeeded:
            return
        import optuna
        from optuna.trial import TrialState

        study = optuna.load_study(study_name=self.study_name, storage=self.storage)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):  # told after the batch
            study.tell(t.number, state=TrialState.FAIL)
        log.error(
            f"optuna: no trial of study {self.study_name!r} succeeded, so there is no best trial; fix what "
            "made them fail (each job's error.txt), then re-run with a higher hydra.sweeper.n_trials, or "
            f"start over by deleting the study ({self.storage})"
        )
        from bigmodel.launch import SweepCallback

        SweepCallback().on_multirun_end(config)  # lists the failed jobs and exits with status 1
        sys.exit(1)
