"""What TensorBoard shows, read back from the event files: tags, figure sizes, HParams columns and
metric declarations for a text classifier, the GPT and a 2-job CNN sweep; and the pieces behind them."""

import io
import logging
import random
from pathlib import Path

import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
from tqdm import tqdm

from bigmodel import hparams
from bigmodel.config import Device
from bigmodel.console import TqdmHandler
from bigmodel.figures import confusion_figure
from bigmodel.loggers import LoggerGroup
from bigmodel.runs import find_runs
from conftest import run_cli, write_fake_cifar10

ONE_THREAD = {"OMP_NUM_THREADS": "1"}
CLASSIFIER = {f"{s}/{m}" for s in ("val", "test") for m in ("loss", "acc", "precision", "recall", "f1")}
LANGUAGE_MODEL = {f"{s}/{m}" for s in ("val", "test") for m in ("loss", "ppl", "acc")}
WORDS = {"good": ["great", "superb", "lovely", "fine", "moving"], "bad": ["awful", "dull", "poor", "weak", "flat"]}


def events(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    acc.Reload()
    return acc


def text_of(acc: EventAccumulator, tag: str) -> str:
    return acc.Tensors(tag)[-1].tensor_proto.string_val[0].decode()


def hparams_of(acc: EventAccumulator) -> tuple[api_pb2.Experiment, dict]:
    """The run's declared experiment (columns, metrics) and its hyperparameter values."""
    content = acc.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    return experiment, dict(start.session_start_info.hparams)


def write_reviews(path: Path, n: int = 120) -> Path:
    rng = random.Random(0)
    rows = ["text,label"]
    for i in range(n):
        label = "good" if i % 2 else "bad"
        words = rng.sample(WORDS[label], 2) + rng.sample(WORDS["good" if label == "bad" else "bad"], 1)
        rows.append(f"the film was {' '.join(words)},{label}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")
    return path


def check_no_clutter(acc: EventAccumulator, run_dir: Path) -> None:
    assert not [t for t in acc.Tags()["scalars"] if t.startswith("hparam/")]  # no single-point copies
    assert not (run_dir / "tensorboard").exists()  # TensorBoard names the run after this folder


@pytest.mark.slow
def test_text_classifier_dashboard(tmp_path):
    csv_path = write_reviews(tmp_path / "reviews.csv")
    run_dir = tmp_path / "logs" / "mine" / "runs" / "r1"
    out = run_cli(
        "train",
        "model=lstm",
        "model.embed_dim=16",
        "model.hidden_size=16",
        "data=text_csv",
        f"data.train_file={csv_path}",
        "data.min_freq=1",
        "data.val_fraction=0.3",
        "data.batch_size=16",
        "trainer=debug",
        "trainer.limit_val_batches=-1",
        "name=mine",
        "optimizer.lr=3e-3",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        env=ONE_THREAD,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    acc = events(run_dir)  # the event files lie in the run folder itself
    check_no_clutter(acc, run_dir)
    assert {"train/loss", "val/acc", "val/f1", "test/acc"} <= set(acc.Tags()["scalars"])
    image = acc.Images("val/confusion_matrix")[-1]
    assert image.width >= 300 and image.height >= 300  # a figure, readable at 2 classes
    assert {"val/per_class", "val/misclassified", "val/pr_curve/bad", "val/pr_curve/good"} <= set(acc.Tags()["tensors"])
    table = text_of(acc, "val/per_class")
    assert "precision" in table and "bad" in table and "good" in table and "macro" in table
    wrong = text_of(acc, "val/misclassified")
    assert "validation examples are misclassified" in wrong
    examples = wrong.splitlines()[2::2]
    assert 1 <= len(examples) <= 8
    for line in examples:  # each example: "n. true X, predicted Y (confidence c)" then its text
        assert "true" in line and "predicted" in line
        assert line.split("true ")[1].split(",")[0] != line.split("predicted ")[1].split(" ")[0]

    assert "word_vectors" in (run_dir / "projector_config.pbtxt").read_text()  # the Projector tab
    (labels,) = run_dir.glob("*/word_vectors/metadata.tsv")
    words = labels.read_text().splitlines()
    assert words[:2] == ["<pad>", "<unk>"] and {"great", "awful", "film"} <= set(words)

    experiment, values = hparams_of(acc)
    assert {m.name.tag for m in experiment.metric_infos} == CLASSIFIER  # tags logged anyway, declared once
    infos = {h.name: h for h in experiment.hparam_infos}
    shown = {h.name for h in experiment.hparam_infos if h.differs}
    # the first 5 overrides that are columns (data.train_file is a path; trainer=debug is no column)
    assert shown == {"model", "model.embed_dim", "model.hidden_size", "data", "data.min_freq"}
    assert infos["data.lowercase"].type == api_pb2.DATA_TYPE_BOOL and values["data.lowercase"].bool_value is True
    assert values["trainer.device"].string_value == "auto"  # an enum by its value, not "Device.auto"
    assert values["model.num_params"].number_value > 1000 and values["model"].string_value == "lstm"
    assert not [k for k in infos if "cache" in k or k.endswith(("_file", "_dir"))]  # no paths


@pytest.mark.slow
def test_gpt_dashboard(tmp_path):
    (tmp_path / "data" / "text").mkdir(parents=True)
    (tmp_path / "data" / "text" / "play.txt").write_text("ROMEO:\nBut soft, what light through yonder window?\n" * 40)
    run_dir = tmp_path / "run"
    out = run_cli(
        "train",
        "model=gpt",
        "data=text_lm",
        "trainer=debug",
        "model.n_layer=1",
        "model.n_head=2",
        "model.n_embd=16",
        "model.block_size=16",
        "data.batch_size=8",
        "callbacks.text_sample.max_new_tokens=20",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        env=ONE_THREAD,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    acc = events(run_dir)
    check_no_clutter(acc, run_dir)
    sample = text_of(acc, "val/sample")  # the tag the README names (not val/sample/text_summary)
    header, body = sample.split("\n    \n", 1)  # shown preformatted: every line indented 4 spaces
    assert header.strip() == "sample at step 2 · prompt '\\n' · temperature 0.8 · top_k 200"
    assert body.strip() and not body.startswith("    \n")  # no blank first line from the "\n" prompt
    assert not [t for t in acc.Tags()["images"] if "confusion" in t] and "val/predictions" not in acc.Tags()["images"]
    experiment, values = hparams_of(acc)
    assert {m.name.tag for m in experiment.metric_infos} == LANGUAGE_MODEL
    assert values["model"].string_value == "gpt" and values["model.n_layer"].number_value == 1


@pytest.mark.slow
def test_two_job_sweep_dashboard(tmp_path):
    write_fake_cifar10(tmp_path / "data" / "cifar10")
    tiny = [
        "model.stem_width=4",
        "model.widths=[8]",
        "data.download=false",
        "data.val_size=20",
        "data.batch_size=16",
        "debug=fast",
    ]
    out = run_cli("train", "-m", *tiny, "optimizer.lr=1e-3,3e-3", cwd=tmp_path, env=ONE_THREAD)
    assert out.returncode == 0, out.stderr[-3000:]
    (sweep,) = (tmp_path / "logs").glob("cnn-cifar10/multirun/*")
    trials = {p.parent.name: p for p in sweep.glob("*/*/events.out.tfevents.*")}
    names = sorted(f"{p.parent.parent.name}/{p.parent.name}" for p in trials.values())
    assert names == ["0/optimizer.lr=0.001", "1/optimizer.lr=0.003"]  # TensorBoard's run names: what varies
    declared = []
    for trial in trials.values():
        acc = events(trial.parent)
        check_no_clutter(acc, trial.parent.parent)
        assert acc.Images("val/confusion_matrix")[-1].width >= 600  # 10 classes
        grid = acc.Images("val/predictions")[-1]
        assert grid.width > grid.height > 100  # 16 images in 2 rows of 8
        assert len([t for t in acc.Tags()["tensors"] if t.startswith("val/pr_curve/")]) == 10
        experiment, _ = hparams_of(acc)
        declared.append({m.name.tag for m in experiment.metric_infos})
        shown = {h.name for h in experiment.hparam_infos if h.differs}
        assert shown == {"optimizer.lr", "data.batch_size", "model.num_params", "model", "data"}  # varied first
        assert "debug" not in {h.name for h in experiment.hparam_infos}
    assert declared == [CLASSIFIER, CLASSIFIER]  # every run of the task declares the same metrics
    assert [p.name for p in find_runs(tmp_path / "logs", None)] == ["0", "1"]  # `bigmodel runs` finds both jobs


def test_confusion_figure_reads_at_2_and_10_classes():
    small = confusion_figure(torch.tensor([[5, 1], [2, 7]]), ["neg", "pos"])
    big = confusion_figure(torch.randint(0, 50, (10, 10)), [f"class {i}" for i in range(10)])
    assert small.shape[0] == 3 and 300 <= min(small.shape[1:]) and max(small.shape[1:]) <= 700
    assert big.shape[1] > small.shape[1] and big.shape[2] > small.shape[2]
    assert 0.0 <= small.min() and small.max() <= 1.0 and small.std() > 0.05  # drawn, not blank


def test_log_lines_go_above_the_progress_bar():
    buf = io.StringIO()
    bar = tqdm(total=10, file=buf, desc="epoch 0", mininterval=0)
    bar.update(3)
    log = logging.getLogger("test_dashboards")
    handler = TqdmHandler(stream=buf)
    log.addHandler(handler)
    try:
        log.warning("validation done")
    finally:
        log.removeHandler(handler)
    out = buf.getvalue()
    before = out[: out.index("validation done")]
    assert before.endswith(("\r", "\n"))  # the bar's line was cleared first
    assert "epoch 0" in out[out.index("validation done") :]  # and the bar drawn again below the line
    bar.close()


def test_logger_group_has_no_catch_all():
    calls = []

    class One:
        def log_text(self, tag, text, step):
            calls.append((tag, text, step))

    group = LoggerGroup([One()])
    group.log_text("val/x", "hi", 3)
    assert calls == [("val/x", "hi", 3)]
    with pytest.raises(AttributeError):
        group.log_txet("val/x", "hi", 3)  # a misspelt call fails, also on ranks without loggers
    with pytest.raises(AttributeError):
        LoggerGroup([]).log_txet("val/x", "hi", 3)


def test_columns_values_and_paths(monkeypatch):
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # outside Hydra: no overrides, no choices
    assert hparams.column_value(True) is True and hparams.column_value(128) == 128.0
    assert hparams.column_value(Device.cpu) == "cpu" and hparams.column_value([8, 16]) == "[8, 16]"
    resolved = {
        "name": "x",
        "seed": 3,
        "data": {
            "cache_dir": "/c",
            "root": "/r",
            "batch_size": 8,
            "fallback": "/f",
            "train_file": "a.csv",
            "lowercase": False,
        },
        "optimizer": {"lr": 0.1},
        "paths": {"log_dir": "logs"},
    }
    columns, shown = hparams.run_columns(resolved, torch.nn.Linear(3, 2))
    assert columns["model.num_params"] == 8.0 and columns["data.lowercase"] is False and columns["seed"] == 3.0
    assert not {"data.cache_dir", "data.root", "data.fallback", "data.train_file", "paths.log_dir"} & set(columns)
    assert shown == ["optimizer.lr", "data.batch_size", "model.num_params"]
