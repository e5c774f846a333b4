"""`bigmodel export` and bigmodel.exported: every model family exported as ONNX and .pt2 gives the
checkpoint's logits, for other batch sizes and texts of other lengths than the traced example."""

import json
import re

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from bigmodel.config import ConfigError
from bigmodel.export import export_model
from bigmodel.exported import ExportError, load_exported
from bigmodel.models.rnn import LSTMClassifier, packed_lstm
from bigmodel.predict import predict
from bigmodel.restore import restore_model
from bigmodel.train import evaluate, train
from conftest import compose_cfg, run_cli, write_fake_cifar10
from test_text_data import write_sentiment

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest

TINY = {  # family -> train overrides of a tiny model trained for a few steps
    "lstm": ["model=lstm", "data=sst2", "model.embed_dim=8", "model.hidden_size=8", "model.n_layer=2"],
    "lstm_last": ["model=lstm", "data=sst2", "model.embed_dim=8", "model.hidden_size=8", "model.pooling=last"],
    "transformer": [
        "model=transformer",
        "data=sst2",
        "model.hidden_size=8",
        "model.n_head=2",
        "model.n_layer=1",
        "model.max_length=40",
    ],
    "textcnn": ["model=textcnn", "data=sst2", "model.embed_dim=8", "model.n_filters=4"],
    "cnn": [
        "model=cnn",
        "data=cifar10",
        "model.stem_width=4",
        "model.widths=[8]",
        "data.val_size=20",
        "data.download=false",
        "data.fallback=null",
        "data.eval_batch_size=8",
    ],
    "gpt": [
        "model=gpt",
        "data=text_lm",
        "data.files=${paths.data_dir}/lm.txt",
        "model.block_size=16",
        "model.n_layer=1",
        "model.n_head=2",
        "model.n_embd=8",
        "data.batch_size=4",
        "data.eval_batch_size=4",
        "data.epoch_blocks=8",
    ],
}
TINY["cnn_flip"] = [*TINY["cnn"], "model.flip_average=true"]  # one call on each image and its mirror


def train_tiny(root, family: str):
    """best.pt of a tiny model of `family`, trained a few steps on data written under root/data."""
    data = root / "data"
    write_sentiment(data / "sst2", n_train=32)
    write_fake_cifar10(data / "cifar10", n_train=60, n_test=20)
    (data / "lm.txt").write_text("to be or not to be, that is the question.\n" * 20, encoding="utf-8")
    run = root / f"run_{family}"
    cfg = compose_cfg(
        "train",
        [
            f"paths.data_dir={data}",
            f"paths.log_dir={root}/logs",
            f"paths.cache_dir={root}/cache",
            *TINY[family],
            "trainer=debug",
            "logger=none",
            "trainer.max_steps=3",
            "trainer.val_check_interval=3",
            "scheduler=none",
            "data.batch_size=8",
            "test=false",
        ]
        + (["data.batch_size=4"] if family == "gpt" else []),
        run,
    )
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
    if family.startswith("cnn"):
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
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
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
    if family == "transformer":  # longer than model.max_length=40: cut to it, as the eager model does
        tokens, lengths = torch.randint(2, restored.model_args["vocab_size"], (2, 50)), torch.tensor([50, 45])
        torch.testing.assert_close(exported(tokens, lengths), restored.model(tokens, lengths), atol=1e-4, rtol=1e-4)


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


def test_packed_lstm_op_is_what_the_model_runs_while_exporting(monkeypatch):
    torch.manual_seed(0)
    model = LSTMClassifier(vocab_size=30, num_classes=3, embed_dim=6, hidden_size=5, pooling="mean").eval()
    tokens, lengths = torch.randint(1, 30, (3, 7)), torch.tensor([7, 2, 0])
    want = model(tokens, lengths)
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    torch.testing.assert_close(model(tokens, lengths), want)


# ---------------------------------------------------------------- the check, the folder, its errors
def test_a_broken_export_fails_the_check_and_leaves_nothing(ckpts, tmp_path, monkeypatch):
    import bigmodel.export as export

    real = export.load_exported

    def off_by_a_bit(path):
        exported = real(path)
        run = exported._run
        exported._run = lambda inputs: run(inputs) + 0.01
        return exported

    monkeypatch.setattr(export, "load_exported", off_by_a_bit)
    with pytest.raises(ExportError, match=r"differs from the checkpoint: max \|logit diff\| 0.01 > atol=0.001"):
        export_model(str(ckpts["textcnn"]), "pt2", tmp_path / "exp")
    assert not (tmp_path / "exp").exists() and list(tmp_path.iterdir()) == []


def test_an_existing_export_is_not_overwritten_silently(ckpts, tmp_path):
    out = export_model(str(ckpts["textcnn"]), "pt2")
    assert out == ckpts["textcnn"].parent.parent / "export" / "pt2"
    with pytest.raises(ExportError, match="already holds an export; give another output_dir= or overwrite=true"):
        export_model(str(ckpts["textcnn"]), "pt2")
    (out / "model.pt2").write_bytes(b"garbage")
    assert export_model(str(ckpts["textcnn"]), "pt2", overwrite=True) == out
    load_exported(out)


def test_overwrite_replaces_an_export_but_never_a_folder_of_other_files(ckpts, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="holds files but no export .bigmodel.json.; it is not replaced"):
        export_model(str(ckpts["textcnn"]), "pt2", mine, overwrite=True)
    assert (mine / "notes.txt").read_text() == "keep me"
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ExportError, match="is a file; give a folder"):
        export_model(str(ckpts["textcnn"]), "pt2", tmp_path / "a-file")


@pytest.mark.parametrize(
    "override, words",
    [
        ("check_batches=abc", "check_batches='abc' is not valid: use an integer"),
        ("check_batches=0", "check_batches=0 is out of range"),
        ("atol=-1", "atol=-1 is out of range"),
        ("overwrite=maybe", "overwrite='maybe' is not valid: use true or false"),
    ],
)
def test_export_keys_are_typed(ckpts, tmp_path, override, words):
    from bigmodel.config import ConfigError
    from bigmodel.export import export

    cfg = compose_cfg("export", [f"ckpt_path={ckpts['textcnn']}", override], tmp_path / "run")
    GlobalHydra.instance().clear()
    with pytest.raises(ConfigError, match=re.escape(words)):
        export(cfg)


def test_unusable_folders_are_refused_in_one_line(ckpts, tmp_path):
    with pytest.raises(ConfigError, match="format='tflite' is not an export format; valid: onnx, pt2"):
        export_model(str(ckpts["textcnn"]), "tflite", tmp_path / "x")
    with pytest.raises(ExportError, match="no such folder"):
        load_exported(tmp_path / "nowhere")
    with pytest.raises(ExportError, match="has no bigmodel.json: not a folder written by bigmodel export"):
        load_exported(tmp_path)
    out = export_model(str(ckpts["textcnn"]), "pt2", tmp_path / "exp")
    spec = json.loads((out / "bigmodel.json").read_text())
    (out / "model.pt2").write_bytes(b"not a zip")
    with pytest.raises(ExportError, match="model.pt2: not a plain .pt2 program"):
        load_exported(out)
    (out / "model.pt2").unlink()
    with pytest.raises(ExportError, match="its model file model.pt2 is missing"):
        load_exported(out)
    (out / "bigmodel.json").write_text(json.dumps({**spec, "format": "tflite"}))
    with pytest.raises(ExportError, match="format='tflite' is not one of"):
        load_exported(out)
    (out / "bigmodel.json").write_text("{not json")
    with pytest.raises(ExportError, match="bigmodel.json: not valid JSON"):
        load_exported(out)


def test_a_garbage_onnx_file_is_refused_in_one_line(ckpts, tmp_path):
    pytest.importorskip("onnxruntime")
    out = export_model(str(ckpts["textcnn"]), "onnx", tmp_path / "exp")
    (out / "model.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(ExportError, match="model.onnx: not a loadable ONNX model"):
        load_exported(out)


# ---------------------------------------------------------------- eval and predict with model_path
@pytest.mark.slow
@pytest.mark.parametrize("family, fmt", [("lstm", "onnx"), ("cnn", "onnx"), ("gpt", "pt2")])
def test_eval_with_model_path_measures_what_eval_with_ckpt_path_does(ckpts, tmp_path, family, fmt):
    out = export_model(str(ckpts[family]), fmt, tmp_path / "exp")
    results = []
    for source in (f"ckpt_path={ckpts[family]}", f"model_path={out}"):
        cfg = compose_cfg("eval", [source, "split=val", "trainer.progress_bar=false"], tmp_path / "eval")
        results.append(evaluate(cfg))
        GlobalHydra.instance().clear()
    eager, exported = results
    assert list(exported) == list(eager) and "val/acc" in eager
    assert exported["val/acc"] == eager["val/acc"]
    assert exported == pytest.approx(eager, abs=1e-5)


def test_eval_and_predict_want_exactly_one_model(tmp_path):
    for overrides, message in [
        ([], "ckpt_path is required, e.g. bigmodel eval ckpt_path="),
        (["ckpt_path=a.pt", "model_path=b"], "give one of ckpt_path=a.pt and model_path=b, not both"),
    ]:
        cfg = compose_cfg("eval", overrides, tmp_path)
        GlobalHydra.instance().clear()
        with pytest.raises(ConfigError, match=re.escape(message)):
            evaluate(cfg)
    cfg = compose_cfg("predict", ["ckpt_path=a.pt", "model_path=b", "text=hi"], tmp_path)
    GlobalHydra.instance().clear()
    with pytest.raises(ConfigError, match="not both"):
        predict(cfg)


def test_predict_with_model_path_gives_the_checkpoints_answers(ckpts, tmp_path, capsys):
    out = export_model(str(ckpts["lstm"]), "pt2", tmp_path / "exp")
    (tmp_path / "in.txt").write_text("a great film , really great .\nbad\na dull film , really dull , dull .\n")
    answers = []
    for source in (f"ckpt_path={ckpts['lstm']}", f"model_path={out}"):
        cfg = compose_cfg("predict", [source, f"input_file={tmp_path}/in.txt", "device=cpu"], tmp_path / "p")
        GlobalHydra.instance().clear()
        answers.append(predict(cfg))
    (want, got) = answers
    assert [label for label, _ in got] == [label for label, _ in want]
    torch.testing.assert_close(torch.tensor([p for _, p in got]), torch.tensor([p for _, p in want]), atol=1e-5, rtol=0)
    cfg = compose_cfg("predict", [f"model_path={out}", "text=hi"], tmp_path / "p")
    GlobalHydra.instance().clear()
    cnn = export_model(str(ckpts["cnn"]), "pt2", tmp_path / "cnn")
    with pytest.raises(ExportError, match="holds a image_classification model, not a text classifier"):
        predict(compose_cfg("predict", [f"model_path={cnn}", "text=hi"], tmp_path / "p"))
    GlobalHydra.instance().clear()


@pytest.mark.slow
def test_cli_exports_and_refuses_in_one_line(ckpts, tmp_path):
    out = run_cli(
        "export", f"ckpt_path={ckpts['transformer']}", "format=onnx", f"output_dir={tmp_path}/exp", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert "argmax agreement 100.00%" in out.stdout and f"exported to {tmp_path}/exp" in out.stdout
    again = run_cli("export", f"ckpt_path={ckpts['transformer']}", f"output_dir={tmp_path}/exp", cwd=tmp_path)
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert "already holds an export; give another output_dir= or overwrite=true" in again.stderr + again.stdout
    ev = run_cli("eval", f"model_path={tmp_path}/exp", "split=val", "trainer.progress_bar=false", cwd=tmp_path)
    assert ev.returncode == 0 and "val/acc=" in ev.stdout, ev.stderr
