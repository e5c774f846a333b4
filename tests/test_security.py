"""Loading a checkpoint never runs code: foreign pickles are refused with one line by every command,
and what bigmodel writes is plain enough to load with torch.load(weights_only=True)."""

import io
import pickle
import random
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from bigmodel import checkpoint
from bigmodel.config import Device, NonFinite, Precision, Profiler, Strategy
from bigmodel.train import evaluate, train
from conftest import REPO, compose_cfg, run_cli
from helpers import make_trainer
from test_text_data import write_sentiment

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
SMALL = [
    "model=lstm",
    "data=sst2",
    "debug=fast",
    "logger=none",
    "model.embed_dim=8",
    "model.hidden_size=8",
    "data.batch_size=8",
]


class Payload:
    """Unpickled with plain pickle, creates `marker`: what a hostile checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> Path:
    """best.pt of a tiny LSTM trained in-process on a small sentiment folder (about a second)."""
    root = tmp_path_factory.mktemp("security")
    write_sentiment(root / "data" / "sst2", n_train=32)
    (root / "run").mkdir()
    cfg = compose_cfg(
        "train",
        [
            f"paths.data_dir={root}/data",
            f"paths.log_dir={root}/logs",
            f"paths.cache_dir={root}/cache",
            *SMALL,
            "test=false",
        ],
        root / "run",
    )
    train(cfg)
    GlobalHydra.instance().clear()
    return root / "run" / "checkpoints" / "best.pt"


def hostile_files(real: Path, folder: Path, marker: Path) -> dict[str, Path]:
    """A real checkpoint with a payload inside (a torch.save zip), and a bare pickle of the payload."""
    ckpt = torch.load(real, weights_only=True)
    ckpt["callbacks"]["model_checkpoint"]["best"] = Payload(marker)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, folder / "payload.pt")
    with open(folder / "bare.pt", "wb") as f:
        pickle.dump(Payload(marker), f)
    return {"payload": folder / "payload.pt", "bare": folder / "bare.pt"}


def test_the_payload_runs_under_plain_pickle(tmp_path):
    """The control: both files do run code when unpickled the unsafe way."""
    files = hostile_files_without_training(tmp_path)
    with open(files["bare"], "rb") as f:
        pickle.load(f)
    assert (tmp_path / "MARKER").exists()
    (tmp_path / "MARKER").unlink()
    with zipfile.ZipFile(files["payload"]) as z:  # the pickle inside the torch.save zip
        unpickler = pickle.Unpickler(io.BytesIO(z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))))
    unpickler.persistent_load = lambda pid: None  # tensors: not needed here
    unpickler.load()
    assert (tmp_path / "MARKER").exists()


def hostile_files_without_training(tmp_path: Path) -> dict[str, Path]:
    real = tmp_path / "plain.pt"
    checkpoint.save_atomic({"format": checkpoint.FORMAT_VERSION, "callbacks": {"model_checkpoint": {}}}, real)
    return hostile_files(real, tmp_path / "hostile", tmp_path / "MARKER")


@pytest.mark.parametrize("kind", ["payload", "bare"])
def test_load_refuses_foreign_objects_without_running_them(tmp_path, kind):
    path = hostile_files_without_training(tmp_path)[kind]
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.load(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "is not a bigmodel checkpoint" in message
    assert re.search(r"not allowed \(\S*exec\)" if kind == "payload" else "bare pickle", message), message
    assert not (tmp_path / "MARKER").exists()


def assert_refused(out, path: Path, marker: Path) -> None:
    text = out.stdout + out.stderr
    assert out.returncode != 0, text[-2000:]
    lines = [ln for ln in text.splitlines() if "is not a bigmodel checkpoint" in ln]
    assert len(lines) == 1, text[-3000:]
    assert str(path) in lines[0] and re.search(r"not allowed|bare pickle", lines[0]), lines[0]
    assert "Traceback" not in text and "weights_only" not in text, text[-3000:]  # no torch advice to load it unsafely
    assert not marker.exists()


COMMANDS = {
    "eval": lambda ckpt: ["eval", f"ckpt_path={ckpt}"],
    "predict": lambda ckpt: ["predict", f"ckpt_path={ckpt}", "text=a good film"],
    "generate": lambda ckpt: ["generate", f"ckpt_path={ckpt}", "prompt=a", "max_new_tokens=2"],
    "train": lambda ckpt: ["train", *SMALL, f"ckpt_path={ckpt}"],
}


@pytest.mark.parametrize(
    "command,kind",
    [
        ("eval", "payload"),
        *[
            pytest.param(c, k, marks=pytest.mark.slow)
            for c in COMMANDS
            for k in ("payload", "bare")
            if (c, k) != ("eval", "payload")
        ],
    ],
)
def test_every_command_refuses_a_hostile_checkpoint(tmp_path, real, command, kind):
    path = hostile_files(real, tmp_path / "downloads", tmp_path / "MARKER")[kind]
    write_sentiment(tmp_path / "data" / "sst2", n_train=32)
    out = run_cli(*COMMANDS[command](path), f"hydra.run.dir={tmp_path}/out", cwd=tmp_path, env=ONE_THREAD)
    assert_refused(out, path, tmp_path / "MARKER")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["payload", "bare"])
def test_ckpt_path_auto_refuses_a_hostile_last_pt_under_the_log_dir(tmp_path, real, kind):
    hostile = hostile_files(real, tmp_path / "downloads", tmp_path / "MARKER")[kind]
    planted = tmp_path / "logs" / "lstm-sst2" / "runs" / "2020-01-01_00-00-00" / "checkpoints" / "last.pt"
    planted.parent.mkdir(parents=True)
    shutil.copy(hostile, planted)
    write_sentiment(tmp_path / "data" / "sst2", n_train=32)
    out = run_cli("train", *SMALL, "ckpt_path=auto", cwd=tmp_path, env=ONE_THREAD)
    assert_refused(out, planted, tmp_path / "MARKER")


def test_a_trained_checkpoint_is_plain(real):
    """Loads with weights_only=True and no allowed globals at all; configs hold enum names."""
    ckpt = torch.load(real, weights_only=True)
    checkpoint.check_plain(ckpt)
    assert ckpt["config"]["trainer"]["precision"] == "fp32" and ckpt["config"]["trainer"]["device"] == "auto"
    assert isinstance(ckpt["rng"]["python"], tuple) and ckpt["data"]["class_names"] == ["negative", "positive"]


def test_a_format_1_checkpoint_with_enum_members_still_loads(tmp_path, real):
    """Checkpoints written before configs were stored plain hold the trainer's enum members."""
    ckpt = torch.load(real, weights_only=True)
    ckpt["config"]["trainer"] |= {
        "device": Device.auto,
        "precision": Precision.fp32,
        "strategy": Strategy.auto,
        "on_nonfinite": NonFinite.stop,
        "profiler": Profiler.none,
    }
    torch.save(ckpt, tmp_path / "old.pt")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "old.pt", weights_only=True)  # what a plain weights_only load says
    loaded = checkpoint.load(tmp_path / "old.pt")
    assert loaded["config"]["trainer"]["precision"] == "fp32" and loaded["config"]["trainer"]["profiler"] == "none"
    (tmp_path / "eval").mkdir()
    cfg = compose_cfg("eval", [f"ckpt_path={tmp_path}/old.pt", "logger=none", "split=val"], tmp_path / "eval")
    assert 0 <= evaluate(cfg)["val/acc"] <= 1
    GlobalHydra.instance().clear()


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    random.seed(3)
    torch.manual_seed(3)
    checkpoint.save_atomic({"format": checkpoint.FORMAT_VERSION, "rng": checkpoint.rng_state()}, tmp_path / "r.pt")
    expected = ([random.random() for _ in range(3)], torch.rand(3))
    random.seed(99)
    torch.manual_seed(99)
    checkpoint.set_rng_state(checkpoint.load(tmp_path / "r.pt")["rng"])
    assert [random.random() for _ in range(3)] == expected[0] and torch.equal(torch.rand(3), expected[1])


class Remembers:
    def __init__(self, value) -> None:
        self.value = value

    def state_dict(self) -> dict:
        return {"value": self.value}


def test_checkpoint_state_is_made_plain_or_refused_before_writing(tmp_path):
    trainer = make_trainer(max_steps=1, callbacks={"r": Remembers(np.float64(0.5))})
    trainer.checkpoint_extras = {"config": {"trainer": {"precision": Precision.bf16}}, "data": {"p": Path("a")}}
    state = trainer.state_dict()
    assert state["callbacks"]["r"] == {"value": 0.5} and type(state["callbacks"]["r"]["value"]) is float
    assert state["config"]["trainer"]["precision"] == "bf16" and state["data"]["p"] == "a"
    trainer.callbacks["r"].value = object()
    with pytest.raises(checkpoint.CheckpointError, match=r"checkpoint.callbacks.r.value holds a builtins.object"):
        trainer.save_checkpoint(str(tmp_path / "last.pt"))
    assert not (tmp_path / "last.pt").exists()


def test_src_never_loads_with_weights_only_false():
    sources = {p: p.read_text(encoding="utf-8") for p in (REPO / "src").rglob("*.py")}
    assert len(sources) > 10
    assert not [p for p, text in sources.items() if re.search(r"weights_only\s*=\s*False", text)]
    calls = [(p, m.start()) for p, text in sources.items() for m in re.finditer(r"torch\.load\(", text)]
    assert calls  # checkpoint.load, the image cache
    for p, start in calls:
        call = sources[p][start : sources[p].index(")", start) + 1]
        assert "weights_only=True" in call, f"{p}: {call}"
