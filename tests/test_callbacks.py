"""Callbacks: best/last checkpoints, early stopping, learning-rate logging."""

import pytest
import torch

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
    cfg = compose_train([f"paths.data_dir={tmp_path}/data", "data.download=false", "data.val_size=20",
                         "trainer=debug", "trainer.max_steps=40", "trainer.limit_train_batches=-1",
                         "trainer.val_check_interval=1", "logger=none", "callbacks=early_stopping",
                         "callbacks.early_stopping.patience=2", "callbacks.early_stopping.min_delta=10",
                         "model.stem_width=4", "model.widths=[8]", "optimized_metric=test/acc"])
    test_acc = train(cfg)
    assert load(str(tmp_path / "run" / "checkpoints" / "last.pt"))["progress"]["global_step"] == 3  # 1 best + 2 stalls
    assert test_acc is not None and 0.0 <= test_acc <= 1.0
