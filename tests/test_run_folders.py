"""One run, one folder: unique run folders, no fresh run over another run's checkpoints, folders
checked at start-up, leftovers of interrupted saves removed, a full disk as one line."""

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bigmodel import checkpoint
from bigmodel.rundir import claim, new_dir
from conftest import run_cli, write_fake_cifar10

TINY = [
    "model.stem_width=4",
    "model.widths=[8]",
    "data.download=false",
    "data.val_size=20",
    "data.batch_size=16",
    "debug=fast",
]


def cli_env(cwd: Path, **extra: str) -> dict:
    return {
        **os.environ,
        "BIGMODEL_LOG_DIR": str(cwd / "logs"),
        "BIGMODEL_CACHE_DIR": str(cwd / "cache"),
        "BIGMODEL_DATA_DIR": str(cwd / "data"),
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_one_line_error(out: subprocess.CompletedProcess, *expected: str) -> None:
    text = out.stdout + out.stderr
    assert out.returncode == 1, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    errors = [line for line in text.splitlines() if "error:" in line]
    assert len(errors) == 1, text[-3000:]
    for e in expected:
        assert e in errors[0], errors[0]


@pytest.fixture
def cifar(tmp_path):
    write_fake_cifar10(tmp_path / "data" / "cifar10")
    return tmp_path


# ------------------------------------------------------------------ unit: the folder claim
def test_claim_creates_a_new_folder_for_each_caller(tmp_path):
    wanted = str(tmp_path / "runs" / "2026-01-01_00-00-00.000000")
    first, second = claim(wanted), claim(wanted)
    assert first == wanted and second == wanted + "-1"
    assert Path(first).is_dir() and Path(second).is_dir()


def test_new_dir_gives_the_same_folder_on_every_resolution(tmp_path):
    wanted = str(tmp_path / "runs" / "a")
    assert new_dir(wanted) == new_dir(wanted) == wanted
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["a"]


def test_claim_leaves_an_impossible_folder_to_the_writable_check(tmp_path):
    (tmp_path / "afile").write_text("x")
    assert claim(str(tmp_path / "afile" / "run")) == str(tmp_path / "afile" / "run")


def test_auto_resume_skips_only_its_own_folder_not_a_suffixed_sibling(tmp_path):
    for run in ("a", "a-1"):
        (tmp_path / "runs" / run / "checkpoints").mkdir(parents=True)
        (tmp_path / "runs" / run / "checkpoints" / "last.pt").write_bytes(b"x")
    sibling = tmp_path / "runs" / "a-1" / "checkpoints" / "last.pt"
    assert checkpoint.newest(tmp_path, exclude=str(tmp_path / "runs" / "a")) == sibling


# ------------------------------------------------------------------ unit: a full disk on save
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS], ids=["ENOSPC", "EROFS"])
def test_failed_save_names_the_file_and_keeps_the_old_checkpoint(tmp_path, monkeypatch, code):
    path = tmp_path / "last.pt"
    checkpoint.save({"format": checkpoint.FORMAT_VERSION, "step": 1}, path)
    before = path.read_bytes()

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.save({"format": checkpoint.FORMAT_VERSION, "step": 2}, path)
    assert str(path) in str(e.value) and os.strerror(code) in str(e.value)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


# ------------------------------------------------------------------ the CLI
@pytest.mark.slow
@pytest.mark.parametrize("same_stamp", [True, False], ids=["same-stamp", "same-second"])
def test_two_runs_started_together_get_their_own_folders(cifar, same_stamp):
    """Two processes at once, one name: two folders, each with its own config and checkpoints. With
    the same BIGMODEL_RUN_STAMP both ask for the very same folder, so only the exclusive creation
    keeps them apart."""
    extra = {"BIGMODEL_RUN_STAMP": "2026-01-01_00-00-00.000000"} if same_stamp else {}
    procs = {
        seed: subprocess.Popen(
            [sys.executable, "-m", "bigmodel", "train", *TINY, "name=twin", f"seed={seed}"],
            cwd=cifar,
            env=cli_env(cifar, **extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for seed in (1, 2)
    }
    for p in procs.values():
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out[-3000:]
    runs = sorted(p for p in (cifar / "logs" / "twin" / "runs").iterdir())
    assert len(runs) == 2, runs
    if same_stamp:
        assert [r.name for r in runs] == ["2026-01-01_00-00-00.000000", "2026-01-01_00-00-00.000000-1"]
    seeds = set()
    for run in runs:
        seed = int(
            next(line for line in (run / "config.yaml").read_text().splitlines() if line.startswith("seed:")).split(
                ":"
            )[1]
        )
        seeds.add(seed)
        for name in ("best.pt", "last.pt"):
            assert checkpoint.load(run / "checkpoints" / name)["config"]["seed"] == seed
        assert f"testing the best checkpoint {run}/checkpoints/best.pt" in (run / "train.log").read_text()
    assert seeds == {1, 2}


@pytest.mark.slow
def test_fresh_run_in_a_folder_with_checkpoints_is_refused_and_resuming_it_is_not(cifar):
    a, b = cifar / "a", cifar / "b"
    for folder in (a, b):
        out = run_cli("train", *TINY, f"hydra.run.dir={folder}", cwd=cifar)
        assert out.returncode == 0, out.stderr[-3000:]
    before = snapshot(a)

    again = run_cli("train", *TINY, f"hydra.run.dir={a}", cwd=cifar)
    assert_one_line_error(again, f"'{a}/checkpoints' already holds", f"ckpt_path={a}/checkpoints/last.pt")
    foreign = run_cli("train", *TINY, f"hydra.run.dir={a}", f"ckpt_path={b}/checkpoints/last.pt", cwd=cifar)
    assert_one_line_error(foreign, f"'{a}/checkpoints' already holds", "resuming")
    assert snapshot(a) == before  # checkpoints, config.yaml, .hydra/, train.log: all untouched

    resumed = run_cli("train", *TINY, f"hydra.run.dir={a}", "ckpt_path=auto", "trainer.max_steps=3", cwd=cifar)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {a}/checkpoints/last.pt" in (a / "train.log").read_text()
    assert checkpoint.load(a / "checkpoints" / "last.pt")["progress"]["global_step"] == 3


@pytest.mark.slow
def test_two_runs_started_together_in_one_given_folder_one_is_refused(cifar):
    run = cifar / "run"
    procs = {
        seed: subprocess.Popen(
            [sys.executable, "-m", "bigmodel", "train", *TINY, f"seed={seed}", f"hydra.run.dir={run}"],
            cwd=cifar,
            env=cli_env(cifar),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for seed in (1, 2)
    }
    outs = {seed: p.communicate(timeout=300)[0] for seed, p in procs.items()}
    ok = [seed for seed, p in procs.items() if p.returncode == 0]
    assert len(ok) == 1, outs
    (refused,) = set(procs) - set(ok)
    assert procs[refused].returncode == 1 and "Traceback" not in outs[refused], outs[refused]
    assert "in use by another run" in outs[refused] or "already holds" in outs[refused], outs[refused]
    for name in ("best.pt", "last.pt"):
        assert checkpoint.load(run / "checkpoints" / name)["config"]["seed"] == ok[0]
    assert f"seed: {ok[0]}" in (run / "config.yaml").read_text()


@pytest.mark.slow
@pytest.mark.parametrize(
    "where", ["hydra.run.dir", "callbacks.model_checkpoint.dirpath", "paths.log_dir", "hydra.sweep.dir"]
)
def test_unwritable_folders_fail_at_start_in_one_line(cifar, where):
    """A folder below a file cannot be created, even by root (for whom chmod does not stop writes)."""
    (cifar / "afile").write_text("not a folder")
    bad = cifar / "afile" / "sub"
    args = {
        "hydra.run.dir": [f"hydra.run.dir={bad}"],
        "callbacks.model_checkpoint.dirpath": [f"callbacks.model_checkpoint.dirpath={bad}"],
        "paths.log_dir": [f"paths.log_dir={bad}"],
        "hydra.sweep.dir": ["-m", f"hydra.sweep.dir={bad}"],
    }[where]
    out = run_cli("train", *args, *TINY, cwd=cifar)
    key = "hydra.run.dir" if where == "paths.log_dir" else where
    assert_one_line_error(out, f"{key}='{bad}", "is not a writable folder")
    assert "model CNN" not in out.stdout + out.stderr  # found before any work: no model was built


@pytest.mark.slow
@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes to read-only folders")
def test_read_only_checkpoint_folder_fails_at_start(cifar):
    ckpts = cifar / "ro"
    ckpts.mkdir()
    ckpts.chmod(0o500)
    try:
        out = run_cli("train", *TINY, f"callbacks.model_checkpoint.dirpath={ckpts}", cwd=cifar)
    finally:
        ckpts.chmod(0o700)
    assert_one_line_error(out, "callbacks.model_checkpoint.dirpath", "is not a writable folder")


@pytest.mark.slow
def test_leftovers_of_an_interrupted_save_are_removed_at_the_next_start(cifar):
    run = cifar / "run"
    first = run_cli("train", *TINY, f"hydra.run.dir={run}", cwd=cifar)
    assert first.returncode == 0, first.stderr[-3000:]
    leftovers = [run / "checkpoints" / ".last.pt.k2j3h4.tmp", run / "checkpoints" / ".best.pt.x9y8z7.tmp"]
    for p in leftovers:
        p.write_bytes(b"half a checkpoint")
    resumed = run_cli("train", *TINY, f"hydra.run.dir={run}", "ckpt_path=auto", "trainer.max_steps=3", cwd=cifar)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not any(p.exists() for p in leftovers)
    assert "removed 2 unfinished checkpoint file(s)" in (run / "train.log").read_text()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]


FULL_DISK = """
import errno, os, sys, torch
def full_disk(obj, f, *args, **kwargs):
    f.write(b"half a checkpoint")
    raise OSError(errno.{code}, os.strerror(errno.{code}))
torch.save = full_disk
from bigmodel.cli import main
main()
"""


@pytest.mark.slow
@pytest.mark.parametrize("code", ["ENOSPC", "EROFS"])
def test_full_disk_on_save_is_one_line_and_earlier_checkpoints_stay(cifar, code):
    run = cifar / "run"
    first = run_cli("train", *TINY, f"hydra.run.dir={run}", cwd=cifar)
    assert first.returncode == 0, first.stderr[-3000:]
    before = snapshot(run / "checkpoints")
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            FULL_DISK.format(code=code),
            "train",
            *TINY,
            f"hydra.run.dir={run}",
            "ckpt_path=auto",
            "trainer.max_steps=3",
        ],
        cwd=cifar,
        env=cli_env(cifar),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_one_line_error(out, f"could not write the checkpoint '{run}/checkpoints/", os.strerror(getattr(errno, code)))
    assert snapshot(run / "checkpoints") == before


@pytest.mark.slow
def test_help_and_printing_the_config_create_no_run_folder(cifar):
    for args in (["--help"], ["--cfg", "job"]):
        out = run_cli("train", *TINY, *args, cwd=cifar)
        assert out.returncode == 0, out.stderr[-3000:]
    assert not (cifar / "logs").exists()
