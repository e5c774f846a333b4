"""Resumable Optuna searches: a search stopped half-way and run again continues its study (the trial
count goes on, earlier trials are kept), and failed trials are recorded as failed."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli, write_fake_cifar10

TINY = ["model.stem_width=4", "model.widths=[8]", "data.download=false", "data.val_size=20", "debug=fast"]
SEARCH = ["hparams_search=optuna", "hydra.sweeper.n_trials=4", "data.batch_size=choice(16,abc)", "seed=0"]


def killed_half_way(cwd: Path) -> None:
    """Start the search and kill it (SIGKILL: a crash) once its second trial has started."""
    env = {
        **os.environ,
        "BIGMODEL_LOG_DIR": str(cwd / "logs"),
        "BIGMODEL_CACHE_DIR": str(cwd / "cache"),
        "BIGMODEL_DATA_DIR": str(cwd / "data"),
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "bigmodel", "train", *TINY, *SEARCH],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while not list((cwd / "logs").glob("*/multirun/*/1/.hydra")):
        assert proc.poll() is None and time.time() < deadline, "the search ended before its second trial"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_optuna_search_killed_and_rerun_continues_its_study(tmp_path):
    optuna = pytest.importorskip("optuna")
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    from optuna.trial import TrialState

    write_fake_cifar10(tmp_path / "data" / "cifar10")
    killed_half_way(tmp_path)
    (db,) = (tmp_path / "logs" / "cnn-cifar10" / "optuna").glob("cnn-cifar10-*.db")
    storage = f"sqlite:///{db}"
    (first,) = optuna.get_all_study_summaries(storage)
    before = optuna.load_study(study_name=first.study_name, storage=storage).get_trials()
    done_before = [t for t in before if t.state in (TrialState.COMPLETE, TrialState.FAIL)]
    assert len(done_before) >= 1 and len(done_before) < 4

    out = run_cli("train", *TINY, *SEARCH, cwd=tmp_path)  # the same command again
    text = out.stdout + out.stderr
    assert "Traceback" not in text, text[-3000:]
    assert f"resuming study {first.study_name!r}" in text
    trials = optuna.load_study(study_name=first.study_name, storage=storage).get_trials()
    counted = [t for t in trials if t.state != TrialState.RUNNING and not t.user_attrs.get("interrupted")]
    assert len(counted) == 4  # n_trials is the study's total: the re-run ran only the missing ones
    assert not [t for t in trials if t.state == TrialState.RUNNING]  # the killed trial was closed
    for t in before:  # earlier trials are kept as they were
        if t.state in (TrialState.COMPLETE, TrialState.FAIL):
            assert trials[t.number].params == t.params and trials[t.number].state == t.state
    for t in counted:  # a failed job is a failed trial, never a made-up value
        assert (t.state == TrialState.FAIL) == (t.params["data.batch_size"] == "abc"), t
    assert {t.state for t in counted} == {TrialState.COMPLETE, TrialState.FAIL}  # this seed draws both

    sweeps = sorted((tmp_path / "logs" / "cnn-cifar10" / "multirun").iterdir())
    assert len(sweeps) == 2
    assert len([p for p in sweeps[1].iterdir() if p.name.isdigit()]) == 4 - len(done_before)
    assert (sweeps[1] / "optimization_results.yaml").is_file()
    assert "trial recorded as failed" in text or all(t.state == TrialState.COMPLETE for t in trials[len(before) :])


@pytest.mark.slow
def test_a_search_whose_every_trial_fails_ends_with_the_failed_jobs_not_a_traceback(tmp_path):
    optuna = pytest.importorskip("optuna")
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    write_fake_cifar10(tmp_path / "data" / "cifar10")
    args = [*TINY, "hparams_search=optuna", "hydra.sweeper.n_trials=2", "data.batch_size=abc"]
    for _attempt in range(2):  # the re-run finds the study done, still without a best trial
        out = run_cli("train", *args, cwd=tmp_path)
        text = out.stdout + out.stderr
        assert out.returncode == 1 and "Traceback" not in text and "ValueError" not in text, text[-3000:]
        assert "no trial of study" in text and "succeeded, so there is no best trial" in text
    assert "2 job(s) failed" in text or "running 0 more" in text
    (db,) = (tmp_path / "logs" / "cnn-cifar10" / "optuna").glob("*.db")
    (summary,) = optuna.get_all_study_summaries(f"sqlite:///{db}")
    trials = optuna.load_study(study_name=summary.study_name, storage=f"sqlite:///{db}").get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"]
