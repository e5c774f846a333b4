"""An exported model folder (written by `bigmodel export`), loaded and run without the training run.

A folder holds the model file (`model.onnx` or `model.pt2`) and `bigmodel.json`, which says how to
feed it. The API, for commands that serve, quantize or evaluate an exported model:

    exported = load_exported("logs/.../export/onnx")   # ExportError (one line) if it is not one
    exported.task           # "image_classification" | "text_classification" | "language_model"
    exported.input_names    # ["images"] | ["tokens", "lengths"] | ["tokens"]
    exported.class_names    # classifiers: label names, in logit order
    exported.spec           # all of bigmodel.json, below
    logits = exported(*inputs)           # numpy arrays or torch tensors in, float32 torch logits out
    tokens, lengths = exported.encode(["a fine film", ...])   # text classifiers: padded int64 ids
    images = exported.normalize(uint8_images)                 # image classifiers: (B, H, W, C) uint8 -> float

Inputs: images float32 (B, C, H, W), normalized ((pixel / 255 - mean) / std, see spec["data"]);
tokens int64 (B, T) padded with the vocabulary's pad id and lengths int64 (B,) for text classifiers
(logits (B, classes)); tokens int64 (B, T <= block_size) for a GPT (logits (B, T, vocab)). The batch
size and the sequence length are free.

bigmodel.json: version, format ("onnx" | "pt2"), model_file, task, model_class, inputs and outputs
([{name, dtype, axes}]), class_names, data (the checkpoint's data state: image_size / mean / std, or
the vocabulary with its tokenizer settings, or the GPT's tokenizer), max_length (Transformer) or
block_size (GPT), model_args, config (the training run's resolved config), source (checkpoint path,
step, best validation metric) and check (the export's comparison with the checkpoint). A folder
derived from an export (an int8 model, say) may name another model_file and add keys of its own.
"""

import json
import pickle
import re
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from bigmodel.checkpoint import CheckpointError

SPEC_FILE = "bigmodel.json"
SPEC_VERSION = 1
FORMATS = {"onnx": "model.onnx", "pt2": "model.pt2"}
INPUTS = {  # task -> [(input name, dtype, axes)]
    "image_classification": [("images", "float32", ["batch", "channels", "height", "width"])],
    "text_classification": [("tokens", "int64", ["batch", "seq"]), ("lengths", "int64", ["batch"])],
    "language_model": [("tokens", "int64", ["batch", "seq"])],
}


class ExportError(CheckpointError):
    """An exported folder or an export that cannot be used; printed as one line by the CLI."""


def task_of(data: dict[str, Any]) -> str:
    """The task a checkpoint's saved data state implies."""
    if "tokenizer" in data:
        return "language_model"
    if "vocab" in data:
        return "text_classification"
    if "mean" in data and "class_names" in data:
        return "image_classification"
    raise ExportError(
        "the checkpoint's data state names no vocabulary, tokenizer or image statistics: "
        "cannot tell how to feed the model"
    )


def describe(
    fmt: str,
    data: dict[str, Any],
    config: dict[str, Any],
    model: torch.nn.Module,
    model_args: dict[str, Any],
    source: dict[str, Any],
) -> dict[str, Any]:
    """The contents of bigmodel.json for a model exported as `fmt` from a checkpoint whose data state
    is `data`, training config `config`, constructor arguments `model_args`, and `source`."""
    task = task_of(data)
    spec = {
        "version": SPEC_VERSION,
        "format": fmt,
        "model_file": FORMATS[fmt],
        "task": task,
        "model_class": type(model).__name__,
        "inputs": [{"name": n, "dtype": d, "axes": a} for n, d, a in INPUTS[task]],
        "outputs": [
            {
                "name": "logits",
                "dtype": "float32",
                "axes": ["batch", "seq", "vocab"] if task == "language_model" else ["batch", "classes"],
            }
        ],
        "class_names": list(data.get("class_names", [])),
        "data": data,
        "model_args": model_args,
        "config": config,
        "source": source,
    }
    if task == "text_classification":
        spec["max_length"] = getattr(model, "max_length", None)  # tokens a text is cut to (Transformer)
    if task == "language_model":
        spec["block_size"] = int(cast(int, model.block_size))  # longest input the positions cover
    return spec


class Exported:
    """A loaded exported model: call it with the inputs its spec names; see the top of this file."""

    def __init__(self, path: Path, spec: dict[str, Any], run: Any) -> None:
        self.path, self.spec, self._run = path, spec, run
        self.task: str = spec["task"]
        self.format: str = spec["format"]
        self.input_names = [i["name"] for i in spec["inputs"]]
        self.class_names: list[str] = list(spec.get("class_names") or [])
        self.max_length: int | None = spec.get("max_length")
        self._vocab = None

    def __call__(self, *inputs: Any) -> torch.Tensor:
        if len(inputs) != len(self.input_names):
            raise TypeError(
                f"expected {len(self.input_names)} inputs ({', '.join(self.input_names)}), got {len(inputs)}"
            )
        if self.max_length and inputs[0].shape[1] > self.max_length:  # cut as the eager Transformer does
            inputs = (inputs[0][:, : self.max_length], inputs[1].clip(max=self.max_length))
        return self._run(inputs)

    # torch.nn.Module-like no-ops, so code written for a model (predict.classify) takes an Exported
    def to(self, device: Any) -> "Exported":
        return self

    def eval(self) -> "Exported":
        return self

    @property
    def vocab(self):
        from bigmodel.data.vocab import Vocab

        if self._vocab is None:
            self._vocab = Vocab.from_state(self.spec["data"]["vocab"])
        return self._vocab

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Text classifiers: (tokens (B, T), lengths (B,)) of `texts`, encoded as in training."""
        from bigmodel.data.text import pad_batch

        (tokens, lengths), _ = pad_batch(
            [(torch.tensor(self.vocab.encode(t), dtype=torch.long), 0) for t in texts], self.vocab.pad_idx
        )
        return tokens, lengths

    def normalize(self, images: Any) -> torch.Tensor:
        """Image classifiers: uint8 (B, H, W, C) -> the model's float input (B, C, H, W)."""
        x = torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).float() / 255
        mean, std = (torch.tensor(self.spec["data"][k]).view(1, -1, 1, 1) for k in ("mean", "std"))
        return (x - mean) / std


def _onnx_runner(file: Path, inputs: list[dict], threads: int | None) -> "_OnnxRun":
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001  onnxruntime raises its own types for a file that is not a model
        raise ExportError(f"{file}: not a loadable ONNX model ({str(e).splitlines()[0][:200]})") from None
    return _OnnxRun(session, inputs)


class _OnnxRun:
    """Runs an onnxruntime `session` on values fed as the spec's `inputs` (names and dtypes)."""

    def __init__(self, session: Any, inputs: list[dict]) -> None:
        self.session, self.inputs = session, inputs

    def __call__(self, values: Any) -> torch.Tensor:
        feed = {
            i["name"]: np.ascontiguousarray(x.detach().cpu().numpy() if torch.is_tensor(x) else x, dtype=i["dtype"])
            for i, x in zip(self.inputs, values)
        }
        return torch.from_numpy(self.session.run(None, feed)[0])


# What a .pt2 archive written by `bigmodel export` holds (under its one top folder). torch.export.load
# would also unpickle (weights marked use_pickle, custom and opaque objects, legacy weight files, sample
# inputs that weights_only refuses) and load compiled libraries (AOTInductor): a file with any of those
# is refused before torch reads it, since unpickling or loading them can run code.
PT2_MEMBERS = re.compile(
    r"[^/]+/(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id|models/[^/]+\.json"
    r"|data/weights/(weight_\d+|[^/]+_weights_config\.json)|data/constants/(tensor_\d+|[^/]+_constants_config\.json)"
    r"|data/sample_inputs/[^/]+\.pt|extra/[^/]+)"
)


def check_pt2(file: Path) -> None:
    """Refuse (one line) a .pt2 archive that loading could run code from: anything but plain tensors,
    the program's JSON and sample inputs that load with weights_only."""
    import io
    import zipfile

    try:
        with zipfile.ZipFile(file) as archive:
            for name in archive.namelist():
                if not PT2_MEMBERS.fullmatch(name):
                    raise ExportError(
                        f"{file}: holds {name!r}, which is not part of a plain exported program; not loaded"
                    )
                if name.endswith("_config.json"):
                    entries = (json.loads(archive.read(name)).get("config") or {}).values()
                    if any(not isinstance(e, dict) or e.get("use_pickle") for e in entries):
                        raise ExportError(f"{file}: {name} stores pickled objects, which loading would run; not loaded")
                if name.endswith(".pt"):
                    stored = io.BytesIO(archive.read(name))
                    torch.load(stored, weights_only=True)  # raises for anything but tensors and containers
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError, AttributeError, pickle.UnpicklingError) as e:
        why = (str(e).splitlines() or [""])[0][:200]
        raise ExportError(f"{file}: not a plain .pt2 program ({type(e).__name__}: {why}); not loaded") from None


def _pt2_runner(file: Path) -> "_Pt2Run":
    import bigmodel.models.rnn  # noqa: F401  (a .pt2 of an LSTM calls torch.ops.bigmodel.packed_lstm)

    check_pt2(file)
    try:
        module = torch.export.load(str(file)).module()
    except Exception as e:  # noqa: BLE001  a truncated or foreign file: torch raises zip, pickle or runtime errors
        raise ExportError(f"{file}: not a loadable .pt2 program ({str(e).splitlines()[0][:200]})") from None
    return _Pt2Run(module)


class _Pt2Run:
    """Runs the module of a loaded .pt2 program, without autograd."""

    def __init__(self, module: Any) -> None:
        self.module = module

    @torch.no_grad()
    def __call__(self, inputs: Any) -> torch.Tensor:
        return self.module(*(torch.as_tensor(np.asarray(x)) if not torch.is_tensor(x) else x for x in inputs)).float()


def read_spec(path: str | Path) -> dict[str, Any]:
    """bigmodel.json of an exported folder, checked for the keys the loader needs."""
    folder = Path(path).expanduser()
    if folder.is_file():
        raise ExportError(
            f"model_path={str(path)!r} is a file; give the folder bigmodel export wrote "
            "(a checkpoint goes to ckpt_path=)"
        )
    if not folder.is_dir():
        raise ExportError(f"model_path={str(path)!r}: no such folder (give a folder written by bigmodel export)")
    file = folder / SPEC_FILE
    if not file.is_file():
        raise ExportError(f"model_path={str(path)!r} has no {SPEC_FILE}: not a folder written by bigmodel export")
    try:
        spec = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{file}: not valid JSON ({e})") from None
    missing = [k for k in ("format", "model_file", "task", "inputs") if not isinstance(spec, dict) or k not in spec]
    if missing:
        raise ExportError(f"{file}: missing key(s) {missing}; re-export with bigmodel export")
    if not isinstance(spec["format"], str) or spec["format"] not in FORMATS:
        raise ExportError(f"{file}: format={spec['format']!r} is not one of {sorted(FORMATS)}")
    if not isinstance(spec["task"], str) or spec["task"] not in INPUTS:
        raise ExportError(f"{file}: task={spec['task']!r} is not one of {sorted(INPUTS)}")
    name = spec["model_file"]
    if not isinstance(name, str) or not name or Path(name).name != name or name.startswith("."):
        raise ExportError(f"{file}: model_file={name!r} is not a file name in this folder (e.g. model.onnx)")
    inputs = spec["inputs"]
    if not isinstance(inputs, list) or not all(isinstance(i, dict) and {"name", "dtype"} <= i.keys() for i in inputs):
        raise ExportError(f"{file}: inputs={inputs!r} is not a list of {{name, dtype, axes}}; re-export")
    for key in ("data", "config", "model_args"):
        if key in spec and not isinstance(spec[key], dict):
            raise ExportError(f"{file}: {key} is a {type(spec[key]).__name__}, not an object; re-export")
    return spec


def check_output_folder(out: Path, overwrite: bool) -> None:
    """Where an export (or an int8 model) is about to be written: a new or empty folder, or, with
    `overwrite`, a folder holding an earlier export, which is replaced. A folder holding anything else
    is never replaced (overwrite would delete it whole), and a file is not a folder."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"output_dir={str(out)!r} is a file; give a folder to write the model into")
    if not out.exists() or not any(out.iterdir()):
        return
    if not (out / SPEC_FILE).is_file():
        raise ExportError(
            f"output_dir={str(out)!r} holds files but no export ({SPEC_FILE}); it is not replaced, even "
            "with overwrite=true: give a new or empty folder"
        )
    if not overwrite:
        raise ExportError(f"{out} already holds an export; give another output_dir= or overwrite=true")


def load_exported(path: str | Path, threads: int | None = None) -> Exported:
    """The exported model in folder `path`, ready to call (on the CPU). `threads`: onnxruntime's
    intra-op threads (default: its own choice)."""
    spec = read_spec(path)
    file = Path(path).expanduser() / spec["model_file"]
    if not file.is_file():
        raise ExportError(f"model_path={str(path)!r}: its model file {spec['model_file']} is missing")
    run = _onnx_runner(file, spec["inputs"], threads) if spec["format"] == "onnx" else _pt2_runner(file)
    return Exported(Path(path).expanduser(), spec, run)
