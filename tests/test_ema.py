"""callbacks.ema: the average against a hand computation, exact resume, evaluation and best.pt on the average."""

import pytest
import torch

from bigmodel import checkpoint
from bigmodel.callbacks import ModelCheckpoint
from bigmodel.ema import EMA
from bigmodel.summary import ModelSummary
from helpers import StopAt, make_trainer


class RecordWeights:
    """The model's parameters after every optimizer step."""

    def __init__(self) -> None:
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, loss):
        self.steps.append({n: p.detach().clone() for n, p in trainer.model.named_parameters()})


def test_decay_warms_up_to_its_value():
    ema = EMA(decay=0.999)
    assert ema.decay_at(0) == pytest.approx(1 / 10) and ema.decay_at(1) == pytest.approx(2 / 11)
    assert ema.decay_at(10**6) == 0.999
    assert EMA(decay=0.999, warmup=False).decay_at(0) == 0.999


@pytest.mark.parametrize("warmup", [True, False])
def test_average_matches_a_hand_computation(warmup):
    decay = 0.5  # warm-up (1+n)/(10+n) stays under 0.5 for n < 8: both regimes within 10 steps
    trainer = make_trainer(
        max_steps=10, bn=False, callbacks={"rec": RecordWeights(), "ema": EMA(decay=decay, warmup=warmup)}
    )
    expected = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}  # starts at the weights
    trainer.fit()
    steps = trainer.callbacks["rec"].steps
    assert len(steps) == 10
    for n, weights in enumerate(steps):
        d = min(decay, (1 + n) / (10 + n)) if warmup else decay
        expected = {k: d * expected[k] + (1 - d) * weights[k] for k in expected}
    ema = trainer.callbacks["ema"]
    assert ema.updates == 10 and not ema.swapped
    for k, avg in ema.average.items():
        torch.testing.assert_close(avg, expected[k], rtol=1e-6, atol=1e-7, msg=k)
        assert not torch.equal(avg, steps[-1][k])  # an average, not the last weights


def _callbacks(folder, **ema):
    return {
        "model_checkpoint": ModelCheckpoint(str(folder), monitor="val/acc", mode="max", best_with_optimizer=True),
        "model_summary": ModelSummary(str(folder)),
        "ema": EMA(decay=0.9, **ema),
    }


@pytest.mark.parametrize("stop_at", [5, 8])
def test_stop_and_resume_gives_the_same_average(tmp_path, stop_at):
    straight = make_trainer(max_steps=12, callbacks=_callbacks(tmp_path / "straight"))
    straight.fit()

    first = make_trainer(max_steps=12, callbacks={**_callbacks(tmp_path / "a"), "stop": StopAt(stop_at)})
    first.fit()
    assert first.global_step == stop_at
    resumed = make_trainer(max_steps=12, model_seed=123, callbacks=_callbacks(tmp_path / "b"))
    resumed.fit(ckpt_path=str(tmp_path / "a" / "last.pt"))

    assert resumed.callbacks["ema"].updates == straight.callbacks["ema"].updates == 12
    for name, avg in straight.callbacks["ema"].average.items():
        assert torch.equal(avg, resumed.callbacks["ema"].average[name]), name
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert first.logger.curve("val/loss") + resumed.logger.curve("val/loss") == straight.logger.curve("val/loss")


def test_resume_from_best_pt_puts_the_training_weights_back(tmp_path):
    """best.pt holds the average as its model: resuming from it swaps the training weights back."""
    straight = make_trainer(max_steps=8, val_check_interval=4, callbacks=_callbacks(tmp_path / "straight"))
    straight.fit()
    first = make_trainer(max_steps=8, val_check_interval=4, callbacks={**_callbacks(tmp_path / "a"), "stop": StopAt(4)})
    first.fit()
    best = checkpoint.load(tmp_path / "a" / "best.pt")
    assert best["callbacks"]["ema"]["swapped"] and best["progress"]["global_step"] == 4
    resumed = make_trainer(max_steps=8, val_check_interval=4, model_seed=7, callbacks=_callbacks(tmp_path / "b"))
    resumed.fit(ckpt_path=str(tmp_path / "a" / "best.pt"))
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    for name, avg in straight.callbacks["ema"].average.items():
        assert torch.equal(avg, resumed.callbacks["ema"].average[name]), name


def test_evaluation_and_best_pt_use_the_average(tmp_path):
    trainer = make_trainer(max_steps=6, callbacks=_callbacks(tmp_path))
    trainer.fit()  # one validation, at the end: best.pt is written there
    ema = trainer.callbacks["ema"]
    raw = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    on_average = trainer.evaluate("val")
    on_weights = trainer.evaluate("val", eval_weights=False)
    assert on_average["val/loss"] != on_weights["val/loss"]
    for n, p in trainer.model.named_parameters():
        assert torch.equal(p, raw[n]), n  # the training weights are back after evaluating

    with torch.no_grad():  # the average loaded by hand gives what evaluate() reported
        for n, p in trainer.model.named_parameters():
            p.copy_(ema.average[n])
    assert trainer.evaluate("val", eval_weights=False)["val/loss"] == on_average["val/loss"]

    best = checkpoint.load(tmp_path / "best.pt")["model"]
    for n, avg in ema.average.items():
        assert torch.equal(best[n], avg), n
    for n, buf in trainer.model.named_buffers():  # BatchNorm statistics: the model's own
        assert torch.equal(best[n], buf), n
    last = checkpoint.load(tmp_path / "last.pt")
    assert not last["callbacks"]["ema"]["swapped"]
    for n, w in raw.items():  # last.pt keeps the training weights, to resume
        assert torch.equal(last["model"][n], w), n


def test_use_for_eval_false_evaluates_the_weights(tmp_path):
    trainer = make_trainer(max_steps=4, callbacks=_callbacks(tmp_path, use_for_eval=False))
    trainer.fit()
    assert trainer.evaluate("val") == trainer.evaluate("val", eval_weights=False)
    assert trainer.callbacks["ema"].updates == 4
    best = checkpoint.load(tmp_path / "best.pt")["model"]
    for n, p in trainer.model.named_parameters():
        assert torch.equal(best[n], p), n


def test_train_with_ema_and_plateau_tests_the_averaged_best(compose_train, tmp_path):
    """`bigmodel train callbacks=ema scheduler=plateau`: the summary is in the run folder, best.pt holds
    the average, and the test metrics are those of best.pt as `bigmodel eval` measures them."""
    from hydra.core.global_hydra import GlobalHydra

    from bigmodel.train import evaluate, train
    from conftest import compose_cfg, write_fake_cifar10

    write_fake_cifar10(tmp_path / "data" / "cifar10")
    (tmp_path / "run").mkdir()
    cfg = compose_train(
        [
            f"paths.data_dir={tmp_path}/data",
            "data.download=false",
            "data.val_size=20",
            "trainer=debug",
            "trainer.max_steps=6",
            "trainer.limit_train_batches=-1",
            "trainer.val_check_interval=2",
            "trainer.device=cpu",
            "logger=none",
            "callbacks=ema",
            "callbacks.ema.decay=0.9",
            "scheduler=plateau",
            "scheduler.patience=0",
            "callbacks.model_checkpoint.monitor=val/loss",
            "callbacks.model_checkpoint.mode=max",
            "model.stem_width=4",
            "model.widths=[8]",
            "optimized_metric=test/loss",
        ]
    )
    test_loss = train(cfg)
    GlobalHydra.instance().clear()
    run = tmp_path / "run"
    assert "total params" in (run / "model_summary.txt").read_text()
    best = checkpoint.load(run / "checkpoints" / "best.pt")
    assert best["callbacks"]["ema"]["swapped"] and best["progress"]["global_step"] < 6  # not the final average
    assert best["scheduler"]["monitor"] == "val/loss"
    ev = compose_cfg(
        "eval", [f"ckpt_path={run}/checkpoints/best.pt", "trainer=debug", "trainer.device=cpu"], tmp_path / "eval"
    )
    GlobalHydra.instance().clear()
    assert evaluate(ev)["test/loss"] == pytest.approx(test_loss, rel=1e-6)
