"""`bigmodel predict`: a checkpoint trained here classifies text from the command line, a file, into a CSV."""

import csv

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from bigmodel.checkpoint import CheckpointError, save_atomic
from bigmodel.cli import quote_free_text
from bigmodel.data.errors import DataError
from bigmodel.exported import ExportError
from bigmodel.predict import classify, load_classifier, predict
from bigmodel.train import evaluate, train
from conftest import compose_cfg, run_cli
from test_text_data import write_sentiment

NAMES = ["negative", "positive"]


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """best.pt of a small LSTM trained in-process on a learnable sentiment folder (about a second)."""
    root = tmp_path_factory.mktemp("predict")
    write_sentiment(root / "data" / "sst2", n_train=64)
    (root / "run").mkdir()
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = compose_cfg(
        "train",
        [
            f"paths.data_dir={root}/data",
            f"paths.log_dir={root}/logs",
            "model=lstm",
            "data=sst2",
            "trainer=debug",
            "logger=none",
            "trainer.max_steps=60",
            "trainer.max_epochs=20",
            "trainer.limit_train_batches=-1",
            "trainer.val_check_interval=30",
            "optimizer.lr=0.01",
            "scheduler=none",
            "model.embed_dim=16",
            "model.hidden_size=16",
            "data.batch_size=16",
            "test=false",
        ],
        root / "run",
    )
    train(cfg)
    torch.set_num_threads(n)
    GlobalHydra.instance().clear()
    return root / "run" / "checkpoints" / "best.pt"


def predict_cfg(tmp_path, *overrides: str):
    cfg = compose_cfg("predict", quote_free_text(list(overrides), "text"), tmp_path / "predict")
    GlobalHydra.instance().clear()
    return cfg


@pytest.mark.parametrize(
    "text",
    [
        "a gripping , funny film",
        "it 's = [not] {bad} ${x}",
        "'quoted'x",
        "back\\slash\\",
        "'good' but 'bad'",
        '"fine" and "dandy"',
    ],
)
def test_free_text_survives_override_parsing(tmp_path, text):
    assert predict_cfg(tmp_path, "ckpt_path=x", f"text={text}").text == text


def test_text_prints_label_and_probabilities(tmp_path, ckpt, capsys):
    results = predict(predict_cfg(tmp_path, f"ckpt_path={ckpt}", "text=a great film , really great ."))
    line = capsys.readouterr().out.strip()
    label, probs, text = line.split("\t")
    assert label == "positive" == results[0][0] and text == "a great film , really great ."
    values = dict(p.split("=") for p in probs.split(" "))
    assert list(values) == NAMES and abs(sum(float(v) for v in values.values()) - 1) < 1e-3
    assert float(values["positive"]) > 0.5


def test_input_file_to_stdout_and_csv(tmp_path, ckpt, capsys):
    texts = ["a dull film , really dull .", "a fun film , really fun", "boring", "a moving film , really moving ."]
    (tmp_path / "in.txt").write_text(f"{texts[0]}\n{texts[1]}\r\n\n{texts[2]}\n{texts[3]}", encoding="utf-8")
    results = predict(predict_cfg(tmp_path, f"ckpt_path={ckpt}", f"input_file={tmp_path}/in.txt"))
    lines = capsys.readouterr().out.strip().split("\n")
    assert [ln.split("\t")[2] for ln in lines] == texts
    assert [label for label, _ in results] == ["negative", "positive", "negative", "positive"]

    model, vocab, names = load_classifier(str(ckpt), torch.device("cpu"))
    alone = torch.cat([classify(model, vocab, [t]) for t in texts])  # no padding vs. padded together
    torch.testing.assert_close(torch.tensor([p for _, p in results]), alone, atol=1e-5, rtol=1e-5)

    predict(
        predict_cfg(
            tmp_path, f"ckpt_path={ckpt}", f"input_file={tmp_path}/in.txt", f"output_file={tmp_path}/out/preds.csv"
        )
    )
    rows = list(csv.DictReader(open(tmp_path / "out" / "preds.csv", encoding="utf-8")))
    assert list(rows[0]) == ["text", "label", "p_negative", "p_positive"]
    assert [r["text"] for r in rows] == texts and [r["label"] for r in rows] == [lb for lb, _ in results]


def test_bad_requests_are_clear_errors(tmp_path, ckpt):
    with pytest.raises(DataError, match="exactly one of"):
        predict(predict_cfg(tmp_path, f"ckpt_path={ckpt}"))
    with pytest.raises(DataError, match="text= is empty"):
        predict(predict_cfg(tmp_path, f"ckpt_path={ckpt}", "text=   "))
    with pytest.raises(DataError, match="no such file"):
        predict(predict_cfg(tmp_path, f"ckpt_path={ckpt}", f"input_file={tmp_path}/missing.txt"))
    other = tmp_path / "other.pt"
    save_atomic({"format": 1, "data": {"class_names": NAMES}, "config": {}, "model_args": {}, "model": {}}, other)
    with pytest.raises(CheckpointError, match="not a text classification checkpoint"):
        predict(predict_cfg(tmp_path, f"ckpt_path={other}", "text=hi"))


def test_output_file_never_overwrites_an_input(tmp_path, ckpt):
    texts = tmp_path / "texts.txt"
    texts.write_text("a good film\n")
    before = ckpt.read_bytes()
    for target, words in (
        (texts, "would overwrite input_file"),
        (ckpt, "would overwrite ckpt_path"),
        (tmp_path, "is a folder"),
    ):
        with pytest.raises(DataError, match=words):
            predict(predict_cfg(tmp_path, f"ckpt_path={ckpt}", f"input_file={texts}", f"output_file={target}"))
    assert texts.read_text() == "a good film\n" and ckpt.read_bytes() == before


def test_an_empty_input_file_and_a_folder_for_a_checkpoint_are_one_line(tmp_path, ckpt):
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(DataError, match="holds no text: give one text a line"):
        predict(predict_cfg(tmp_path, f"ckpt_path={ckpt}", f"input_file={tmp_path}/empty.txt"))
    with pytest.raises(CheckpointError, match="is a folder; give a checkpoint file"):
        predict(predict_cfg(tmp_path, f"ckpt_path={tmp_path}", "text=a film"))
    with pytest.raises(ExportError, match="is a file; give the folder bigmodel export wrote"):
        predict(predict_cfg(tmp_path, f"model_path={ckpt}", "text=a film"))


@pytest.mark.slow
def test_eval_encodes_with_the_checkpoints_vocabulary(tmp_path, ckpt):
    import shutil

    data = shutil.copytree(ckpt.parents[2] / "data" / "sst2", tmp_path / "sst2")

    def test_acc() -> float:
        cfg = compose_cfg(
            "eval", [f"ckpt_path={ckpt}", f"+data.root={data}", "trainer.progress_bar=false"], tmp_path / "eval"
        )
        GlobalHydra.instance().clear()
        return evaluate(cfg)["test/acc"]

    before = test_acc()
    (data / "train.txt").write_text("1 zebra\n0 okapi\n", encoding="utf-8")  # a rebuilt vocabulary would be 4 words
    assert test_acc() == before > 0.5


def test_cli_train_then_predict(tmp_path):
    write_sentiment(tmp_path / "data" / "sst2")
    run_dir = tmp_path / "run"
    out = run_cli(
        "train",
        "model=transformer",
        "data=sst2",
        "trainer=debug",
        "model.hidden_size=16",
        "model.n_head=2",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        env={"OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    log = (run_dir / "train.log").read_text()
    assert "test/acc=" in log and "test/f1=" in log and "true\\pred" in log
    pred = run_cli(
        "predict",
        f"ckpt_path={run_dir}/checkpoints/best.pt",
        "text=a gripping , funny film",
        f"hydra.run.dir={tmp_path}/p",
        cwd=tmp_path,
        env={"OMP_NUM_THREADS": "1"},
    )
    assert pred.returncode == 0, pred.stderr[-3000:]
    label, probs, text = pred.stdout.strip().split("\n")[-1].split("\t")
    assert label in NAMES and probs.startswith("negative=") and text == "a gripping , funny film"
