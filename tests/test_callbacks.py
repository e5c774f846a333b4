"""Callbacks: best/last checkpoints, early stopping, learning-rate logging."""

import pytest
import torch

from bigmodel.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
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
    with pytest.raises(KeyError, match="val/accuracy.*valid:.*val/acc"):
        make_trainer(max_steps=1, callbacks={"model_checkpoint": cb}).fit()
    with pytest.raises(ValueError, match="mode='maximum'"):
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
