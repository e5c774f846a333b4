"""`bigmodel export ckpt_path=... format=onnx|pt2 [output_dir=...]`: a checkpoint as a self-contained
ONNX file or `torch.export` program, checked against the checkpoint before it is called done.

The model is rebuilt with `restore_model`, traced with a free batch axis (and a free sequence
length for text models and the GPT), and written with `bigmodel.json` (see bigmodel.exported) into
a new folder, by default `<run>/export/<format>/` next to the run's `checkpoints/`. Then the exported
model and the eager checkpoint read the same real validation batches: the largest logit difference
and the argmax agreement are printed, and a difference above `atol` fails the export (nothing is left
behind). `export_model` does the same from Python (quantize uses it).

`bigmodel eval model_path=<folder>` (evaluate_exported) measures an exported model on a split of its
run's data, as `bigmodel eval ckpt_path=` does for the checkpoint.
"""

import json
import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from omegaconf import DictConfig, OmegaConf

from bigmodel.config import ConfigError, check_keys, require
from bigmodel.data.errors import DataError
from bigmodel.exported import (
    FORMATS,
    SPEC_FILE,
    Exported,
    ExportError,
    check_output_folder,
    describe,
    load_exported,
    task_of,
)
from bigmodel.ranges import PositiveFloat, PositiveInt
from bigmodel.restore import Restored, build_saved, restore_datamodule, restore_model
from bigmodel.runtime import as_args

log = logging.getLogger("bigmodel")


def example_inputs(restored: Restored, task: str) -> tuple[tuple[torch.Tensor, ...], tuple[dict, ...]]:
    """Inputs to trace with (batch 2: sizes 0 and 1 would be taken as constants) and their free axes."""
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    if task == "image_classification":
        h, w = restored.data["image_size"]
        channels = int(restored.model_args.get("in_channels", 3))
        return (torch.randn(2, channels, h, w),), ({0: batch},)
    max_len = getattr(restored.model, "max_length", None) or getattr(restored.model, "block_size", None) or 1 << 16
    seq = torch.export.Dim("seq", min=1, max=max_len)
    t = min(8, max_len)
    tokens = torch.randint(0, int(restored.model_args["vocab_size"]), (2, t))
    if task == "language_model":
        return (tokens,), ({0: batch, 1: seq},)
    return (tokens, torch.tensor([t, max(1, t // 2)])), ({0: batch, 1: seq}, {0: batch})


def write_model(
    model: torch.nn.Module, args: tuple, shapes: tuple, fmt: str, file: Path, input_names: list[str]
) -> None:
    """Trace `model` on `args` with free axes `shapes` and write it to `file` as `fmt`."""
    for name in ("onnx_ir", "onnxscript", "torch.onnx", "torch.export"):  # their INFO lines are not the user's
        logging.getLogger(name).setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nor are the exporters' deprecation and tracing notes
        if fmt == "pt2":
            torch.export.save(torch.export.export(model, args, dynamic_shapes=shapes), str(file))
            return
        from bigmodel.onnx_ops import translation_table

        program = torch.onnx.export(
            model,
            args,
            dynamo=True,
            dynamic_shapes=shapes,
            input_names=input_names,
            output_names=["logits"],
            custom_translation_table=translation_table(),
            optimize=True,
            verbose=False,
        )
        assert program is not None  # dynamo=True always returns an ONNXProgram
        if any(node.op_type == "LSTM" for node in program.model.graph):
            import onnxscript.optimizer

            # fold the gate reordering of onnx_ops into the weights, whatever their size (the default
            # limit, 8192 elements, leaves it as ops): the LSTM nodes then read plain initializers
            onnxscript.optimizer.optimize(program.model, input_size_limit=1 << 31, output_size_limit=1 << 31)
        program.save(str(file))


@torch.no_grad()
def compare(exported: Exported, model: torch.nn.Module, batches: Any, n: int) -> dict[str, float]:
    """Max |logit difference| and argmax agreement of `exported` vs `model` over n (inputs, targets) batches."""
    max_diff, agree, total, seen = 0.0, 0, 0, 0
    for i, (inputs, _) in enumerate(batches):
        if i >= n:
            break
        args = as_args(inputs)
        want, got = model(*args).float(), exported(*args)
        max_diff = max(max_diff, (want - got).abs().max().item())
        agree += (want.argmax(-1) == got.argmax(-1)).sum().item()
        total += want.argmax(-1).numel()
        seen += len(args[0])
    if not seen:
        raise ExportError("the validation split has no batch to check the export on")
    return {"batches": min(i + 1, n), "examples": seen, "max_abs_diff": max_diff, "argmax_agreement": agree / total}


def default_output_dir(ckpt_path: str, fmt: str) -> Path:
    """<run>/export/<fmt> for <run>/checkpoints/x.pt, else <checkpoint's folder>/export/<fmt>."""
    folder = Path(ckpt_path).expanduser().resolve().parent
    return (folder.parent if folder.name == "checkpoints" else folder) / "export" / fmt


def source_info(restored: Restored) -> dict[str, Any]:
    """Where the export came from: the checkpoint, its step and its best validation metric."""
    return {
        "checkpoint": str(Path(restored.path).resolve()),
        "global_step": restored.progress.get("global_step"),
        "epoch": restored.progress.get("epoch"),
        "metrics": restored.best_metric(),
    }


def export_model(
    ckpt_path: str,
    fmt: str,
    output_dir: str | Path | None = None,
    *,
    overwrite: bool = False,
    check_batches: int = 2,
    atol: float = 1e-3,
    data: Any = None,
) -> Path:
    """Export the checkpoint as `fmt` into `output_dir` (default: default_output_dir), check it
    against the eager model on `check_batches` validation batches; returns the folder."""
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt!r} is not an export format; valid: {', '.join(FORMATS)}")
    out = Path(output_dir).expanduser() if output_dir else default_output_dir(ckpt_path, fmt)
    check_output_folder(out, overwrite)
    restored = restore_model(ckpt_path, "cpu")
    task = task_of(restored.data)
    args, shapes = example_inputs(restored, task)
    spec = describe(
        fmt,
        restored.data,
        cast(dict[str, Any], OmegaConf.to_container(restored.config, resolve=True)),
        restored.model,
        restored.model_args,
        source_info(restored),
    )
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        log.info(f"exporting {type(restored.model).__name__} ({task}) as {fmt} ...")
        write_model(restored.model, args, shapes, fmt, tmp / FORMATS[fmt], [i["name"] for i in spec["inputs"]])
        (tmp / SPEC_FILE).write_text(json.dumps(spec, indent=1), encoding="utf-8")
        spec["check"] = check(load_exported(tmp), restored, check_batches, atol, data)
        (tmp / SPEC_FILE).write_text(json.dumps(spec, indent=1), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = (out / FORMATS[fmt]).stat().st_size
    print(f"exported to {out} ({FORMATS[fmt]}: {size / 1e6:.2f} MB)", flush=True)
    return out


def check(exported: Exported, restored: Restored, n: int, atol: float, data: Any = None) -> dict[str, float]:
    """Compare on n real validation batches; print the result; ExportError beyond atol."""
    datamodule = restore_datamodule(restored, data)
    report = compare(exported, restored.model, datamodule.loader("val"), n) | {"atol": atol}
    print(
        f"check on {report['batches']} val batches ({report['examples']} examples): max |logit diff| "
        f"{report['max_abs_diff']:.3g}, argmax agreement {100 * report['argmax_agreement']:.2f}%",
        flush=True,
    )
    if not report["max_abs_diff"] <= atol:  # NaN fails too
        raise ExportError(
            f"the exported model differs from the checkpoint: max |logit diff| "
            f"{report['max_abs_diff']:.3g} > atol={atol} on {report['batches']} val batches; not exported"
        )
    return report


def one_source(cfg: DictConfig, example: str) -> None:
    """eval / predict read exactly one of ckpt_path= (a checkpoint) and model_path= (an exported folder)."""
    ckpt, folder = cfg.get("ckpt_path"), cfg.get("model_path")
    if ckpt is None and folder is None:
        raise ConfigError(f"ckpt_path is required, e.g. {example} (or model_path=<a folder from bigmodel export>)")
    if ckpt is not None and folder is not None:
        raise ConfigError(f"give one of ckpt_path={ckpt} and model_path={folder}, not both")


@torch.no_grad()
def evaluate_exported(cfg: DictConfig) -> dict[str, float]:
    """`bigmodel eval model_path=...`: the exported model on `split` of the data its bigmodel.json
    describes (the run's data config and vocabulary), with the same loss and metrics as eval ckpt_path=."""
    exported = load_exported(cfg.model_path)
    if not isinstance(exported.spec.get("config"), dict) or "data" not in exported.spec["config"]:
        raise ExportError(
            f"model_path={cfg.model_path!r}: its bigmodel.json holds no training config, so its "
            "data cannot be rebuilt; re-export it with bigmodel export"
        )
    saved = OmegaConf.create(exported.spec["config"])
    restored = Restored(
        model=torch.nn.Identity(),
        config=saved,
        model_args={},
        data=dict(exported.spec["data"]),
        progress={},
        path=str(cfg.model_path),
    )
    datamodule = restore_datamodule(restored, cfg.get("data"))  # +data.KEY=... overrides are checked too
    loss_fn, metrics = build_saved(saved.loss, "config.loss", str(cfg.model_path)), datamodule.metrics()
    limit = cfg.trainer.limit_val_batches if cfg.split == "val" else cfg.trainer.limit_test_batches
    loss_sum, count = 0.0, 0
    for i, (inputs, targets) in enumerate(datamodule.loader(cfg.split)):
        if 0 <= limit <= i:
            break
        logits = exported(*as_args(inputs))
        n = int((targets != -100).sum())
        loss_sum, count = loss_sum + float(loss_fn(logits, targets)) * n, count + n
        metrics.update(logits, targets)
    if count == 0:
        raise DataError(f"the {cfg.split} split has no examples to evaluate")
    result = {f"{cfg.split}/loss": loss_sum / count} | {f"{cfg.split}/{k}": v for k, v in metrics.compute().items()}
    print("  ".join(f"{k}={v:.4f}" for k, v in result.items()))
    if hasattr(metrics, "table"):
        print(metrics.table())
    return result


@dataclass
class ExportKeys:
    """The typed keys of configs/export.yaml (checked by check_keys)."""

    overwrite: bool = False
    check_batches: PositiveInt = 2  # the export is checked before it is kept
    atol: PositiveFloat = 1e-3


def export(cfg: DictConfig) -> Path:
    """`bigmodel export`: see the top of this file and configs/export.yaml."""
    require(cfg, "ckpt_path", "bigmodel export ckpt_path=logs/<name>/runs/<run>/checkpoints/best.pt format=onnx")
    check_keys(cfg, ExportKeys)
    return export_model(
        str(cfg.ckpt_path),
        str(cfg.format),
        cfg.output_dir,
        overwrite=bool(cfg.overwrite),
        check_batches=int(cfg.check_batches),
        atol=float(cfg.atol),
        data=cfg.get("data"),
    )
