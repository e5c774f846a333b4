"""`bigmodel` as a user runs it: subprocesses on a small fake CIFAR-10 in torchvision's format."""

import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import run_cli, write_fake_cifar10

SMALL = [
    "model.stem_width=4",
    "model.widths=[8]",
    "data.download=false",
    "trainer.progress_bar=false",
    "data.val_size=20",
    "data.batch_size=16",
]


def scalar_tags(run_dir) -> set[str]:
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return set(acc.Tags()["scalars"]), set(acc.Tags()["images"])


@pytest.mark.slow
def test_train_on_fake_cifar_writes_a_complete_run(tmp_path):
    write_fake_cifar10(tmp_path / "data" / "cifar10")
    run_dir = tmp_path / "run"
    out = run_cli(
        "train", *SMALL, "trainer.max_epochs=2", "trainer.log_every_n_steps=1", f"hydra.run.dir={run_dir}", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert (run_dir / "config.yaml").is_file() and "max_epochs: 2" in (run_dir / "config.yaml").read_text()
    assert "test/acc" in (run_dir / "train.log").read_text()
    assert (run_dir / "checkpoints" / "last.pt").is_file() and (run_dir / "checkpoints" / "best.pt").is_file()
    scalars, images = scalar_tags(run_dir)
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "lr", "perf/samples_per_sec"} <= scalars
    assert {"train/inputs", "val/confusion_matrix"} <= images

    # values: 80 train images / batch 16 = 5 steps an epoch; validation after each epoch
    events = EventAccumulator(str(run_dir))
    events.Reload()
    curve = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in ("train/loss", "val/acc", "lr")}
    assert [s for s, _ in curve["train/loss"]] == list(range(1, 11))
    assert [s for s, _ in curve["val/acc"]] == [5, 10]
    # AdamW lr 1e-3, cosine with 100 warm-up steps: after k steps the lr is 1e-3 * (k + 1) / 101
    assert curve["lr"] == [(k, pytest.approx(1e-3 * (k + 1) / 101, rel=1e-6)) for k in range(1, 11)]
    rows = [r.split(",") for r in (run_dir / "csv" / "metrics.csv").read_text().splitlines()[1:]]
    csv_loss = [(int(s), float(v)) for s, k, v in rows if k == "train/loss"]
    assert csv_loss == [(s, pytest.approx(v, rel=1e-5)) for s, v in curve["train/loss"]]  # the same numbers
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=False)
    assert last["progress"]["global_step"] == 10
    best_step, best_acc = max(curve["val/acc"], key=lambda sv: (sv[1], -sv[0]))  # the first of the highest
    assert best["progress"]["global_step"] == best_step
    assert best["callbacks"]["model_checkpoint"]["best"] == pytest.approx(best_acc, rel=1e-6)

    ev = run_cli(
        "eval",
        f"ckpt_path={run_dir}/checkpoints/best.pt",
        "trainer.progress_bar=false",
        f"hydra.run.dir={tmp_path}/eval",
        cwd=tmp_path,
    )
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert "true\\pred" in ev.stdout
    test_acc = re.findall(r"test/acc=([0-9.]+)", (run_dir / "train.log").read_text())
    assert test_acc and re.findall(r"test/acc=([0-9.]+)", ev.stdout) == test_acc[-1:]  # the run tested best.pt


@pytest.mark.slow
def test_missing_cifar_offline_is_one_clear_line(tmp_path):
    out = run_cli("train", "data.download=false", "data.fallback=null", f"hydra.run.dir={tmp_path}/r", cwd=tmp_path)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "CIFAR-10 not found in" in text and "cifar-10-python.tar.gz" in text
    assert "Traceback" not in text


@pytest.mark.slow
@pytest.mark.parametrize(
    "override,expected",
    [
        ("trainer.max_stepz=3", "max_stepz"),
        ("trainer.max_steps=abc", "max_steps"),
        ("trainer.precision=fp64", "precision"),
        ("model=resnet9000", "model"),
        ("data.batch_size=abc", "data.batch_size='abc' is not a valid int"),
        ("scheduler.warmup_steps=1.5", "scheduler.warmup_steps=1.5 is not a valid int"),
    ],
)
def test_bad_override_fails_at_start_naming_the_key(tmp_path, override, expected):
    out = run_cli("train", override, cwd=tmp_path)
    assert out.returncode != 0
    assert expected in out.stderr + out.stdout and "Traceback" not in out.stderr + out.stdout
    assert not (tmp_path / "logs").exists() or not list((tmp_path / "logs").rglob("*.pt"))


@pytest.mark.slow
def test_help_lists_commands_and_groups(tmp_path):
    top = run_cli("--help", cwd=tmp_path)
    assert top.returncode == 0 and all(c in top.stdout for c in ("train", "eval", "generate", "tensorboard"))
    train = run_cli("train", "--help", cwd=tmp_path)
    assert train.returncode == 0
    for group in (
        "model:",
        "data:",
        "optimizer:",
        "scheduler:",
        "trainer:",
        "logger:",
        "callbacks:",
        "experiment:",
        "debug:",
    ):
        assert group in train.stdout, group
    assert "cifar10" in train.stdout and "adamw" in train.stdout


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_finishes_the_step_saves_and_resumes(tmp_path, sig):
    write_fake_cifar10(tmp_path / "data" / "cifar10", n_train=400)
    run_dir = tmp_path / "run"
    env = {
        "BIGMODEL_LOG_DIR": str(tmp_path / "logs"),
        "BIGMODEL_DATA_DIR": str(tmp_path / "data"),
        "BIGMODEL_CACHE_DIR": str(tmp_path / "cache"),
        "PYTHONUNBUFFERED": "1",
    }
    import os

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bigmodel",
            "train",
            *SMALL,
            "trainer.max_steps=100000",
            "trainer.val_check_interval=2",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    deadline = time.time() + 120
    for line in proc.stdout:  # wait until training is under way
        lines.append(line)
        if "step 4:" in line or time.time() > deadline:
            break
    proc.send_signal(sig)
    rest, _ = proc.communicate(timeout=120)
    text = "".join(lines) + rest
    assert proc.returncode == 0, text[-3000:]
    assert f"received {sig.name}" in text
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    stopped_at = ckpt["progress"]["global_step"]
    assert 4 <= stopped_at < 100000

    resumed = run_cli(
        "train",
        *SMALL,
        f"trainer.max_steps={stopped_at + 2}",
        "test=false",
        f"ckpt_path={run_dir}/checkpoints/last.pt",
        f"hydra.run.dir={tmp_path}/run2",
        cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at epoch 0, step {stopped_at}" in (tmp_path / "run2" / "train.log").read_text()
    final = torch.load(tmp_path / "run2" / "checkpoints" / "last.pt", weights_only=False)
    assert final["progress"]["global_step"] == stopped_at + 2


@pytest.mark.slow
def test_ckpt_path_auto_resumes_the_newest_run(tmp_path):
    write_fake_cifar10(tmp_path / "data" / "cifar10")
    first = run_cli(
        "train",
        *SMALL,
        "name=exp",
        "trainer.max_steps=3",
        "test=false",
        f"hydra.run.dir={tmp_path}/logs/exp/runs/1",
        cwd=tmp_path,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_cli(
        "train",
        *SMALL,
        "name=exp",
        "trainer.max_steps=5",
        "test=false",
        "ckpt_path=auto",
        f"hydra.run.dir={tmp_path}/logs/exp/runs/2",
        cwd=tmp_path,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    log = (tmp_path / "logs" / "exp" / "runs" / "2" / "train.log").read_text()
    assert "resumed from" in log and "runs/1/checkpoints/last.pt" in log and "step 3" in log


@pytest.mark.slow
def test_user_config_dir_adds_options_without_forking(tmp_path):
    (tmp_path / "my" / "model").mkdir(parents=True)
    (tmp_path / "my" / "model" / "tiny_cnn.yaml").write_text(
        "_target_: bigmodel.models.cnn.CNN\nstem_width: 4\nwidths: [6]\n"
    )
    out = run_cli("train", "--config-dir", str(tmp_path / "my"), "model=tiny_cnn", "--cfg", "job", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "widths:\n  - 6" in out.stdout


@pytest.mark.slow
def test_wheel_ships_the_configs(tmp_path):
    from conftest import REPO

    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    import zipfile

    (wheel,) = (tmp_path / "dist").glob("bigmodel-*.whl")
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    assert (tmp_path / "site" / "bigmodel" / "configs" / "train.yaml").is_file()
    out = run_cli("train", "--cfg", "job", cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "site")})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "bigmodel.models.cnn.CNN" in out.stdout
    probe = subprocess.run(
        [sys.executable, "-c", "import bigmodel.cli as c; print(c.config_dir())"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path / "site")},
        capture_output=True,
        text=True,
    )
    assert str(tmp_path / "site") in probe.stdout


@pytest.mark.parametrize("name", ["a/../../b", "", "/abs/run", "~/run", "a//b"])
def test_a_run_name_may_not_leave_the_log_folder(tmp_path, name):
    from bigmodel.cli import valid_name

    assert not valid_name(name)
    assert valid_name("sst2_textcnn") and valid_name("team/exp-1")
    out = run_cli("train", f"name={name}", cwd=tmp_path)
    assert out.returncode != 0 and "is not a valid run name" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "logs").exists()
