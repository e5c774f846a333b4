"""scheduler=plateau: the learning rate drops after `patience` validations without improvement,
stepped at validation only, its state resumed from the checkpoint; a bad monitor is named."""

from functools import partial

import pytest

from bigmodel import checkpoint
from bigmodel.callbacks import ModelCheckpoint
from bigmodel.config import ConfigError
from bigmodel.optim import plateau
from helpers import StopAt, make_trainer

LR = 0.05
# val/loss reported at each step's validation (trainer.val_check_interval=1)
LOSSES = {1: 1.0, 2: 0.5, 3: 0.6, 4: 0.7, 5: 0.8, 6: 0.4, 7: 0.9, 8: 0.9, 9: 0.9, 10: 0.9}


class ScriptedValidation:
    """Stands in for evaluation: the validation metrics of each step, from LOSSES."""

    def __init__(self, trainer) -> None:
        self.trainer = trainer

    def __call__(self, split: str = "val", eval_weights: bool = True) -> dict[str, float]:
        return {"val/loss": LOSSES[self.trainer.global_step], "val/acc": 0.5}


class RecordLR:
    def __init__(self) -> None:
        self.at_step: dict[int, float] = {}  # after each optimizer step
        self.at_val: dict[int, float] = {}  # after each validation (the scheduler has stepped)

    def on_train_batch_end(self, trainer, loss):
        self.at_step[trainer.global_step] = trainer.optimizer.param_groups[0]["lr"]

    def on_validation_end(self, trainer, metrics):
        self.at_val[trainer.global_step] = trainer.optimizer.param_groups[0]["lr"]


def plateau_trainer(callbacks: dict, **scheduler):
    trainer = make_trainer(max_steps=10, val_check_interval=1, lr=LR, callbacks=callbacks)
    trainer.scheduler_factory = partial(plateau, **{"patience": 2, "factor": 0.5, "threshold": 0.0, **scheduler})
    trainer.evaluate = ScriptedValidation(trainer)
    return trainer


def expected_lrs(patience: int, factor: float) -> dict[int, float]:
    """ReduceLROnPlateau's rule by hand: the (patience+1)-th validation in a row without a new best
    multiplies the lr by factor and starts counting again."""
    lr, best, bad, out = LR, None, 0, {}
    for step, loss in sorted(LOSSES.items()):
        if best is None or loss < best:
            best, bad = loss, 0
        else:
            bad += 1
        if bad > patience:
            lr, bad = lr * factor, 0
        out[step] = lr
    return out


def test_lr_drops_after_patience_validations_without_improvement():
    rec = RecordLR()
    trainer = plateau_trainer({"rec": rec})
    trainer.fit()
    expected = expected_lrs(patience=2, factor=0.5)
    assert rec.at_val == pytest.approx(expected)
    assert rec.at_val[4] == LR and rec.at_val[5] == LR / 2  # 0.6, 0.7 tolerated; 0.8 is the third
    assert rec.at_val[10] == LR / 4
    # between validations the optimizer steps leave the lr alone (no per-step schedule)
    assert all(rec.at_step[s] == expected[s - 1] for s in range(2, 11))


def test_plateau_state_resumes(tmp_path):
    straight = RecordLR()
    plateau_trainer({"rec": straight}).fit()

    ckpt = {"model_checkpoint": ModelCheckpoint(str(tmp_path), monitor="val/acc", mode="max")}
    first = plateau_trainer({**ckpt, "stop": StopAt(4)})  # two bad validations counted, not yet reduced
    first.fit()
    saved = checkpoint.load(tmp_path / "last.pt")["scheduler"]
    assert saved["num_bad_epochs"] == 2 and saved["best"] == 0.5 and saved["monitor"] == "val/loss"

    rec = RecordLR()
    resumed = plateau_trainer({"rec": rec, "model_checkpoint": ModelCheckpoint(str(tmp_path / "b"))})
    resumed.fit(ckpt_path=str(tmp_path / "last.pt"))
    assert rec.at_val == {s: lr for s, lr in straight.at_val.items() if s > 4}  # drops at step 5, as straight


def test_unknown_monitor_is_named_before_training():
    trainer = plateau_trainer({}, monitor="val/lss")
    with pytest.raises(ConfigError, match=r"scheduler.monitor='val/lss' is not a logged metric; valid:.*val/loss"):
        trainer.fit()
    assert trainer.global_step == 0


def test_plateau_config_composes_and_checks_its_values(compose_train):
    from omegaconf import OmegaConf

    from bigmodel.config import check_targets

    def checked(overrides):
        cfg = OmegaConf.to_container(compose_train(["scheduler=plateau", *overrides]), resolve=True)
        cfg.pop("hydra")
        check_targets(cfg)
        return cfg

    assert checked([])["scheduler"]["monitor"] == "val/loss"
    with pytest.raises(ConfigError, match=r"scheduler.factor=1.5 is out of range"):
        checked(["scheduler.factor=1.5"])
    with pytest.raises(ConfigError, match=r"scheduler.patience=-1 is out of range"):
        checked(["scheduler.patience=-1"])
