"""Callbacks: best/last checkpoints, early stopping, learning-rate logging."""

import os
import threading
from contextlib import contextmanager

import pytest
import torch

from bigmodel import checkpoint
from bigmodel.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from bigmodel.config import ConfigError
from helpers import make_trainer


def test_model_checkpoint_keeps_the_best(tmp_path):
    cb = ModelCheckpoint(str(tmp_path), monitor="val/acc", mode="max")
    trainer = make_trainer(max_epochs=3, callbacks={"model_checkpoint": cb})
    trainer.fit()
    accs = [v for _, v in trainer.logger.curve("val/acc")]
    assert cb.best == max(accs)
    best = torch.load(tmp_path / "best.pt", weights_only=False)
    assert best["callbacks"]["model_checkpoint"]["best"] == max(accs)


def test_unknown_monitor_is_named(tmp_path):
    cb = ModelCheckpoint(str(tmp_path), monitor="val/accuracy")
    trainer = make_trainer(max_steps=1, callbacks={"model_checkpoint": cb})
    with pytest.raises(ConfigError, match="model_checkpoint.monitor='val/accuracy'.*valid:.*val/acc"):
        trainer.fit()
    assert trainer.global_step == 0  # caught before training, not at the first validation
    with pytest.raises(ConfigError, match="early_stopping.monitor='val/lss'"):
        make_trainer(max_steps=1, callbacks={"early_stopping": EarlyStopping(monitor="val/lss")}).fit()
    with pytest.raises(ConfigError, match="mode='maximum'"):
        EarlyStopping(mode="maximum")


def test_early_stopping_stops_when_metric_stalls():
    stopper = EarlyStopping(monitor="val/loss", mode="min", patience=2, min_delta=10.0)  # nothing improves by 10
    trainer = make_trainer(max_epochs=20, callbacks={"early_stopping": stopper})
    trainer.fit()
    assert trainer.epoch < 20 and len(trainer.logger.curve("val/loss")) == 3  # first sets best, 2 more stall


def test_lr_monitor_logs_the_schedule():
    trainer = make_trainer(max_steps=6, callbacks={"lr": LearningRateMonitor(every_n_steps=2)})
    trainer.fit()
    lrs = trainer.logger.curve("lr")
    assert [s for s, _ in lrs] == [2, 4, 6]
    assert lrs[0][1] > lrs[-1][1]  # cosine decays after warm-up


def test_early_stopped_run_is_still_tested(compose_train, tmp_path):
    """Early stopping ends training, not the run: the best checkpoint is still tested (a signal skips it)."""
    from bigmodel.checkpoint import load
    from bigmodel.train import train
    from conftest import write_fake_cifar10

    write_fake_cifar10(tmp_path / "data" / "cifar10")
    (tmp_path / "run").mkdir()
    cfg = compose_train(
        [
            f"paths.data_dir={tmp_path}/data",
            "data.download=false",
            "data.val_size=20",
            "trainer=debug",
            "trainer.max_steps=40",
            "trainer.limit_train_batches=-1",
            "trainer.val_check_interval=1",
            "logger=none",
            "callbacks=early_stopping",
            "callbacks.early_stopping.patience=2",
            "callbacks.early_stopping.min_delta=10",
            "model.stem_width=4",
            "model.widths=[8]",
            "optimized_metric=test/acc",
        ]
    )
    test_acc = train(cfg)
    assert load(str(tmp_path / "run" / "checkpoints" / "last.pt"))["progress"]["global_step"] == 3  # 1 best + 2 stalls
    assert test_acc is not None and 0.0 <= test_acc <= 1.0


class FakeTrainer:
    """A trainer's state and eval_weights; records what is printed and stop requests."""

    def __init__(self):
        self.global_step, self.is_global_zero, self.in_eval = 0, True, False
        self.weight = torch.zeros(3)
        self.printed, self.should_stop = [], False

    @contextmanager
    def eval_weights(self):  # swaps other weights in, in place, as callbacks.ema does
        held = self.weight.clone()
        self.in_eval = True
        self.weight.fill_(9.0)
        yield
        self.weight.copy_(held)
        self.in_eval = False

    def state_dict(self):
        return {
            "model": {"w": self.weight},
            "optimizer": {"state": {}},
            "eval": self.in_eval,
            "progress": {"global_step": self.global_step},
        }

    def print(self, msg):
        self.printed.append(msg)


@pytest.fixture
def saved(monkeypatch):
    """(file name, step, written inside eval_weights, has optimizer state, weights) of each checkpoint written."""
    rows = []
    monkeypatch.setattr(
        checkpoint,
        "save",
        lambda state, path: rows.append(
            (
                os.path.basename(path),
                state["progress"]["global_step"],
                state["eval"],
                state["optimizer"] is not None,
                state["model"]["w"].clone(),
            )
        ),
    )  # as it is when written
    return rows


@pytest.mark.parametrize(
    "mode,values,best_steps",
    [
        ("max", [0.5, 0.3, 0.7, 0.7, 0.6], [1, 3]),  # ties are no improvement
        ("min", [2.0, 1.0, 1.5, 0.5, 0.5, 3.0], [1, 2, 4]),
        ("min", [float("nan"), 2.0, float("nan"), 1.0], [2, 4]),  # a NaN is never the best
    ],
)
def test_best_is_written_only_when_the_monitor_improves(mode, values, best_steps, saved):
    cb, fake = ModelCheckpoint("ck", monitor="val/m", mode=mode), FakeTrainer()
    for step, v in enumerate(values, 1):
        fake.global_step = step
        cb.on_validation_end(fake, {"val/m": v})
    cb.writer.wait()
    assert [s for name, s, *_ in saved if name == "best.pt"] == best_steps
    assert [s for name, s, *_ in saved if name == "last.pt"] == list(range(1, len(values) + 1))
    assert cb.best == values[best_steps[-1] - 1]
    # best.pt holds the weights evaluation uses (the EMA average when on) and no optimizer state;
    # last.pt the training weights and everything a resume needs
    assert [(name == "best.pt", name != "best.pt") for name, _, ev, opt, _ in saved] == [
        (ev, opt) for *_, ev, opt, _ in saved
    ]


def test_last_is_written_every_n_validations_and_at_the_end(saved):
    cb, fake = ModelCheckpoint("ck", monitor="val/m", every_n_val=3, save_best=False), FakeTrainer()
    for step in range(1, 8):
        fake.global_step = step
        cb.on_validation_end(fake, {"val/m": 1.0})
    fake.global_step = 8
    cb.on_fit_end(fake)  # also after a signal: the trainer ends fit() through on_fit_end
    assert [s for _, s, *_ in saved] == [3, 6, 8]
    keep = ModelCheckpoint("ck", monitor="val/m", best_with_optimizer=True, save_last=False)
    keep.on_fit_end(FakeTrainer())  # no validation: the final weights are the best known
    assert saved[-1][:4] == ("best.pt", 0, True, True)


@pytest.mark.parametrize("background", [True, False])
def test_best_pt_holds_the_swapped_in_weights(saved, background):
    cb, fake = ModelCheckpoint("ck", monitor="val/m", background=background), FakeTrainer()
    cb.on_validation_end(fake, {"val/m": 1.0})
    cb.on_fit_end(fake)
    assert [(name, w.tolist()) for name, *_, w in saved] == [
        ("best.pt", [9.0] * 3),
        ("last.pt", [0.0] * 3),
        ("last.pt", [0.0] * 3),
    ]
    assert fake.weight.tolist() == [0.0] * 3  # the training weights are back


def test_writes_run_behind_training_on_a_copy(monkeypatch):
    started, release, rows = threading.Event(), threading.Event(), []

    def slow_save(state, path):
        started.set()
        assert release.wait(10)
        rows.append(state["model"]["w"])

    monkeypatch.setattr(checkpoint, "save", slow_save)
    cb, fake = ModelCheckpoint("ck", monitor="val/m", save_best=False), FakeTrainer()
    cb.on_validation_end(fake, {"val/m": 1.0})  # returns while the file is still being written
    assert started.wait(10) and not rows
    fake.weight.add_(5)  # training goes on and changes the weights in place
    release.set()
    cb.on_fit_end(fake)  # waits for every write
    assert [w.tolist() for w in rows] == [[0.0] * 3, [5.0] * 3]  # the first file holds the weights as they were


def test_a_failed_background_write_is_raised_at_the_next_write(monkeypatch, tmp_path):
    (tmp_path / "ro").mkdir()
    cb, fake = ModelCheckpoint(str(tmp_path / "ro" / "file" / "x"), monitor="val/m"), FakeTrainer()
    (tmp_path / "ro" / "file").write_text("not a folder")
    with pytest.raises(checkpoint.CheckpointError, match="could not write the checkpoint .*best.pt"):
        cb.on_validation_end(fake, {"val/m": 1.0})  # best.pt fails in the background; last.pt, next, reports it
    cb.save_best = False
    with pytest.raises(checkpoint.CheckpointError, match="could not write the checkpoint .*last.pt"):
        cb.on_fit_end(fake)  # the last write of a run is waited for


def test_resume_runs_from_last_pt_and_best_pt_is_refused_with_a_hint(tmp_path):
    from helpers import StopAt

    straight = make_trainer(max_steps=8, val_check_interval=2)
    straight.fit()
    cb = ModelCheckpoint(str(tmp_path), monitor="val/loss", every_n_val=100)  # last.pt only at the stop
    first = make_trainer(max_steps=8, val_check_interval=2, callbacks={"model_checkpoint": cb, "stop": StopAt(5)})
    first.fit()
    assert checkpoint.load(tmp_path / "last.pt")["progress"]["global_step"] == 5
    assert checkpoint.load(tmp_path / "best.pt")["optimizer"] is None
    resumed = make_trainer(max_steps=8, val_check_interval=2, model_seed=3)
    resumed.fit(ckpt_path=str(tmp_path / "last.pt"))
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(
        checkpoint.CheckpointError, match="holds no optimizer state .* resume from the run's checkpoints/last.pt"
    ):
        make_trainer(max_steps=8).fit(ckpt_path=str(tmp_path / "best.pt"))


class Snapshots:
    """At every validation: (step, monitored value, weights)."""

    def __init__(self, monitor):
        self.monitor, self.rows = monitor, []

    def on_validation_end(self, trainer, metrics):
        self.rows.append(
            (trainer.global_step, metrics[self.monitor], {k: v.clone() for k, v in trainer.model.state_dict().items()})
        )


def test_best_pt_holds_the_weights_and_step_of_the_best_validation(tmp_path):
    snaps = Snapshots("val/loss")
    cb = ModelCheckpoint(str(tmp_path), monitor="val/loss", mode="min")
    trainer = make_trainer(max_steps=6, val_check_interval=1, callbacks={"snap": snaps, "model_checkpoint": cb})
    trainer.fit()
    losses = [v for _, v, _ in snaps.rows]
    best_i = losses.index(min(losses))
    assert best_i < len(losses) - 1  # the last validation was not the best: best.pt must differ from last.pt
    best = torch.load(tmp_path / "best.pt", weights_only=False)
    assert best["progress"]["global_step"] == snaps.rows[best_i][0]
    assert best["callbacks"]["model_checkpoint"]["best"] == min(losses)
    for k, v in snaps.rows[best_i][2].items():
        assert torch.equal(best["model"][k], v), k
    last = torch.load(tmp_path / "last.pt", weights_only=False)
    assert last["progress"]["global_step"] == 6


def _stoppers(folder):
    return {
        "model_checkpoint": ModelCheckpoint(str(folder), monitor="val/loss", mode="min"),
        "early_stopping": EarlyStopping(monitor="val/loss", mode="min", patience=3, min_delta=0.02),
    }


def test_early_stopping_and_best_survive_a_stop_and_resume(tmp_path):
    """Interrupted while the monitor stalls, then resumed: it stops at the same step, with the same best.pt."""
    from helpers import StopAt

    cfg = dict(max_steps=40, val_check_interval=1)
    straight = make_trainer(callbacks=_stoppers(tmp_path / "a"), **cfg)
    straight.fit()
    stop_step, best_step = (
        straight.global_step,
        torch.load(tmp_path / "a" / "best.pt", weights_only=False)["progress"]["global_step"],
    )
    assert stop_step < 40 and straight.callbacks["early_stopping"].bad_evals == 3
    interrupt = stop_step - 1  # two stalled validations already counted, the best lies before
    assert best_step < interrupt

    first = make_trainer(callbacks={**_stoppers(tmp_path / "b"), "stop": StopAt(interrupt)}, **cfg)
    first.fit()
    assert first.global_step == interrupt and first.callbacks["early_stopping"].bad_evals == 2
    resumed = make_trainer(callbacks=_stoppers(tmp_path / "b"), model_seed=7, **cfg)
    resumed.fit(ckpt_path=str(tmp_path / "b" / "last.pt"))
    assert resumed.global_step == stop_step
    a, b = (torch.load(tmp_path / d / "best.pt", weights_only=False) for d in "ab")
    assert b["progress"]["global_step"] == best_step
    assert b["callbacks"]["model_checkpoint"]["best"] == a["callbacks"]["model_checkpoint"]["best"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_callback_defaults():
    cb, es = ModelCheckpoint("ck"), EarlyStopping()
    assert (cb.monitor, cb.mode, cb.save_last, cb.save_best, cb.best) == ("val/loss", "min", True, True, None)
    assert cb.best_path == "ck/best.pt" and cb.last_path == "ck/last.pt"
    assert (es.monitor, es.mode, es.patience, es.min_delta) == ("val/loss", "min", 5, 0.0)
    assert es.state_dict() == {"best": None, "bad_evals": 0}
    assert LearningRateMonitor().every_n_steps == 10


def feed(stopper, values):
    """Validations with these values; the step at which the stopper asked to stop (None if never)."""
    fake = FakeTrainer()
    for step, v in enumerate(values, 1):
        fake.global_step = step
        stopper.on_validation_end(fake, {"val/m": v})
        if fake.should_stop:
            return step, fake.printed
    return None, fake.printed


def test_early_stopping_counts_stalls_by_mode_and_min_delta():
    assert feed(EarlyStopping("val/m", "min", patience=1), [3.0, 2.0, 1.0])[0] is None  # improving: never
    assert feed(EarlyStopping("val/m", "max", patience=1), [3.0, 2.0, 1.0])[0] == 2
    assert feed(EarlyStopping("val/m", "min", patience=2), [1.0, 1.0, 0.5, 0.5, 0.5])[0] == 5  # a tie stalls
    assert feed(EarlyStopping("val/m", "min", patience=2, min_delta=0.1), [1.0, 0.95, 0.92, 0.5])[0] == 3
    step, printed = feed(EarlyStopping("val/m", "max", patience=2), [float("nan"), float("nan"), 1.0])
    assert step == 2 and printed == ["early stopping: val/m has not improved for 2 evaluations"]


def test_a_monitor_missing_at_validation_is_named():
    for cb, key in (
        (ModelCheckpoint("ck", monitor="val/m"), "model_checkpoint"),
        (EarlyStopping(monitor="val/m"), "early_stopping"),
    ):
        with pytest.raises(
            ConfigError, match=f"^callbacks.{key}.monitor='val/m' is not a logged metric; valid: \\['val/x'\\]$"
        ):
            cb.on_validation_end(FakeTrainer(), {"val/x": 1.0})


def test_lr_monitor_logs_the_first_group_every_n_steps():
    from helpers import RecordingLogger

    fake = FakeTrainer()
    fake.logger = RecordingLogger()
    fake.optimizer = torch.optim.SGD(
        [
            {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.1},
            {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.2},
        ]
    )
    mon = LearningRateMonitor(every_n_steps=3)
    for step in range(1, 8):
        fake.global_step = step
        mon.on_train_batch_end(fake, 1.0)
    assert fake.logger.rows == [(3, "lr", 0.1), (6, "lr", 0.1)]
