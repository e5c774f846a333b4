"""The step as it runs on a GPU, checked on CPU: no host reads between log steps, bf16 autocast,
channels-last inputs, data kept on the device, and the train counts."""

import pytest
import torch

from bigmodel.config import Precision
from bigmodel.metrics import Classification, LanguageModel
from helpers import make_trainer

READS = ("item", "__bool__", "__float__", "tolist", "cpu")  # every way a device tensor reaches the host


class CountReads:
    """Counts reads of tensors per optimizer step: calls[i] = reads between the ends of steps i and i+1."""

    def __init__(self, monkeypatch):
        self.calls, self.now = [], 0
        for name in READS:
            monkeypatch.setattr(torch.Tensor, name, self._counted(getattr(torch.Tensor, name)))

    def _counted(self, real):
        def read(t, *args, **kwargs):
            self.now += 1
            return real(t, *args, **kwargs)

        return read

    def on_train_batch_end(self, trainer, loss):
        self.calls.append(self.now)
        self.now = 0


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"precision": Precision.bf16},
        {"accumulate_grad_batches": 2, "gradient_clip_val": 1.0, "channels_last": True},
    ],
)
def test_no_host_reads_between_log_steps(monkeypatch, config):
    trainer = make_trainer(n=256, max_steps=12, log_every_n_steps=6, augment=False, **config)
    counter = CountReads(monkeypatch)
    trainer.callbacks["reads"] = counter
    trainer.fit()
    monkeypatch.undo()
    # step 1 logs the input images; a log step (6, 12) reads in its own interval (the non-finite
    # check before its update) and in the next one (the log line after it)
    quiet = [counter.calls[i - 1] for i in (2, 3, 4, 5, 8, 9, 10, 11)]
    assert len(counter.calls) == 12 and quiet == [0] * 8, counter.calls
    assert counter.calls[5] > 0 and counter.calls[6] > 0  # the counter does see the reads that happen
    assert len(trainer.logger.curve("train/loss")) == 2


def test_a_nan_between_log_steps_stops_at_the_next_check_naming_its_step():
    trainer = make_trainer(max_steps=8, log_every_n_steps=4, limit_val_batches=1)
    calls = []

    def nan_at_2(logits, targets):
        calls.append(1)
        loss = torch.nn.functional.cross_entropy(logits, targets)
        return loss * float("nan") if len(calls) == 2 else loss

    trainer.loss_fn = nan_at_2
    with pytest.raises(FloatingPointError, match=r"^non-finite loss nan at step 2 \(epoch 0\)"):
        trainer.fit()
    assert trainer.global_step == 3  # steps 2 and 3 ran on; step 4, a log step, read the flag first


def test_train_counts_follow_the_loss_ignore_index():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    targets = torch.tensor([0, 0, 7])
    assert [int(v) for v in Classification(2).train_counts(logits, targets, ignore_index=7)] == [1, 2]
    assert [int(v) for v in Classification(2).train_counts(logits, targets, ignore_index=-100)] == [1, 3]
    lm = LanguageModel(ignore_index=7)
    assert [int(v) for v in lm.train_counts(logits.view(1, 3, 2), targets.view(1, 3))] == [1, 2]


def test_channels_last_reaches_the_model_input():
    trainer = make_trainer(max_steps=1, channels_last=True, limit_val_batches=1)
    seen = []
    trainer.model.stem[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    trainer.fit()
    assert seen and seen[0].is_contiguous(memory_format=torch.channels_last)


def test_data_on_device_on_cpu_trains():
    from bigmodel.data.images import ImageData

    trainer = make_trainer(max_steps=4, limit_val_batches=1)
    dm = trainer.datamodule
    on_device = ImageData(
        dm.load,
        batch_size=8,
        eval_batch_size=16,
        augment=dm.augment,
        mean=[0.5] * 3,
        std=[0.25] * 3,
        on_device=True,
        seed=0,
    )
    on_device.setup()
    trainer.datamodule = on_device
    metrics = trainer.fit()
    assert trainer.global_step == 4 and all(v == v for v in metrics.values())  # no NaN
