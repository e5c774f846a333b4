"""The training loop: fitting, accumulation, clipping, precision, non-finite losses, profiler."""

import math

import pytest
import torch

from bigmodel.config import NonFinite, Precision, Profiler
from bigmodel.models.cnn import CNN
from bigmodel.trainer import Trainer
from helpers import make_trainer


def test_overfits_one_small_batch():
    torch.manual_seed(0)
    model = CNN(num_classes=4, in_channels=3, stem_width=8, widths=(16, 32))
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 4, (16,))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.02
    assert (model(x).argmax(1) == y).all()


def test_fit_logs_named_metrics_and_learns():
    trainer = make_trainer(max_epochs=4, lr=0.2)
    metrics = trainer.fit()
    names = {k for _, k, _ in trainer.logger.rows}
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "perf/samples_per_sec"} <= names
    assert trainer.global_step == 4 * 8  # 64 images / batch 8, 4 epochs
    assert metrics["val/acc"] > 0.5  # 4 classes: chance is 0.25
    assert "train/inputs" in trainer.logger.images
    val_losses = [v for _, v in trainer.logger.curve("val/loss")]  # per-batch train losses are too noisy here
    assert len(val_losses) == 4 and val_losses[-1] < val_losses[0] / 2


def test_max_steps_and_limits():
    trainer = make_trainer(max_steps=5, limit_train_batches=3, limit_val_batches=1)
    trainer.fit()
    assert trainer.global_step == 5 and trainer.epoch == 1  # 3 + 2 steps
    assert trainer.logger.curve("val/loss")[-1][0] == 5  # validated at the end too


def test_val_check_interval():
    trainer = make_trainer(max_steps=6, val_check_interval=2)
    trainer.fit()
    assert [s for s, _ in trainer.logger.curve("val/loss")] == [2, 4, 6]


def test_gradient_accumulation_matches_a_larger_batch():
    """2 micro-batches of 8 with accumulation == 1 batch of 16 (no BatchNorm, no dropout)."""
    big = make_trainer(bn=False, augment=False, batch_size=16, max_steps=3)
    small = make_trainer(bn=False, augment=False, batch_size=8, accumulate_grad_batches=2, max_steps=3)
    big.fit()
    small.fit()
    for a, b in zip(big.model.parameters(), small.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_gradient_clipping_logs_norm_and_bounds_update():
    trainer = make_trainer(max_steps=3, gradient_clip_val=1e-3, lr=1.0)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.fit()
    norms = trainer.logger.curve("train/grad_norm")
    assert len(norms) == 3 and all(v > 1e-3 for _, v in norms)  # pre-clip norm is what gets logged
    step = math.sqrt(sum(((p - b) ** 2).sum().item() for p, b in zip(trainer.model.parameters(), before)))
    assert step < 0.2  # tiny clip keeps 3 momentum steps small even with lr=1


class NaNAt:
    def __init__(self, step):
        self.step = step

    def __call__(self, logits, targets):
        loss = torch.nn.functional.cross_entropy(logits, targets)
        self.calls = getattr(self, "calls", 0) + 1
        return loss * float("nan") if self.calls == self.step else loss


def test_nonfinite_loss_stops_with_clear_error():
    trainer = make_trainer(max_steps=5, on_nonfinite=NonFinite.stop)
    trainer.loss_fn = NaNAt(3)
    with pytest.raises(FloatingPointError, match="non-finite loss .* step 3"):
        trainer.fit()
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_nonfinite_loss_skip_drops_the_step():
    trainer = make_trainer(max_steps=4, on_nonfinite=NonFinite.skip, limit_val_batches=1)
    trainer.loss_fn = NaNAt(2)
    trainer.fit()
    assert trainer.global_step == 4
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert all(math.isfinite(v) for _, v in trainer.logger.curve("train/loss"))


def test_nonfinite_skip_gives_up_when_every_step_is_nan():
    from bigmodel.trainer import MAX_SKIPS_IN_A_ROW

    trainer = make_trainer(max_steps=5, on_nonfinite=NonFinite.skip, limit_val_batches=1)
    trainer.loss_fn = lambda logits, targets: logits.sum() * float("nan")
    with pytest.raises(FloatingPointError, match=f"{MAX_SKIPS_IN_A_ROW} steps in a row"):
        trainer.fit()  # a run whose every step is skipped would otherwise never end
    assert trainer.global_step == 0


def test_no_training_batches_is_a_clear_error():
    from bigmodel.data.errors import DataError

    with pytest.raises(DataError, match="no training batches"):
        make_trainer(max_steps=3, n=0).fit()  # an empty train split would loop forever looking for step 1


def test_fp16_autocast_with_gradscaler_on_cpu():
    trainer = make_trainer(max_steps=4, precision=Precision.fp16, limit_val_batches=1)
    seen = []
    trainer.model.head.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    lrs = []
    trainer.callbacks["lr"] = type("LR", (), {"on_train_batch_end": lambda self, t, loss: lrs.append(
        (t.scaler.get_scale(), t.optimizer.param_groups[0]["lr"]))})()
    trainer.fit()
    assert trainer.scaler.is_enabled() and torch.float16 in seen and trainer.global_step == 4
    assert all(torch.isfinite(p).all() and p.dtype == torch.float32 for p in trainer.model.parameters())
    for (scale0, lr0), (scale1, lr1) in zip(lrs, lrs[1:]):
        if scale1 < scale0:  # the scaler skipped that step (inf grads): the schedule waits for a real one
            assert lr1 == lr0


def test_bf16_autocast_on_cpu():
    trainer = make_trainer(max_steps=3, precision=Precision.bf16)
    seen = []
    handle = trainer.model.head.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    trainer.fit()
    handle.remove()
    assert torch.bfloat16 in seen
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # master weights stay fp32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 GradScaler path needs CUDA")
def test_fp16_gradscaler_on_cuda():
    from bigmodel.config import Device

    trainer = make_trainer(max_steps=3, precision=Precision.fp16, device=Device.cuda)
    trainer.fit()
    assert trainer.scaler.is_enabled() and trainer.global_step == 3


def test_channels_last_and_deterministic():
    trainer = make_trainer(max_steps=2, channels_last=True, deterministic=True)
    assert trainer.model.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    trainer.fit()
    assert torch.are_deterministic_algorithms_enabled()
    make_trainer(max_steps=2)  # the next job of a sweep, in the same process
    assert not torch.are_deterministic_algorithms_enabled()


def test_deterministic_runs_repeat_exactly():
    a = make_trainer(max_steps=4, deterministic=True)
    a.fit()
    b = make_trainer(max_steps=4, deterministic=True)  # re-seeds the global RNG, as the wiring does
    b.fit()
    torch.use_deterministic_algorithms(False)
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)


def test_simple_profiler_reports_phases(caplog):
    trainer = make_trainer(max_steps=3, profiler=Profiler.simple)
    with caplog.at_level("INFO", logger="bigmodel"):
        trainer.fit()
    text = caplog.text
    assert "profile:" in text and all(p in text for p in ("forward", "backward", "optimizer", "data"))


def test_torch_profiler_writes_a_trace(tmp_path):
    trainer = make_trainer(max_steps=6, profiler=Profiler.torch)
    trainer.output_dir = str(tmp_path)
    trainer.fit()
    traces = list((tmp_path / "profiler").glob("*.json*"))
    assert traces and traces[0].stat().st_size > 0


@pytest.mark.slow
def test_compiled_model_checkpoint_loads_uncompiled(tmp_path):
    from bigmodel.callbacks import ModelCheckpoint
    from bigmodel.checkpoint import load, load_model_state

    trainer = make_trainer(max_steps=2, compile=True, bn=False,
                           callbacks={"model_checkpoint": ModelCheckpoint(str(tmp_path), monitor="val/acc", mode="max")})
    assert trainer.forward_model is not trainer.model
    trainer.fit()
    state = load(tmp_path / "last.pt")["model"]
    assert not any(k.startswith("_orig_mod") for k in state)
    plain = make_trainer(bn=False, model_seed=1).model
    load_model_state(plain, state)
    for p, q in zip(plain.parameters(), trainer.model.parameters()):
        assert torch.equal(p, q)


def test_trainer_is_a_plain_class():
    assert Trainer.__mro__ == (Trainer, object)
