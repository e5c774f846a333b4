"""`bigmodel runs`: one row per run folder, made here by the CLI (finished, interrupted, failed and
running runs), as a table and as CSV, and nothing written into the runs."""

import csv
import fcntl
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli, write_fake_cifar10

TINY = [
    "model.stem_width=4",
    "model.widths=[8]",
    "data.download=false",
    "data.val_size=20",
    "data.batch_size=16",
    "debug=fast",
]


def interrupted_run(cwd: Path) -> None:
    """A run stopped by Ctrl-C once it has trained a few steps."""
    env = {
        **os.environ,
        "BIGMODEL_LOG_DIR": str(cwd / "logs"),
        "BIGMODEL_CACHE_DIR": str(cwd / "cache"),
        "BIGMODEL_DATA_DIR": str(cwd / "data"),
        "PYTHONUNBUFFERED": "1",
    }
    not_fast = [a for a in TINY if a != "debug=fast"]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bigmodel",
            "train",
            *not_fast,
            "trainer.progress_bar=false",
            "trainer.max_steps=100000",
            "trainer.val_check_interval=2",
            "seed=7",
        ],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 180
    for line in proc.stdout:
        if "step 4:" in line or time.time() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode == 0  # a single run stops cleanly: last.pt saved, no test


def runs_csv(cwd: Path, *args: str) -> list[dict[str, str]]:
    out = run_cli("runs", "--csv", *args, cwd=cwd)
    assert out.returncode == 0, out.stderr[-2000:]
    return list(csv.DictReader(io.StringIO(out.stdout)))


def snapshot(folder: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.mark.slow
def test_runs_lists_finished_interrupted_failed_and_running_runs(tmp_path):
    write_fake_cifar10(tmp_path / "data" / "cifar10", n_train=400)
    assert run_cli("train", *TINY, "seed=3", cwd=tmp_path).returncode == 0
    interrupted_run(tmp_path)
    assert run_cli("train", "-m", *TINY, "data.batch_size=8,abc", cwd=tmp_path).returncode == 1  # job 1 fails
    assert run_cli("train", *TINY, "trainer.max_steps=-5", cwd=tmp_path).returncode == 1  # refused at start-up
    logs = tmp_path / "logs"
    before = snapshot(logs)

    rows = runs_csv(tmp_path, "--sort", "start")
    by_override = {r["overrides"]: r for r in rows}
    assert len(rows) == 5, rows
    finished = next(r for o, r in by_override.items() if "seed=3" in o)
    assert finished["status"] == "finished" and finished["run"].startswith("cnn-cifar10/runs/")
    assert finished["monitor"] == "val/acc" and 0 <= float(finished["best_val"]) <= 1
    assert 0 <= float(finished["test"]) <= 1 and finished["steps"] == "2"
    stopped = next(r for o, r in by_override.items() if "seed=7" in o)
    assert stopped["status"] == "interrupted" and int(stopped["steps"]) >= 4 and stopped["test"] == ""
    assert stopped["best_val"] != ""
    jobs = {r["run"].rsplit("/", 1)[-1]: r for r in rows if "/multirun/" in r["run"]}
    assert jobs["0"]["status"] == "finished" and "data.batch_size=8" in jobs["0"]["overrides"]
    assert jobs["1"]["status"] == "failed" and jobs["1"]["best_val"] == "" and jobs["1"]["steps"] == ""
    early = next(r for o, r in by_override.items() if "max_steps=-5" in o)
    assert early["status"] == "failed"
    assert [r["start"] for r in rows] == sorted(r["start"] for r in rows)

    best_first = runs_csv(tmp_path, "--sort", "best_val", "-r")
    values = [float(r["best_val"]) for r in best_first if r["best_val"]]
    assert values == sorted(values, reverse=True) and best_first[-1]["best_val"] == ""  # empty last

    table = run_cli("runs", "cnn-cifar10", cwd=tmp_path)
    assert table.returncode == 0 and any(line.split()[:2] == ["run", "start"] for line in table.stdout.splitlines())
    assert {"finished", "interrupted", "failed"} <= set(table.stdout.split())

    fd = os.open(logs / finished["run"] / ".lock", os.O_RDWR)  # what a live run holds
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        now = {r["run"]: r["status"] for r in runs_csv(tmp_path)}
    finally:
        os.close(fd)
    assert now[finished["run"]] == "running"
    assert snapshot(logs) == before  # read only


def test_runs_bad_arguments_are_one_line(tmp_path):
    (tmp_path / "logs" / "a").mkdir(parents=True)
    out = run_cli("runs", "--sort", "colour", cwd=tmp_path)
    assert out.returncode != 0 and "--sort 'colour' is not a column" in out.stderr and "Traceback" not in out.stderr
    out = run_cli("runs", "b", cwd=tmp_path)
    assert out.returncode != 0 and "no runs named 'b'" in out.stderr and "valid: a" in out.stderr
    out = run_cli("runs", "--logdir", str(tmp_path / "nope"), cwd=tmp_path)
    assert out.returncode != 0 and "is not a folder" in out.stderr
    out = run_cli("runs", cwd=tmp_path)
    assert out.returncode == 0 and "no runs under" in out.stdout


def test_a_run_without_a_metrics_file_is_finished_when_its_log_shows_the_test(tmp_path):
    """logger=none writes no metrics.csv: the test line in train.log tells that the run got to the end."""
    from bigmodel.runs import status

    log = "[2026-12-07 20:33:45,022][bigmodel][INFO] - test: test/loss=1.2282  test/acc=0.6789\n"
    assert status(tmp_path, log, [], {"test": True}) == "finished"
    assert (
        status(tmp_path, "[2026-12-07 20:33:40,000][bigmodel][INFO] - epoch 0 step 10\n", [], {"test": True})
        == "failed"
    )
