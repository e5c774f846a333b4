"""The training loop: fitting, accumulation, clipping, precision, non-finite losses, profiler."""

import math
import re

import pytest
import torch

from bigmodel.config import NonFinite, Precision, Profiler
from helpers import RecordingLogger, StopAt, make_trainer


def test_trainer_overfits_one_small_batch():
    """One batch of 16, seen 100 times through Trainer.fit: the loss falls >10x and every label is learned."""
    trainer = make_trainer(n=16, batch_size=16, augment=False, bn=False, lr=0.05, max_steps=100, limit_val_batches=1)
    trainer.fit()
    losses = [v for _, v in trainer.logger.curve("train/loss")]
    assert len(losses) == 100 and losses[-1] < min(0.2, losses[0] / 10)
    assert trainer.evaluate("train")["train/acc"] == 1.0


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
    with pytest.raises(
        FloatingPointError,
        match=r"^non-finite loss nan at step 3 \(epoch 0\); set trainer.on_nonfinite="
        r"skip to drop such steps, or lower optimizer.lr$",
    ):
        trainer.fit()
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_nonfinite_loss_skip_drops_the_step(caplog):
    trainer = make_trainer(max_steps=4, on_nonfinite=NonFinite.skip, limit_val_batches=1)
    trainer.loss_fn = NaNAt(2)
    with caplog.at_level("INFO", logger="bigmodel"):
        trainer.fit()
    assert trainer.global_step == 4 and "skipping step 2: non-finite loss nan" in caplog.text
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert all(math.isfinite(v) for _, v in trainer.logger.curve("train/loss"))


def test_nonfinite_skip_gives_up_when_every_step_is_nan():
    from bigmodel.window import MAX_SKIPS_IN_A_ROW

    trainer = make_trainer(max_steps=5, on_nonfinite=NonFinite.skip, limit_val_batches=1)
    trainer.loss_fn = lambda logits, targets: logits.sum() * float("nan")
    with pytest.raises(
        FloatingPointError,
        match=f"^{MAX_SKIPS_IN_A_ROW} steps in a row had a non-finite loss \\(last at "
        f"step 1\\): the weights or the data hold NaN/inf; lower optimizer.lr "
        "or check the data$",
    ):
        trainer.fit()  # a run whose every step is skipped would otherwise never end
    assert trainer.global_step == 0


def test_no_training_batches_is_a_clear_error():
    from bigmodel.data.errors import DataError

    with pytest.raises(
        DataError,
        match=r"^no training batches: the train split is empty or smaller than one batch "
        r"\(data.batch_size\)$",
    ):
        make_trainer(max_steps=3, n=0).fit()  # an empty train split would loop forever looking for step 1


class InfGradAt:
    """A gradient hook that turns the gradient into inf on the `n`-th backward pass (an fp16 overflow)."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def __call__(self, grad):
        self.calls += 1
        return torch.full_like(grad, float("inf")) if self.calls == self.n else grad


class Record:
    """Keeps (global_step, scale, lr, weights) after every optimizer step."""

    def __init__(self):
        self.rows = []

    def on_train_batch_end(self, trainer, loss):
        weights = [p.detach().clone() for p in trainer.model.parameters()]
        self.rows.append(
            (trainer.global_step, trainer.scaler.get_scale(), trainer.optimizer.param_groups[0]["lr"], weights)
        )


def test_fp16_step_skipped_by_the_gradscaler_does_not_advance_the_schedule():
    trainer = make_trainer(max_steps=5, precision=Precision.fp16, limit_val_batches=1, bn=False, lr=0.4)
    seen = []
    trainer.model[-1].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    trainer.model[-1].weight.register_hook(InfGradAt(3))  # the 3rd optimizer step overflows
    rec = Record()
    trainer.callbacks["record"] = rec
    trainer.fit()
    assert trainer.scaler.is_enabled() and torch.float16 in seen and trainer.global_step == 5
    assert all(torch.isfinite(p).all() and p.dtype == torch.float32 for p in trainer.model.parameters())
    scales = [r[1] for r in rec.rows]
    assert scales == [2.0**16] * 2 + [2.0**15] * 3  # the overflow halves the scale, once
    # cosine, warm-up 2, 5 steps, lr 0.4: after k real steps 0.4 * factor(k); step 3 was not a real one
    factor = [1 / 3, 2 / 3, 1.0, 0.5 * (1 + math.cos(math.pi / 3)), 0.5 * (1 + math.cos(2 * math.pi / 3))]
    assert [r[2] for r in rec.rows] == pytest.approx([0.4 * factor[k] for k in (1, 2, 2, 3, 4)])
    for a, b in zip(rec.rows[1][3], rec.rows[2][3]):
        assert torch.equal(a, b)  # the skipped step left the weights alone
    assert not all(torch.equal(a, b) for a, b in zip(rec.rows[2][3], rec.rows[3][3]))


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
    table = caplog.text.split("profile:\n", 1)[1].splitlines()
    assert table[0].split() == ["phase", "calls", "mean", "ms", "total", "s", "share"]
    calls = {row.split()[0]: int(row.split()[1]) for row in table[1:5]}
    assert calls == {"data": 3, "forward": 3, "backward": 3, "optimizer": 3}  # one of each per step


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

    trainer = make_trainer(
        max_steps=2,
        compile=True,
        bn=False,
        callbacks={"model_checkpoint": ModelCheckpoint(str(tmp_path), monitor="val/acc", mode="max")},
    )
    trainer.fit()
    assert hasattr(trainer.step_fn, "_torchdynamo_orig_callable")  # model + loss ran as one compiled function
    state = load(tmp_path / "last.pt")["model"]
    assert not any(k.startswith("_orig_mod") for k in state)
    plain = make_trainer(bn=False, model_seed=1).model
    load_model_state(plain, state)
    for p, q in zip(plain.parameters(), trainer.model.parameters()):
        assert torch.equal(p, q)


class Hooks:
    """A duck-typed callback defining only some hooks; records each call with its arguments."""

    def __init__(self):
        self.calls = []

    def on_fit_start(self, trainer):
        self.calls.append(("fit_start", trainer.global_step))

    def on_train_batch_end(self, trainer, loss):
        assert isinstance(loss, torch.Tensor) and loss.dim() == 0 and math.isfinite(float(loss))  # on the device
        self.calls.append(("batch", trainer.global_step))

    def on_validation_end(self, trainer, metrics):
        self.calls.append(("val", trainer.global_step, sorted(metrics)))

    def on_fit_end(self, trainer):
        self.calls.append(("fit_end", trainer.global_step))


def test_hooks_are_called_in_order_with_their_arguments():
    hooks = Hooks()
    trainer = make_trainer(
        max_steps=5, val_check_interval=2, limit_val_batches=1, callbacks={"h": hooks, "none": object()}
    )
    trainer.fit()
    names = ["val/acc", "val/f1", "val/loss", "val/precision", "val/recall"]
    assert hooks.calls == [
        ("fit_start", 0),
        ("batch", 1),
        ("batch", 2),
        ("val", 2, names),
        ("batch", 3),
        ("batch", 4),
        ("val", 4, names),
        ("batch", 5),
        ("val", 5, names),
        ("fit_end", 5),
    ]


def test_limit_val_batches_evaluates_exactly_that_many_batches():
    trainer = make_trainer(n=128, limit_val_batches=2)  # val: 64 images in batches of 16
    metrics = trainer.evaluate("val")
    assert trainer.metrics.total.item() == 2 * 16
    images, labels = next(iter(trainer.datamodule.loader("val", device=trainer.device)))
    trainer.model.eval()
    with torch.no_grad():
        first = torch.nn.functional.cross_entropy(trainer.model(images), labels)
    second_images, second_labels = list(trainer.datamodule.loader("val", device=trainer.device))[1]
    with torch.no_grad():
        second = torch.nn.functional.cross_entropy(trainer.model(second_images), second_labels)
    assert metrics["val/loss"] == pytest.approx((first.item() + second.item()) / 2, rel=1e-5)
    trainer.config.limit_val_batches = -1  # everything
    trainer.evaluate("val")
    assert trainer.metrics.total.item() == 64


def test_lr_at_each_step_follows_the_warmup_and_cosine():
    from bigmodel.callbacks import LearningRateMonitor

    trainer = make_trainer(
        max_steps=6, lr=0.3, callbacks={"lr": LearningRateMonitor(every_n_steps=1)}, limit_val_batches=1
    )
    trainer.fit()
    # warm-up of 2 steps: (k+1)/3; then cosine over the remaining 4 steps down to 0
    factor = [2 / 3, 1.0] + [0.5 * (1 + math.cos(math.pi * k / 4)) for k in (1, 2, 3, 4)]
    assert trainer.logger.curve("lr") == [(s, pytest.approx(0.3 * f)) for s, f in enumerate(factor, 1)]


def test_validation_line_and_metric_names(caplog):
    trainer = make_trainer(max_steps=2, limit_val_batches=1)
    assert trainer.metric_names() == ["val/loss", "val/acc", "val/precision", "val/recall", "val/f1"]
    assert trainer.metric_names("test")[0] == "test/loss"
    with caplog.at_level("INFO", logger="bigmodel"):
        trainer.fit()
    v = r"[0-9]+\.[0-9]{4}"
    assert re.search(
        f"epoch 0 step 2: val/loss={v}  val/acc={v}  val/precision={v}  val/recall={v}  val/f1={v}$", caplog.text, re.M
    )


def test_max_steps_of_one_and_epochs_limited_by_batches():
    one = make_trainer(max_steps=1, max_epochs=3, limit_val_batches=1)
    one.fit()
    assert one.global_step == 1
    two = make_trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=1)
    two.fit()
    assert two.global_step == 6 and two.epoch == 2  # 3 batches an epoch, not 4
    assert [t for t in two.logger.images if t.startswith("train/")] == ["train/inputs"]  # once, at the first batch


def test_a_loader_shorter_than_its_len_ends_the_epoch_not_the_run():
    trainer = make_trainer(max_epochs=2, limit_val_batches=1)
    real = trainer.datamodule.loader

    class Short:
        """Claims 2 more batches than it yields."""

        def __init__(self, loader):
            self.loader = loader

        def __len__(self):
            return len(self.loader) + 2

        def __iter__(self):
            return iter(self.loader)

    trainer.datamodule.loader = lambda split, **kw: Short(real(split, **kw)) if split == "train" else real(split, **kw)
    trainer.fit()
    assert trainer.global_step == 2 * 8 and trainer.epoch == 2


def test_accumulated_step_logs_the_mean_of_its_micro_batch_losses():
    trainer = make_trainer(
        max_steps=3, accumulate_grad_batches=2, bn=False, augment=False, lr=0.0, limit_val_batches=1
    )  # lr 0: the weights stay, so the losses can be recomputed
    batches = list(trainer.datamodule.loader("train", epoch=0))
    with torch.no_grad():
        losses = [torch.nn.functional.cross_entropy(trainer.model(x), y).item() for x, y in batches[:6]]
    trainer.fit()
    expected = [(losses[2 * k] + losses[2 * k + 1]) / 2 for k in range(3)]
    assert [v for _, v in trainer.logger.curve("train/loss")] == pytest.approx(expected, rel=1e-5)


def test_an_epoch_that_ends_exactly_at_max_steps_counts_as_done():
    trainer = make_trainer(max_steps=8, limit_val_batches=1)  # 8 batches an epoch
    trainer.fit()
    assert (trainer.global_step, trainer.epoch, trainer.batch_in_epoch) == (8, 1, 0)


def test_a_signal_during_training_marks_the_run_interrupted():
    class Signal:
        def on_train_batch_end(self, trainer, loss):
            if trainer.global_step == 2:
                trainer._request_stop("SIGINT")

    trainer = make_trainer(max_steps=6, limit_val_batches=1, callbacks={"sig": Signal()})
    trainer.fit()
    assert trainer.global_step == 2 and trainer.interrupted is True and trainer.should_stop is True
    stopper = make_trainer(max_steps=6, limit_val_batches=1, callbacks={"stop": StopAt(2)})
    stopper.fit()
    assert stopper.global_step == 2 and stopper.interrupted is False  # a callback's stop is not a signal


def test_train_accuracy_skips_ignored_targets_and_throughput_counts_samples(monkeypatch):
    import bigmodel.window as window_module

    trainer = make_trainer(
        max_steps=3,
        accumulate_grad_batches=2,
        bn=False,
        augment=False,
        lr=0.0,
        limit_val_batches=1,
        val_check_interval=1,
    )
    real = trainer.datamodule.loader
    now = [0.0]  # a clock the test drives: 0.5 "s" to fetch each train batch, 1 "s" per loss, 100 per validation

    class Timed:
        """The first target of every train batch is ignored (-100); fetching a batch takes time."""

        def __init__(self, split, **kw):
            self.split, self.batches = split, list(real(split, **kw))

        def __len__(self):
            return len(self.batches)

        def __iter__(self):
            for x, y in self.batches:
                now[0] += 0.5 if self.split == "train" else 100.0
                yield x, (torch.cat([torch.tensor([-100]), y[1:]]) if self.split == "train" else y)

    def timed_loss(logits, targets):
        now[0] += 1.0
        return torch.nn.functional.cross_entropy(logits, targets)

    trainer.datamodule.loader = Timed
    trainer.loss_fn = timed_loss
    batches = list(Timed("train", epoch=0))[:6]
    with torch.no_grad():
        hits = [((trainer.model(x).argmax(-1) == y) & (y != -100)).sum().item() for x, y in batches]
    monkeypatch.setattr(window_module, "clock", lambda: now[0])
    trainer.fit()
    expected = [(hits[2 * k] + hits[2 * k + 1]) / 14 for k in range(3)]  # 2 batches of 8, one ignored in each
    assert [v for _, v in trainer.logger.curve("train/acc")] == pytest.approx(expected)
    # each step: 2 batches (0.5 s waiting for each) and 2 losses (1 s each); validation after every step
    # is not training time, so the throughput does not dip after it
    assert [v for _, v in trainer.logger.curve("perf/step_time")] == [3.0] * 3
    assert [v for _, v in trainer.logger.curve("perf/data_wait")] == [1.0] * 3
    assert [v for _, v in trainer.logger.curve("perf/samples_per_sec")] == [16 / 3] * 3
    assert trainer.logger.curve("perf/tokens_per_sec") == []  # (B,) class targets: not a sequence model


def test_fp16_clipping_measures_the_unscaled_gradient_norm():
    fp16 = make_trainer(max_steps=2, precision=Precision.fp16, gradient_clip_val=1e-3, bn=False, limit_val_batches=1)
    fp16.fit()
    plain = make_trainer(max_steps=2, gradient_clip_val=1e-3, bn=False, limit_val_batches=1)
    plain.fit()
    got, ref = (t.logger.curve("train/grad_norm")[0][1] for t in (fp16, plain))
    assert got == pytest.approx(ref, rel=0.05)  # the same first step, in half precision: not 65536x


class NaNOn:
    """A cross-entropy that is NaN on the given calls (1-based)."""

    def __init__(self, calls):
        self.bad, self.calls = set(calls), 0

    def __call__(self, logits, targets):
        self.calls += 1
        loss = torch.nn.functional.cross_entropy(logits.float(), targets)
        return loss * float("nan") if self.calls in self.bad else loss


def test_skips_in_a_row_reset_after_a_good_step(monkeypatch):
    import bigmodel.window as window_module

    monkeypatch.setattr(window_module, "MAX_SKIPS_IN_A_ROW", 3)
    trainer = make_trainer(max_steps=3, on_nonfinite=NonFinite.skip, limit_val_batches=1)
    trainer.loss_fn = NaNOn([1, 2, 4, 5, 7, 8])  # never 3 in a row
    trainer.fit()
    assert trainer.global_step == 3


def test_fp16_skipped_nan_step_backs_off_the_loss_scale():
    trainer = make_trainer(
        max_steps=3, precision=Precision.fp16, on_nonfinite=NonFinite.skip, limit_val_batches=1, bn=False
    )  # this model never overflows on its own: 2 ** 16 stays until the NaN
    trainer.loss_fn = NaNOn([2])
    trainer.fit()
    assert trainer.global_step == 3 and trainer.scaler.get_scale() == 2.0**15


def test_logged_train_loss_is_the_mean_over_the_log_window():
    trainer = make_trainer(max_steps=4, log_every_n_steps=2, bn=False, augment=False, lr=0.0, limit_val_batches=1)
    batches = list(trainer.datamodule.loader("train", epoch=0))[:4]
    with torch.no_grad():
        losses = [torch.nn.functional.cross_entropy(trainer.model(x), y).item() for x, y in batches]
        hits = [(trainer.model(x).argmax(-1) == y).sum().item() for x, y in batches]
    trainer.fit()
    assert trainer.logger.curve("train/loss") == [
        (2, pytest.approx((losses[0] + losses[1]) / 2, rel=1e-5)),
        (4, pytest.approx((losses[2] + losses[3]) / 2, rel=1e-5)),
    ]
    assert [v for _, v in trainer.logger.curve("train/acc")] == pytest.approx(
        [(hits[0] + hits[1]) / 16, (hits[2] + hits[3]) / 16]
    )


class ImageLogger(RecordingLogger):
    def log_image(self, tag, image, step):
        super().log_image(tag, image, step)
        self.grids = getattr(self, "grids", []) + [(tag, image, step)]


def test_input_grid_shows_the_first_16_images_each_scaled_to_0_1():
    trainer = make_trainer(max_steps=1, batch_size=32, limit_val_batches=1)
    trainer.logger = ImageLogger()
    trainer.fit()
    [(tag, grid, step)] = [g for g in trainer.logger.grids if g[0] == "train/inputs"]
    # 16 images of 8x8 in rows of 8 with 2-pixel borders: 2 rows -> 2 + 2 * 10 high, 2 + 8 * 10 wide
    assert step == 0 and grid.shape == (3, 22, 82)
    for r in range(2):
        for c in range(8):
            cell = grid[:, 2 + 10 * r : 10 + 10 * r, 2 + 10 * c : 10 + 10 * c]
            assert cell.min().item() == 0.0 and cell.max().item() == 1.0  # each image stretched on its own


def test_only_image_batches_on_rank_zero_make_an_input_grid():
    import types

    from bigmodel.callbacks_inputs import InputImages

    callback, logger = InputImages(), RecordingLogger()
    trainer = types.SimpleNamespace(global_step=0, batch_in_epoch=0, is_global_zero=True, logger=logger)
    for x in (torch.zeros(4, 3), torch.zeros(4, 2, 8, 8), torch.zeros(4, 8, 8)):  # tokens, 2 channels, no channels
        callback.on_train_batch_start(trainer, (x, None))
    assert logger.images == []
    callback.on_train_batch_start(trainer, (torch.rand(4, 1, 8, 8), None))  # grey images are fine
    assert logger.images == ["train/inputs"]
    trainer.batch_in_epoch = 1  # the first batch only
    callback.on_train_batch_start(trainer, (torch.rand(4, 3, 8, 8), None))
    trainer.batch_in_epoch, trainer.is_global_zero = 0, False
    callback.on_train_batch_start(trainer, (torch.rand(4, 3, 8, 8), None))
    assert logger.images == ["train/inputs"]


def test_each_epoch_trains_on_that_epochs_order():
    trainer = make_trainer(max_epochs=2, limit_val_batches=1)
    seen = []

    def recording_loss(logits, targets):
        seen.append(targets.clone())
        return torch.nn.functional.cross_entropy(logits, targets)

    trainer.loss_fn = recording_loss
    trainer.fit()
    expected = [y for epoch in (0, 1) for _, y in trainer.datamodule.loader("train", epoch=epoch)]
    train_seen = seen[:8] + seen[9:17]  # one validation batch after each epoch
    assert len(seen) == 8 + 1 + 8 + 1 and all(torch.equal(a, b) for a, b in zip(train_seen, expected))
    assert not torch.equal(torch.cat(expected[:8]), torch.cat(expected[8:]))  # epochs are shuffled differently


def test_schedule_length_follows_steps_or_epochs():
    by_epochs = make_trainer(max_epochs=1, accumulate_grad_batches=2, limit_val_batches=1)
    by_epochs.fit()
    assert by_epochs.total_steps == by_epochs.global_step == 4  # 8 batches, 2 per optimizer step
    one = make_trainer(max_steps=1, max_epochs=3, limit_val_batches=1)
    one.fit()
    assert one.total_steps == 1
