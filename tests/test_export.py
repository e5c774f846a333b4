"""`bigmodel export` and bigmodel.exported: every model family exported as ONNX and .pt2 gives the
checkpoint's logits, for other batch sizes and texts of other lengths than the traced example."""

import json

import pytest
import torch
from conftest import compose_cfg, write_fake_cifar10
from hydra.core.global_hydra import GlobalHydra
from test_text_data import write_sentiment

from bigmodel.export import export_model
from bigmodel.exported import load_exported
from bigmodel.models.rnn import LSTMClassifier, packed_lstm
from bigmodel.restore import restore_model
from bigmodel.train import train

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest

TINY = {  # family -> train overrides of a tiny model trained for a few steps
    "lstm": ["model=lstm", "data=sst2", "model.embed_dim=8", "model.hidden_size=8", "model.n_layer=2"],
    "lstm_last": ["model=lstm", "data=sst2", "model.embed_dim=8", "model.hidden_size=8", "model.pooling=last"],
    "transformer": ["model=transformer", "data=sst2", "model.hidden_size=8", "model.n_head=2", "model.n_layer=1",
                    "model.max_length=40"],
    "textcnn": ["model=textcnn", "data=sst2", "model.embed_dim=8", "model.n_filters=4"],
    "cnn": ["model=cnn", "data=cifar10", "model.stem_width=4", "model.widths=[8]", "data.val_size=20",
            "data.download=false", "data.fallback=null", "data.eval_batch_size=8"],
    "gpt": ["model=gpt", "data=text_lm", "data.files=${paths.data_dir}/lm.txt", "model.block_size=16",
            "model.n_layer=1", "model.n_head=2", "model.n_embd=8", "data.batch_size=4", "data.eval_batch_size=4",
            "data.epoch_blocks=8"],
}


def train_tiny(root, family: str):
    """best.pt of a tiny model of `family`, trained a few steps on data written under root/data."""
    data = root / "data"
    write_sentiment(data / "sst2", n_train=32)
    write_fake_cifar10(data / "cifar10", n_train=60, n_test=20)
    (data / "lm.txt").write_text("to be or not to be, that is the question.\n" * 20, encoding="utf-8")
    run = root / f"run_{family}"
    cfg = compose_cfg("train", [f"paths.data_dir={data}", f"paths.log_dir={root}/logs", f"paths.cache_dir={root}/cache",
                                *TINY[family], "trainer=debug", "logger=none", "trainer.max_steps=3",
                                "trainer.val_check_interval=3", "scheduler=none", "data.batch_size=8", "test=false"]
                      + (["data.batch_size=4"] if family == "gpt" else []), run)
    train(cfg)
    GlobalHydra.instance().clear()
    return run / "checkpoints" / "best.pt"


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {family: train_tiny(root, family) for family in TINY}
    torch.set_num_threads(n)
    return out


def uneven_inputs(restored, family: str):
    """A batch unlike the traced example (batch 2, length 8): 5 items, lengths 1 to 23 (the GPT: 16)."""
    g = torch.Generator().manual_seed(0)
    if family == "cnn":
        return (torch.randn(5, 3, 32, 32, generator=g),)
    vocab = restored.model_args["vocab_size"]
    if family == "gpt":
        return (torch.randint(0, vocab, (5, 16), generator=g),)
    lengths = torch.tensor([23, 1, 7, 15, 2])
    tokens = torch.randint(2, vocab, (5, 23), generator=g)
    tokens[torch.arange(23)[None, :] >= lengths[:, None]] = restored.model_args["pad_idx"]
    return tokens, lengths


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
@pytest.mark.parametrize("family", list(TINY))
def test_export_gives_the_checkpoints_logits(ckpts, tmp_path, family, fmt, capsys):
    out = export_model(str(ckpts[family]), fmt, tmp_path / "exp")
    assert "argmax agreement 100.00%" in capsys.readouterr().out
    exported = load_exported(out)
    restored = restore_model(str(ckpts[family]))
    inputs = uneven_inputs(restored, family)
    with torch.no_grad():
        want = restored.model(*inputs)
    got = exported(*inputs)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    one = exported(*(x[1:2] for x in inputs))  # batch 1 too (traced with 2)
    torch.testing.assert_close(one, want[1:2], atol=1e-4, rtol=1e-4)
    spec = json.loads((out / "bigmodel.json").read_text())
    assert spec["check"]["max_abs_diff"] <= 1e-3 and spec["config"]["model"]["_target_"]


def test_packed_lstm_op_equals_the_lstm_over_packed_texts():
    torch.manual_seed(0)
    model = LSTMClassifier(vocab_size=30, num_classes=3, embed_dim=6, hidden_size=5, n_layer=2).eval()
    x, lengths = torch.randn(4, 9, 6), torch.tensor([9, 1, 4, 6])
    weights = [p for layer in model.lstm.all_weights for p in layer]
    out, h = packed_lstm(x, lengths, weights, 2, True)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    want, (want_h, _) = model.lstm(packed)
    want, _ = torch.nn.utils.rnn.pad_packed_sequence(want, batch_first=True, total_length=9)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(h, want_h)
