"""trainer.compile=true (inductor on CPU): model + loss (+ train counts) as one compiled function
gives the eager losses, for each model family; evaluation runs the uncompiled module."""

import pytest
import torch

from bigmodel.config import Device, TrainerConfig
from bigmodel.losses import CrossEntropy
from bigmodel.metrics import Classification, LanguageModel
from bigmodel.models.cnn import CNN
from bigmodel.models.gpt import GPT
from bigmodel.models.rnn import LSTMClassifier
from bigmodel.models.transformer import TransformerClassifier
from bigmodel.trainer import Trainer
from helpers import RecordingLogger


class FixedData:
    """The same few batches for every split and epoch (a DataModule without files)."""

    def __init__(self, batches, metrics):
        self.batches, self.make_metrics = batches, metrics

    def loader(self, split, **kw):
        return list(self.batches)

    def metrics(self):
        return self.make_metrics()

    def setup(self): ...

    def model_args(self):
        return {}

    def state_dict(self):
        return {}


def family(name: str):
    g = torch.Generator().manual_seed(0)
    if name == "cnn":
        model = CNN(num_classes=3, in_channels=3, stem_width=4, widths=(8,), dropout=0.0)
        batches = [(torch.randn(4, 3, 8, 8, generator=g), torch.randint(3, (4,), generator=g)) for _ in range(3)]
        return model, batches, lambda: Classification(3)
    if name in ("lstm", "transformer"):
        cls = LSTMClassifier if name == "lstm" else TransformerClassifier
        kw = dict(embed_dim=8, hidden_size=8) if name == "lstm" else dict(hidden_size=8, n_layer=1, n_head=2)
        model = cls(vocab_size=20, num_classes=2, dropout=0.0, **kw)
        batches = [
            ((torch.randint(1, 20, (4, 6), generator=g), torch.full((4,), 6)), torch.randint(2, (4,), generator=g))
            for _ in range(3)
        ]
        return model, batches, lambda: Classification(2)
    model = GPT(vocab_size=16, block_size=8, n_layer=1, n_head=2, n_embd=8)
    batches = [(torch.randint(16, (2, 8), generator=g), torch.randint(16, (2, 8), generator=g)) for _ in range(3)]
    return model, batches, LanguageModel


def run(name: str, compile: bool) -> tuple[list[float], Trainer]:
    torch.manual_seed(0)
    model, batches, metrics = family(name)
    config = TrainerConfig(
        device=Device.cpu, max_steps=3, log_every_n_steps=1, progress_bar=False, compile=compile, limit_val_batches=1
    )
    trainer = Trainer(
        config,
        model=model,
        loss_fn=CrossEntropy(),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        datamodule=FixedData(batches, metrics),
        logger=RecordingLogger(),
    )
    trainer.fit()
    return [v for _, v in trainer.logger.curve("train/loss")], trainer


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cnn", "lstm", "transformer", "gpt"])
def test_compiled_steps_match_eager(name):
    torch._dynamo.reset()
    eager, _ = run(name, compile=False)
    compiled, trainer = run(name, compile=True)
    assert hasattr(trainer.step_fn, "_torchdynamo_orig_callable")  # the step really was compiled
    assert len(compiled) == 3 and compiled == pytest.approx(eager, rel=1e-4, abs=1e-5)
    accs = [v for _, v in trainer.logger.curve("train/acc")]
    assert len(accs) == 3 and all(0 <= a <= 1 for a in accs)  # counted inside the compiled function
    if name == "gpt":
        assert len(trainer.logger.curve("perf/tokens_per_sec")) == 3  # (B, T) targets: tokens
