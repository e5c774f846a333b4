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


def touch(path: str) -> None:
    """What a crafted config would call: creates `path`."""
    Path(path).touch()


def crafted(real: Path, folder: Path, edit) -> Path:
    """A copy of a real checkpoint with `edit(ckpt)` applied."""
    ckpt = torch.load(real, weights_only=True)
    edit(ckpt)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, folder / "crafted.pt")
    return folder / "crafted.pt"


def test_the_crafted_target_runs_when_instantiated(tmp_path):
    """The control: Hydra's instantiate does call what a `_target_` names."""
    from hydra.utils import instantiate

    instantiate({"_target_": "test_security.touch", "path": str(tmp_path / "MARKER")})
    assert (tmp_path / "MARKER").exists()


CRAFTED_CONFIGS = {  # how a checkpoint's saved config could make restore_model run code, and the refusal
    "model target": (lambda c, m: c["config"]["model"].update(_target_="test_security.touch", path=m), "is not one of"),
    "nested target": (
        lambda c, m: c["config"]["model"].update(vectors={"_target_": "test_security.touch", "path": m}),
        "config.model.vectors._target_='test_security.touch'",
    ),
    "target in model_args": (
        lambda c, m: c["model_args"].update(_target_="test_security.touch", path=m),
        "is not one of",
    ),
    "hydra key": (lambda c, m: c["config"]["model"].update(_args_=[m]), "no Hydra key like _args_"),
    "interpolation": (lambda c, m: c["config"]["model"].update(embed_dim="${oc.env:HOME}"), "is an interpolation"),
}


@pytest.mark.parametrize("case", CRAFTED_CONFIGS)
def test_a_saved_config_builds_only_bigmodel_models_data_and_losses(tmp_path, real, case):
    from bigmodel.restore import restore_model

    marker = str(tmp_path / "MARKER")
    edit, words = CRAFTED_CONFIGS[case]
    path = crafted(real, tmp_path, lambda c: edit(c, marker))
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(words)) as err:
        restore_model(str(path))
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    assert not Path(marker).exists()


@pytest.mark.slow
@pytest.mark.parametrize("section", ["data", "loss"])
def test_eval_refuses_a_crafted_data_or_loss_config(tmp_path, real, section):
    marker = tmp_path / "MARKER"
    payload = {"_target_": "test_security.touch", "path": str(marker)}
    path = crafted(real, tmp_path / section, lambda c: c["config"][section].update(payload))
    out = run_cli("eval", f"ckpt_path={path}", cwd=tmp_path, env=ONE_THREAD)
    text = out.stdout + out.stderr
    assert out.returncode != 0 and "Traceback" not in text, text[-2000:]
    assert f"config.{section}._target_='test_security.touch' is not one of" in text
    assert not marker.exists()


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda c: c.pop("model"), "no weights"),
        (lambda c: c.update(model=[1, 2]), "its 'model' is a list, not a dict"),
        (lambda c: c["model"].update({"extra": [1.0]}), "'extra', which is not a named tensor"),
        (lambda c: c.update(model_args=[1]), "its 'model_args' is a list"),
        (lambda c: c.update(data="vocab"), "its 'data' is a str"),
        (lambda c: c["model_args"].update(bogus=3), "unexpected keyword argument 'bogus'"),
    ],
)
def test_a_damaged_checkpoint_layout_is_one_line(tmp_path, real, edit, words):
    from bigmodel.restore import restore_model

    path = crafted(real, tmp_path, edit)
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(words)) as err:
        restore_model(str(path))
    assert "\n" not in str(err.value)


def plain_pt2(path: Path) -> Path:
    """A genuine .pt2 archive of a tiny program (what bigmodel export writes, in small)."""
    program = torch.export.export(torch.nn.Linear(3, 2).eval(), (torch.randn(1, 3),))
    torch.export.save(program, str(path))
    return path


def rewritten(src: Path, dst: Path, change) -> Path:
    """A copy of the archive `src` with change(name, data) -> data (or None to drop) per member, plus any
    members change.extra holds."""
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(dst, "w") as b:
        root = a.namelist()[0].split("/")[0]
        for info in a.infolist():
            data = change(info.filename, a.read(info.filename))
            if data is not None:
                b.writestr(info, data)
        for name, data in getattr(change, "extra", {}).items():
            b.writestr(f"{root}/{name}", data)
    return dst


def test_a_pt2_archive_that_would_unpickle_or_load_code_is_refused(tmp_path):
    import json

    from bigmodel.exported import ExportError, check_pt2

    good = plain_pt2(tmp_path / "good.pt2")
    check_pt2(good)  # a plain program passes
    marker = tmp_path / "MARKER"
    payload = io.BytesIO()
    torch.save(Payload(marker), payload)

    def pickled_weight(name, data):
        if name.endswith("_weights_config.json"):
            config = json.loads(data)
            next(iter(config["config"].values())).update(use_pickle=True)
            return json.dumps(config).encode()
        return data

    def evil_inputs(name, data):
        return payload.getvalue() if "sample_inputs" in name else data

    def compiled(name, data):
        return data

    compiled.extra = {"data/aotinductor/model/model.so": b"\x7fELF"}  # type: ignore[attr-defined]
    cases = {"pickled weight": pickled_weight, "sample inputs": evil_inputs, "compiled library": compiled}
    for case, change in cases.items():
        bad = rewritten(good, tmp_path / f"{case}.pt2", change)
        with pytest.raises(ExportError) as err:
            check_pt2(bad)
        assert "\n" not in str(err.value) and str(bad) in str(err.value), case
    assert not marker.exists()
    torch.load(io.BytesIO(payload.getvalue()), weights_only=False)  # the control: this payload does run
    assert marker.exists()


def test_an_exported_folder_names_its_model_file_inside_itself(tmp_path):
    import json

    from bigmodel.exported import ExportError, read_spec

    for name in ("/etc/passwd", "../model.onnx", "sub/model.onnx", ".."):
        (tmp_path / "bigmodel.json").write_text(
            json.dumps({"format": "onnx", "model_file": name, "task": "image_classification", "inputs": []})
        )
        with pytest.raises(ExportError, match="is not a file name in this folder"):
            read_spec(tmp_path)
