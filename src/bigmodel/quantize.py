"""`bigmodel quantize ckpt_path=...|model_path=... method=auto|dynamic|static [calib_batches=N]`: an int8
copy of a model as an exported folder (model.onnx + bigmodel.json), measured against fp32.

The int8 arithmetic is onnxruntime's (`onnxruntime.quantization`), chosen by measurement per family
(docs/BENCHMARKS.md): `dynamic` (int8 weights, activations quantized at run time) for the LSTM, the
Transformer classifier and the GPT; `static` (int8 weights and activations, activation ranges
calibrated on `calib_batches` training batches) for the CNN. A checkpoint is first exported as fp32
ONNX (bigmodel.export); an ONNX folder from `bigmodel export` is taken as it is.

The result is checked and measured before it is called done: file size, the test accuracy (the GPT:
validation loss) of fp32 and int8 on the same split, and latency per batch at batch 1 and 64 for the
eager checkpoint, the fp32 export and the int8 model, timed interleaved. It is printed and written
to quantize_report.json / .md in the output folder, which `bigmodel eval|predict model_path=` read.
"""

import json
import logging
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
from omegaconf import DictConfig, OmegaConf

from bigmodel.config import ConfigError, check_keys
from bigmodel.data.errors import DataError
from bigmodel.export import evaluate_exported, export_model
from bigmodel.exported import SPEC_FILE, check_output_folder, load_exported, read_spec
from bigmodel.ranges import PositiveInt, Range
from bigmodel.restore import Restored, restore_datamodule, restore_model
from bigmodel.runtime import as_args

log = logging.getLogger("bigmodel")

METHODS = {  # task -> the methods onnxruntime supports for it, the first is `auto`'s choice
    "image_classification": ("static",),  # Conv needs calibrated activations to run as int8 (QLinearConv)
    "text_classification": ("dynamic",),  # the LSTM op has only a dynamic int8 kernel; lengths vary
    "language_model": ("dynamic",),
}
EVAL_SPLIT = {
    "image_classification": ("test", "acc"),
    "text_classification": ("test", "acc"),
    "language_model": ("val", "loss"),
}  # the GPT presets have no test split


def choose_method(task: str, method: str) -> str:
    if method == "auto":
        return METHODS[task][0]
    if method not in METHODS[task]:
        raise ConfigError(
            f"method={method} is not available for a {task.replace('_', ' ')} model; use method={METHODS[task][0]}"
        )
    return method


def saved_data(spec: dict[str, Any], overrides: Any) -> Any:
    """The data module of an exported folder's run (its saved config and vocabulary), set up."""
    restored = Restored(
        model=torch.nn.Identity(),
        config=OmegaConf.create(spec["config"]),
        model_args={},
        data=dict(spec["data"]),
        progress={},
        path="",
    )
    return restore_datamodule(restored, overrides)


class Calibration:
    """onnxruntime's CalibrationDataReader over the first n training batches (inputs only)."""

    def __init__(self, batches: Any, names: list[str], n: int) -> None:
        self.names, self.n, self.batches = names, n, iter(batches)
        self.seen = 0

    def get_next(self) -> dict[str, Any] | None:
        if self.seen >= self.n:
            return None
        inputs = next(self.batches, None)
        if inputs is None:
            return None
        self.seen += 1
        return {name: x.numpy() for name, x in zip(self.names, as_args(inputs[0]))}

    def rewind(self) -> None:  # part of the reader protocol; one pass is all MinMax calibration needs
        pass


def quantize_onnx(src: Path, dst: Path, method: str, calibration: Calibration | None) -> None:
    """Write the int8 version of the ONNX model `src` to `dst` (onnxruntime's quantizer)."""
    from onnxruntime.quantization import (
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # onnxruntime's pre-pass folds constants: the exporter leaves the LSTM's weights as Gather/Concat of
    # the PyTorch tensors, and the quantizer only takes weights that are plain initializers
    pre = dst.with_name("fp32-folded.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    try:
        if method == "dynamic":  # every MatMul / Gemm / LSTM / Gather (embedding) gets int8 weights
            quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8)
            return
        quantize_static(
            str(pre),
            str(dst),
            calibration,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    finally:
        pre.unlink(missing_ok=True)
    drop_trace_notes(dst)
    if calibration is None or calibration.seen == 0:
        raise DataError("the training split gave no batch to calibrate on; check the data (data.root=...)")
    if calibration.seen < calibration.n:
        log.warning(f"calibrated on all {calibration.seen} training batches (calib_batches={calibration.n} asked)")


def drop_trace_notes(file: Path) -> None:
    """Remove the exporter's per-node notes (PyTorch stack traces, FX names) from a model to ship:
    they run nothing and are ~10% of a small CNN's int8 file."""
    import onnx

    model = onnx.load(str(file))
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    onnx.save(model, str(file))


def fp32_source(cfg: DictConfig, work: Path) -> tuple[Path, str | None]:
    """The fp32 ONNX folder to quantize and the checkpoint it came from (None if it is gone)."""
    ckpt, folder = cfg.get("ckpt_path"), cfg.get("model_path")
    if (ckpt is None) == (folder is None):
        raise ConfigError(
            "give exactly one of ckpt_path=<best.pt> and model_path=<a folder from bigmodel export "
            f"format=onnx> (got {'both' if ckpt else 'neither'})"
        )
    if ckpt is not None:
        return export_model(str(ckpt), "onnx", work / "fp32", data=cfg.get("data")), str(ckpt)
    spec = read_spec(folder)
    if spec["format"] != "onnx":
        raise ConfigError(
            f"model_path={folder}: quantize needs an ONNX export (format={spec['format']}); "
            "run bigmodel export format=onnx, or give ckpt_path="
        )
    if spec.get("quantization"):
        raise ConfigError(
            f"model_path={folder} is already int8 ({spec['quantization']['method']}); "
            "give the fp32 export or the checkpoint"
        )
    source = (spec.get("source") or {}).get("checkpoint")
    return Path(folder).expanduser(), source if source and Path(source).is_file() else None


def bench_inputs(datamodule: Any, split: str, n: int = 64, seed: int = 0) -> tuple[tuple, tuple]:
    """n examples drawn at random from `split` as one batch (loaders may order a split by length), and
    the first of them as a batch of 1 (cut to its length). Text is re-padded to the longest drawn."""
    parts = [as_args(inputs) for inputs, _ in datamodule.loader(split)]
    width = max(p[0].shape[1] for p in parts) if parts[0][0].dim() == 2 else None
    if width is not None and len(parts[0]) == 2:  # tokens, lengths: what lies past a length is masked out
        parts = [(torch.nn.functional.pad(p[0], (0, width - p[0].shape[1])), p[1]) for p in parts]
    inputs = tuple(torch.cat(xs) for xs in zip(*parts))
    pick = torch.randperm(len(inputs[0]), generator=torch.Generator().manual_seed(seed))[:n]
    big = tuple(x[pick] for x in inputs)
    if len(big) == 2:
        big = (big[0][:, : int(big[1].max())], big[1])
    one = tuple(x[:1] for x in big)
    if len(one) == 2:
        one = (one[0][:, : int(one[1][0])], one[1])
    return big, one


def latency(runners: dict[str, Callable], inputs: tuple, repeats: int, calls: int) -> dict[str, float]:
    """Median ms per call of each runner; runners take turns so that load on the machine hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            run(*inputs)  # untimed: the first call after another model's turn pays for the switch
            start = time.perf_counter()
            for _ in range(calls):
                run(*inputs)
            times[name].append((time.perf_counter() - start) / calls * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def eager_runner(ckpt: str, config: DictConfig) -> Callable:
    """The checkpoint's model as `bigmodel eval` runs it (channels-last where the run trained so)."""
    model = restore_model(ckpt, "cpu").model
    channels_last = bool(OmegaConf.select(config, "trainer.channels_last", default=False))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def run(*args: torch.Tensor) -> torch.Tensor:
        if channels_last and args[0].dim() == 4:
            args = (args[0].contiguous(memory_format=torch.channels_last), *args[1:])
        return model(*args)

    return run


def score(folder: Path, split: str, cfg: DictConfig) -> dict[str, float]:
    """The exported model's loss and metrics on `split`, as `bigmodel eval model_path=` gives them."""
    limit = int(cfg.eval_batches)
    return evaluate_exported(
        OmegaConf.create(
            {
                "model_path": str(folder),
                "split": split,
                "data": cfg.get("data") or {},
                "trainer": {"limit_val_batches": limit, "limit_test_batches": limit},
            }
        )
    )


def measure(fp32: Path, int8: Path, ckpt: str | None, cfg: DictConfig) -> dict[str, Any]:
    """Sizes, fp32 vs int8 metric on the same split, and interleaved latency at batch 1 and 64."""
    spec = read_spec(int8)
    split, key = EVAL_SPLIT[spec["task"]]
    sizes = {"fp32": (fp32 / spec["model_file"]).stat().st_size, "int8": (int8 / spec["model_file"]).stat().st_size}
    report: dict[str, Any] = {"file_bytes": sizes, "size_ratio": sizes["fp32"] / sizes["int8"], "split": split}
    print(f"{split} split, fp32 export:", flush=True)
    metrics = {"fp32": score(fp32, split, cfg)}
    print(f"{split} split, int8:", flush=True)
    metrics["int8"] = score(int8, split, cfg)
    report["metric"] = f"{split}/{key}"
    report["metrics"] = {k: v[f"{split}/{key}"] for k, v in metrics.items()}
    if not cfg.bench:
        return report
    threads = int(cfg.threads)
    runners: dict[str, Callable] = {}
    if ckpt is not None:
        runners["fp32 eager"] = eager_runner(ckpt, OmegaConf.create(spec["config"]))
    runners["fp32 onnx"] = load_exported(fp32, threads=threads)
    runners["int8 onnx"] = load_exported(int8, threads=threads)
    big, one = bench_inputs(saved_data(spec, cfg.get("data")), split)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        report["latency_ms"] = {
            f"batch {len(x[0])}": latency(runners, x, int(cfg.bench_repeats), calls)
            for x, calls in ((one, 50), (big, 3))
        }
    finally:
        torch.set_num_threads(before)
    report["threads"] = threads
    return report


def markdown(report: dict[str, Any]) -> str:
    """The report as a markdown table: one row per variant."""
    lat = report.get("latency_ms", {})
    cols = list(lat)
    rows = [
        f"| model | file (MB) | {report['metric']} | " + " | ".join(f"ms/{c}" for c in cols) + " |",
        "|---" * (3 + len(cols)) + "|",
    ]
    names = list(next(iter(lat.values()))) if lat else ["fp32 onnx", "int8 onnx"]
    for name in names:
        kind = name.split()[0]
        size = f"{report['file_bytes'][kind] / 1e6:.3f}" if name != "fp32 eager" else "-"
        value = f"{report['metrics'][kind]:.4f}" if name != "fp32 eager" else "(as fp32 onnx)"
        rows.append(f"| {name} | {size} | {value} | " + " | ".join(f"{lat[c][name]:.2f}" for c in cols) + " |")
    return (
        "\n".join(rows)
        + f"\n\nint8 file {report['size_ratio']:.2f}x smaller. "
        + " ".join(
            f"{c}: int8 {lat[c]['fp32 eager'] / lat[c]['int8 onnx']:.2f}x the eager throughput."
            for c in cols
            if "fp32 eager" in lat[c]
        )
        + "\n"
    )


def output_folder(cfg: DictConfig, method: str) -> Path:
    """output_dir, or <model_path>-int8 next to an exported folder, or <run>/export/onnx-int8-<method>."""
    if cfg.output_dir:
        return Path(cfg.output_dir).expanduser()
    if cfg.get("model_path"):
        folder = Path(cfg.model_path).expanduser().resolve()
        return folder.with_name(f"{folder.name}-int8")
    folder = Path(cfg.ckpt_path).expanduser().resolve().parent
    return (folder.parent if folder.name == "checkpoints" else folder) / "export" / f"onnx-int8-{method}"


def write_int8(fp32: Path, spec: dict[str, Any], method: str, cfg: DictConfig, int8: Path) -> dict[str, Any]:
    """Quantize the model of folder `fp32` into folder `int8` with its bigmodel.json; returns the spec."""
    calibration = None
    if method == "static":
        train = saved_data(spec, OmegaConf.merge(cfg.get("data") or {}, no_augment(spec))).loader("train")
        calibration = Calibration(train, [i["name"] for i in spec["inputs"]], int(cfg.calib_batches))
    log.info(f"quantizing {spec['model_class']} ({spec['task']}) to int8, method={method} ...")
    int8.mkdir(parents=True)
    quantize_onnx(fp32 / spec["model_file"], int8 / spec["model_file"], method, calibration)
    spec = {k: v for k, v in spec.items() if k != "check"}  # the fp32 export's check does not hold for int8
    spec["quantization"] = {
        "dtype": "int8",
        "method": method,
        "library": library(),
        "calib_batches": calibration.seen if calibration else 0,
        "calib_split": "train" if calibration else None,
    }
    (int8 / SPEC_FILE).write_text(json.dumps(spec, indent=1), encoding="utf-8")
    return spec


@dataclass
class QuantizeKeys:
    """The typed keys of configs/quantize.yaml (checked by check_keys)."""

    calib_batches: PositiveInt = 8  # training batches to calibrate on
    overwrite: bool = False
    eval_batches: Annotated[int, Range(ge=1, special={-1: "all"})] = -1
    bench: bool = True
    bench_repeats: PositiveInt = 5
    threads: PositiveInt = 1


def quantize(cfg: DictConfig) -> Path:
    """`bigmodel quantize`: see the top of this file and configs/quantize.yaml."""
    check_keys(cfg, QuantizeKeys)
    if str(cfg.method) not in ("auto", "dynamic", "static"):
        raise ConfigError(f"method={cfg.method!r} is not valid; use auto, dynamic or static")
    with tempfile.TemporaryDirectory(prefix="bigmodel-quantize-") as tmp:
        fp32, ckpt = fp32_source(cfg, Path(tmp))
        spec = read_spec(fp32)
        method = choose_method(spec["task"], str(cfg.method))
        out = output_folder(cfg, method)
        check_output_folder(out, cfg.overwrite)
        int8 = Path(tmp) / "int8"
        spec = write_int8(fp32, spec, method, cfg, int8)
        report = {
            "method": method,
            "calib_batches": spec["quantization"]["calib_batches"],
            "source": ckpt or str(cfg.model_path),
        } | measure(fp32, int8, ckpt, cfg)
        (int8 / "quantize_report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
        (int8 / "quantize_report.md").write_text(markdown(report), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(int8, out)
    print(markdown(report), flush=True)
    print(f"int8 model written to {out}", flush=True)
    return out


def no_augment(spec: dict[str, Any]) -> dict[str, Any]:
    """Calibrate on training images as they are, not randomly cropped or flipped."""
    return {"augment": None} if "augment" in (spec["config"].get("data") or {}) else {}


def library() -> str:
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__}"
