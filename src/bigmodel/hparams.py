"""What a run shows in TensorBoard's HParams tab, and the summaries that say it.

A run writes three summaries into its own folder (its session, next to its scalars): the
experiment (which hyperparameters and metrics are columns, and which columns show first), its
hyperparameter values, and its end. The metric columns point at scalar tags the run logs anyway
(`val/acc`, `test/acc`; the tab shows each one's last value), so no single-point copies of
them are written. TensorBoard takes its columns from the experiment of one run, so every run of a
task declares the same metric set (`val/*` and `test/*` of its metrics object, whether or not it
was tested), and every run has the same headline columns: `name`, the config choices (`model`,
`data`, `optimizer`, `scheduler`, `experiment`), `overrides` and `model.num_params`.

Shown first (marked `differs`, which the tab sorts first and shows 5 of): the keys the run or
sweep overrode, `optimizer.lr`, `data.batch_size` and `model.num_params`. Booleans are booleans,
enums their values; paths (cache, data and checkpoint folders, files) are left out.
"""

import os
import time
from enum import Enum
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from bigmodel.launch import SWEPT_ENV

SHOWN = 5  # the HParams tab shows the first 5 columns (those marked `differs` first)
THEN_SHOWN = ["optimizer.lr", "data.batch_size", "model.num_params", "model", "data"]
CHOICES = ["model", "data", "optimizer", "scheduler", "experiment"]  # config groups shown as columns
SECTIONS = ("model", "data", "optimizer", "scheduler", "loss", "trainer", "seed")
PATH_WORDS = ("dir", "dirpath", "path", "file", "root", "url")  # keys naming a place on disk, not a setting


def flat_hparams(resolved: dict[str, Any]) -> dict[str, Any]:
    """model.*, data.*, optimizer.*, scheduler.*, loss.*, trainer.*, seed of a resolved config, flat."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if not str(k).startswith("_"):
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = node

    walk("", {k: resolved[k] for k in SECTIONS if k in resolved})
    return out


def _is_path(key: str, value: Any) -> bool:
    last = key.rsplit(".", 1)[-1].lower()
    if any(last == w or last.endswith(("_" + w, w + "s")) for w in PATH_WORDS):
        return True
    return isinstance(value, str) and value.startswith(("/", "~", "./", "../"))  # e.g. data.fallback


def column_value(v: Any) -> bool | float | str | None:
    """A value the HParams tab can show: bool, number or string (enums by value, lists as text)."""
    if isinstance(v, Enum):
        v = v.value
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, (int, float)):
        return float(v)
    return str(v)


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def run_columns(resolved: dict[str, Any], model: torch.nn.Module) -> tuple[dict[str, Any], list[str]]:
    """The run's columns (headline first, then every setting but paths) and the ones shown first."""
    hydra = HydraConfig.get() if HydraConfig.initialized() else None
    overrides = [o for o in (hydra.overrides.task if hydra else []) if not _override_key(o).startswith("hydra.")]
    choices = dict(hydra.runtime.choices) if hydra else {}
    head: dict[str, Any] = {
        "name": resolved.get("name"),
        **{c: choices.get(c) for c in CHOICES},
        "overrides": " ".join(overrides),
        "model.num_params": sum(p.numel() for p in model.parameters()),
    }
    flat = {k: v for k, v in flat_hparams(resolved).items() if not _is_path(k, v)}
    columns = {k: column_value(v) for k, v in {**head, **flat}.items()}
    columns = {k: v for k, v in columns.items() if v is not None}
    swept = os.environ.get(SWEPT_ENV, "").split(",") if hydra and hydra.mode == RunMode.MULTIRUN else []
    chosen = [k for k in swept if k] or [_override_key(o) for o in overrides]
    shown = [k for k in dict.fromkeys([*chosen, *THEN_SHOWN]) if k in columns][:SHOWN]
    return columns, shown


def summaries(columns: dict[str, Any], metrics: list[str], shown: list[str]) -> list:
    """The experiment, session-start and session-end summaries of one run (a session)."""
    from google.protobuf import struct_pb2
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    infos, values = [], {}
    for name, v in columns.items():
        info = api_pb2.HParamInfo(name=name, differs=name in shown)
        if isinstance(v, bool):
            info.type = api_pb2.DATA_TYPE_BOOL
            info.domain_discrete.extend([False, True])
            values[name] = struct_pb2.Value(bool_value=v)
        elif isinstance(v, float):
            info.type = api_pb2.DATA_TYPE_FLOAT64
            values[name] = struct_pb2.Value(number_value=v)
        else:
            info.type = api_pb2.DATA_TYPE_STRING  # no domain: runs with other values are not filtered out
            values[name] = struct_pb2.Value(string_value=str(v))
        infos.append(info)
    experiment = api_pb2.Experiment(
        hparam_infos=infos,
        time_created_secs=time.time(),
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=m)) for m in metrics],
    )
    start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    for name, value in values.items():
        start.hparams[name].CopyFrom(value)
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time())

    def summary(tag: str, **data) -> Summary:
        md = metadata.create_summary_metadata(plugin_data_pb2.HParamsPluginData(**data))
        return Summary(value=[Summary.Value(tag=tag, metadata=md, tensor=metadata.NULL_TENSOR)])

    return [
        summary(metadata.EXPERIMENT_TAG, experiment=experiment),
        summary(metadata.SESSION_START_INFO_TAG, session_start_info=start),
        summary(metadata.SESSION_END_INFO_TAG, session_end_info=end),
    ]
