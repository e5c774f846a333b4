"""Signals and sweeps as a user meets them: Ctrl-C at any moment is one line, and one bad job
of a sweep is recorded while the others run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bigmodel import checkpoint
from conftest import run_cli, write_fake_cifar10

TINY = [
    "model.stem_width=4",
    "model.widths=[8]",
    "data.download=false",
    "data.val_size=20",
    "data.batch_size=16",
    "debug=fast",
]


def start(cwd: Path, *args: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "BIGMODEL_LOG_DIR": str(cwd / "logs"),
        "BIGMODEL_CACHE_DIR": str(cwd / "cache"),
        "BIGMODEL_DATA_DIR": str(cwd / "data"),
        "PYTHONUNBUFFERED": "1",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "bigmodel", "train", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_torch(proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until the process has started loading PyTorch: seconds before any training (or signal handler)."""
    deadline = time.time() + timeout
    while "libtorch" not in Path(f"/proc/{proc.pid}/maps").read_text():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.005)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see the import of torch")
def test_ctrl_c_before_training_starts_is_one_line_and_exit_130(tmp_path):
    write_fake_cifar10(tmp_path / "data" / "cifar10")
    proc = start(tmp_path, *TINY)
    wait_for_torch(proc)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-3000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-3000:]
    assert "received SIGINT" not in out  # it came before the Trainer's handler, as intended
    assert out.strip().splitlines() == ["bigmodel: interrupted"]


@pytest.mark.slow
def test_a_bad_job_is_recorded_and_the_sweep_runs_the_others(tmp_path):
    write_fake_cifar10(tmp_path / "data" / "cifar10")
    out = run_cli("train", "-m", *TINY, "data.batch_size=8,abc,16", cwd=tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode == 1, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    (sweep,) = (tmp_path / "logs").glob("*/multirun/*")
    for job, batch_size in (("0", 8), ("2", 16)):  # the jobs before and after the bad one both ran
        assert checkpoint.load(sweep / job / "checkpoints" / "last.pt")["config"]["data"]["batch_size"] == batch_size
        assert (sweep / job / "config.yaml").is_file() and not (sweep / job / "error.txt").exists()
    error = (sweep / "1" / "error.txt").read_text()
    assert "job 1" in error and "data.batch_size=abc" in error and "is not a valid int" in error
    summary = text[text.index("1 job(s) failed") :]
    assert error.splitlines()[0] in summary


@pytest.mark.slow
def test_ctrl_c_during_a_sweep_saves_the_job_and_stops_the_sweep(tmp_path):
    write_fake_cifar10(tmp_path / "data" / "cifar10", n_train=400)
    not_fast = [a for a in TINY if a != "debug=fast"]
    proc = start(
        tmp_path,
        "-m",
        *not_fast,
        "trainer.progress_bar=false",
        "trainer.max_steps=100000",
        "trainer.val_check_interval=2",
        "seed=1,2",
    )
    lines = []
    deadline = time.time() + 180
    for line in proc.stdout:  # wait until the first job is training
        lines.append(line)
        if "step 4:" in line or time.time() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    text = "".join(lines) + rest
    assert proc.returncode == 130, text[-3000:]
    assert "received SIGINT" in text and "Traceback" not in text, text[-3000:]
    (sweep,) = (tmp_path / "logs").glob("*/multirun/*")
    assert checkpoint.load(sweep / "0" / "checkpoints" / "last.pt")["progress"]["global_step"] >= 4
    assert not (sweep / "1").exists()  # the second job never started
