"""`bigmodel lr_find`: the LR range test writes its curve (CSV, PNG, TensorBoard) and suggests an LR
inside the swept range; the suggestion rule and the early stop on a diverging loss."""

import csv
import math
import re
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bigmodel.lr_find import LRSweep, suggest, write_curve
from conftest import run_cli, write_fake_cifar10

TINY = [
    "model.stem_width=4",
    "model.widths=[8]",
    "data.download=false",
    "data.val_size=20",
    "data.batch_size=16",
    "debug=fast",
]


def test_suggestion_is_the_steepest_descent_before_the_minimum():
    lrs = [10 ** (-6 + 0.1 * i) for i in range(61)]  # 1e-6 .. 1
    # falls fastest at 1e-3, bottoms out near 1e-1, then rises: a range test's usual shape
    loss = [2 - math.tanh(3 * (math.log10(lr) + 3)) + max(0.0, math.log10(lr) + 1) * 5 for lr in lrs]
    assert suggest(lrs, loss) == pytest.approx(1e-3, rel=0.3)
    assert suggest(lrs, loss, skip_start=0.0) == pytest.approx(1e-3, rel=0.3)


def test_suggestion_falls_back_to_a_tenth_of_the_minimum_when_it_comes_early():
    lrs = [10 ** (-6 + i) for i in range(6)]
    assert suggest(lrs, [2.0, 1.0, 3.0, 4.0, 5.0, 6.0]) == pytest.approx(lrs[1] / 10)


class FakeTrainer:
    should_stop = False

    class logger:
        @staticmethod
        def log_metrics(metrics, step):
            pass


def test_the_sweep_grows_the_lr_exponentially_and_stops_when_the_loss_diverges():
    sweep = LRSweep(min_lr=1e-4, max_lr=1.0, num_steps=5, beta=0.0, diverge=4.0)
    assert [sweep.lr_at(i) for i in range(5)] == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    trainer = FakeTrainer()
    for loss in (2.0, 1.0, 3.0):
        sweep.on_train_batch_end(trainer, loss)
    assert not trainer.should_stop
    sweep.on_train_batch_end(trainer, 4.5)  # > 4 x the minimum (1.0)
    assert trainer.should_stop and sweep.diverged and sweep.lrs == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1])


def test_without_matplotlib_the_csv_is_written_and_one_line_says_why_no_png(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    sweep = LRSweep(min_lr=1e-4, max_lr=1.0, num_steps=5, beta=0.5, diverge=4.0)
    for loss in (2.0, 1.5, 1.0, 1.2, 3.0):
        sweep.on_train_batch_end(FakeTrainer(), loss)
    with caplog.at_level("INFO", logger="bigmodel"):
        write_curve(tmp_path, sweep, 1e-3)
    assert not (tmp_path / "lr_find.png").exists()
    assert len(list(csv.DictReader(open(tmp_path / "lr_find.csv")))) == 5
    assert [r.message for r in caplog.records if "matplotlib is not installed" in r.message]


def run_folder(cwd: Path) -> Path:
    (folder,) = (cwd / "logs" / "cnn-cifar10" / "lr_find").iterdir()
    return folder


@pytest.mark.slow
def test_lr_find_writes_the_curve_and_suggests_an_lr_in_the_swept_range(tmp_path):
    pytest.importorskip("matplotlib")
    write_fake_cifar10(tmp_path / "data" / "cifar10")
    out = run_cli("lr_find", *TINY, "lr_find.min_lr=1e-5", "lr_find.max_lr=1e-2", "lr_find.num_steps=20", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (value,) = re.findall(r"suggested optimizer.lr=(\S+)", out.stdout)
    assert 1e-5 <= float(value) <= 1e-2
    folder = run_folder(tmp_path)
    rows = list(csv.DictReader(open(folder / "lr_find.csv")))
    assert len(rows) == 20
    assert float(rows[0]["lr"]) == pytest.approx(1e-5) and float(rows[-1]["lr"]) == pytest.approx(1e-2)
    assert (folder / "lr_find.png").stat().st_size > 1000
    events = EventAccumulator(str(folder))
    events.Reload()
    assert len(events.Scalars("lr_find/loss")) == 20 and len(events.Scalars("lr_find/lr")) == 20
    assert not (folder / "checkpoints").exists() and not (tmp_path / "logs" / "cnn-cifar10" / "runs").exists()


@pytest.mark.slow
def test_lr_find_stops_early_when_the_loss_diverges(tmp_path):
    write_fake_cifar10(tmp_path / "data" / "cifar10")
    out = run_cli(
        "lr_find",
        *TINY,
        "optimizer=sgd",
        "lr_find.min_lr=1e-3",
        "lr_find.max_lr=1e8",
        "lr_find.num_steps=40",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "the loss diverged" in out.stdout + out.stderr
    rows = list(csv.DictReader(open(run_folder(tmp_path) / "lr_find.csv")))
    assert 2 <= len(rows) < 40
    (value,) = re.findall(r"suggested optimizer.lr=(\S+)", out.stdout)
    assert 1e-3 <= float(value) <= float(rows[-1]["lr"])


def test_the_fallback_suggestion_stays_inside_the_swept_range():
    lrs = [10 ** (-6 + i) for i in range(6)]
    assert suggest(lrs, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]) == lrs[0]


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("num_steps", 3, "lr_find.num_steps=3 is out of range; valid: >= 5"),
        ("beta", 1.0, "lr_find.beta=1.0 is out of range; valid: in [0, 1)"),
        ("diverge", 1.0, "lr_find.diverge=1.0 is out of range; valid: > 1"),
        ("skip_start", -0.1, "lr_find.skip_start=-0.1 is out of range; valid: in [0, 1)"),
        ("min_lr", 0.0, "lr_find.min_lr=0.0 is out of range; valid: > 0"),
        ("max_lr", 1e-8, "need 0 < min_lr < max_lr"),
    ],
)
def test_lr_find_options_are_checked_in_one_line(key, value, words):
    from omegaconf import OmegaConf

    from bigmodel.config import ConfigError
    from bigmodel.lr_find import check_options

    good = {"min_lr": 1e-7, "max_lr": 10.0, "num_steps": 100, "beta": 0.9, "diverge": 4.0, "skip_start": 0.1}
    check_options(OmegaConf.create(good))
    with pytest.raises(ConfigError, match=re.escape(words)):
        check_options(OmegaConf.create(good | {key: value}))
