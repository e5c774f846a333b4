"""Typed schemas for the config groups whose keys the framework reads itself.

Registered in Hydra's ConfigStore so that a typo in a key or a value of the wrong type fails at
start-up with the key named (`trainer.max_stepz`, `trainer.precision=fp64`). The other groups are
`_target_` nodes: `check_targets` holds their values against the target's typed signature
(`data.batch_size=abc`, `scheduler.warmup_steps=1.5`) before anything is built. Numbers carry their
valid range in the annotation (bigmodel.ranges): `data.batch_size=0` and `trainer.max_steps=-5` fail
the same way.
"""

import collections.abc
import inspect
import types
import typing
from dataclasses import dataclass, field
from enum import Enum
from typing import Annotated, Any

from hydra.core.config_store import ConfigStore
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from bigmodel.ranges import (
    Fraction,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Range,
    check_fields,
    not_a_multiple,
    out_of_range,
)


class ConfigError(ValueError):
    """A config value that cannot work here; the CLI prints it as one line naming the key."""


class Device(Enum):
    auto = "auto"  # CUDA when present, else CPU
    cpu = "cpu"
    cuda = "cuda"


class ServePrecision(Enum):
    auto = "auto"  # as the checkpoint trained: bf16 for a bf16 run, else fp32
    fp32 = "fp32"
    bf16 = "bf16"  # autocast to bfloat16 (CUDA, and CPUs with bf16 instructions: about 2x faster batches)


class Precision(Enum):
    fp32 = 32  # also accepted as `32`
    fp16 = 16  # also accepted as `16`: autocast to float16 with a GradScaler (CUDA)
    bf16 = "bf16"  # autocast to bfloat16 (CUDA, and CPU where torch supports it)


class NonFinite(Enum):
    stop = "stop"  # raise and end the run (the last good checkpoint stays)
    skip = "skip"  # drop this optimizer step and go on


class Profiler(Enum):
    none = "none"
    simple = "simple"  # wall time per phase, printed at the end
    torch = "torch"  # torch.profiler trace under <run dir>/profiler, viewable in TensorBoard


class Strategy(Enum):
    auto = "auto"  # DDP when launched with several processes, else single process
    ddp = "ddp"
    fsdp = "fsdp"


@dataclass
class TrainerConfig:
    device: Device = Device.auto
    precision: Precision = Precision.fp32
    max_epochs: PositiveInt = 10
    max_steps: Annotated[int, Range(ge=1, special={-1: "no limit"})] = -1  # optimizer steps; > 0 wins over max_epochs
    val_check_interval: NonNegativeInt = 0  # validate every N optimizer steps; 0 = after each epoch
    limit_train_batches: Annotated[int, Range(ge=1, special={-1: "all"})] = -1  # batches per epoch
    limit_val_batches: Annotated[int, Range(ge=1, special={-1: "all"})] = -1
    limit_test_batches: Annotated[int, Range(ge=1, special={-1: "all"})] = -1
    log_every_n_steps: PositiveInt = 10
    accumulate_grad_batches: PositiveInt = 1
    gradient_clip_val: NonNegativeFloat = 0.0  # max global grad norm; 0 = no clipping
    compile: bool = False  # torch.compile the model for training
    deterministic: bool = False
    channels_last: bool = False  # memory format for 4-D (image) inputs and models
    on_nonfinite: NonFinite = NonFinite.stop
    profiler: Profiler = Profiler.none
    progress_bar: bool = True  # shown only when stderr is a terminal
    strategy: Strategy = Strategy.auto
    devices: PositiveInt = 1  # > 1 launches that many processes with torchrun
    # torch CPU threads; 0 = torch's default. 1 avoids spin-waiting on a shared CPU
    num_threads: Annotated[int, Range(ge=0, le=1024)] = 0

    def __post_init__(self) -> None:  # OmegaConf.to_object builds it: out-of-range values stop here
        check_ranges(vars(self), TrainerConfig, "trainer.")


@dataclass
class PathsConfig:
    root_dir: str = "."
    data_dir: str = "./data"
    log_dir: str = "./logs"
    cache_dir: str = "~/.cache/bigmodel"
    output_dir: str = "."


# torch's optimizers have no annotated signatures: the ranges of their arguments, by name, for any
# `torch.optim.*` target. torch itself accepts lr=0 and momentum >= 1, which train nothing or diverge.
TORCH_OPTIM_RANGES: dict[str, Any] = {
    "lr": PositiveFloat,
    "momentum": Fraction,
    "dampening": Annotated[float, Range(ge=0, le=1)],
    "weight_decay": NonNegativeFloat,
    "betas": Fraction,
    "eps": PositiveFloat,
    "alpha": Fraction,
    "rho": Fraction,
    "lr_decay": NonNegativeFloat,
    "initial_accumulator_value": NonNegativeFloat,
}


@dataclass
class PredictConfig:
    """`bigmodel predict`'s keys; configs/predict.yaml says what each one does."""

    name: str = "predict"
    ckpt_path: str | None = None
    model_path: str | None = None
    text: str | None = None
    input_file: str | None = None
    encoding: str = "utf-8"
    output_file: str | None = None
    batch_size: PositiveInt = 256
    device: Device = Device.auto
    paths: PathsConfig = field(default_factory=PathsConfig)


@dataclass
class ServeConfig:
    """`bigmodel serve`'s keys; configs/serve.yaml says what each one does."""

    name: str = "serve"
    ckpt_path: str | None = None
    model_path: str | None = None
    host: str = "127.0.0.1"
    port: Annotated[int, Range(ge=0, le=65535)] = 8000
    batching: bool = True
    max_batch_size: PositiveInt = 32
    max_wait_ms: NonNegativeFloat = 5.0
    max_items: PositiveInt = 64
    max_body_mb: PositiveFloat = 8.0
    max_text_chars: PositiveInt = 10000
    max_image_pixels: PositiveInt = 16777216
    max_new_tokens: PositiveInt = 1024
    device: Device = Device.auto
    precision: ServePrecision = ServePrecision.auto
    num_threads: NonNegativeInt = 1
    access_log: bool = False
    graceful_timeout_s: NonNegativeInt = 60
    paths: PathsConfig = field(default_factory=PathsConfig)


def _check_torch_optimizer(node: dict, key: str) -> None:
    """torch checks some arguments only together (SGD's nesterov needs momentum > 0): build the optimizer
    on a dummy parameter now, before any work, and say in one line what it refused. Implementation
    switches (fused, foreach, ...) depend on the device, not on the values, and are left out."""
    import torch

    args = {
        k: v
        for k, v in node.items()
        if not str(k).startswith("_") and k not in ("fused", "foreach", "capturable", "differentiable")
    }
    betas = args.get("betas")
    if betas is not None and not (isinstance(betas, (list, tuple)) and len(betas) == 2):
        raise ConfigError(f"{key}.betas={betas!r} is not valid: use two numbers in [0, 1), e.g. [0.9, 0.999]")
    try:
        get_object(node["_target_"])([torch.nn.Parameter(torch.zeros(1))], **args)
    except (ValueError, TypeError, RuntimeError, IndexError) as e:
        raise ConfigError(f"{key}: {e} (for {node['_target_']})") from None


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """`cfg` as plain dicts and lists with every interpolation resolved."""
    out = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(out, dict)
    return out  # type: ignore[return-value]


def register_schemas() -> None:
    cs = ConfigStore.instance()
    cs.store(group="schema", name="trainer", node=TrainerConfig)
    cs.store(group="schema", name="paths", node=PathsConfig)
    cs.store(group="schema", name="predict", node=PredictConfig)
    cs.store(group="schema", name="serve", node=ServeConfig)


def check_ranges(values: DictConfig | dict, schema: type, prefix: str = "") -> None:
    """`values` (a node typed by the dataclass `schema`) within the ranges annotated on its fields."""
    plain = resolved(values) if isinstance(values, DictConfig) else values
    if msg := check_fields(schema, plain, prefix):
        raise ConfigError(msg)


PLAIN_KINDS = {bool: "true or false", int: "an integer", float: "a number"}


def check_keys(values: DictConfig | dict, schema: type, prefix: str = "") -> None:
    """For a command's config with no Hydra schema: each key of the dataclass `schema` that `values` holds
    is of the annotated type (a bool is true or false, a number is a number) and within its range."""
    plain = resolved(values) if isinstance(values, DictConfig) else values
    hints = typing.get_type_hints(schema, include_extras=True)
    for name, hint in hints.items():
        if name in plain and not _accepts(hint, plain[name]):
            kind = typing.get_args(hint)[0] if typing.get_origin(hint) is Annotated else hint
            what = PLAIN_KINDS.get(kind, _describe(hint))
            raise ConfigError(f"{prefix}{name}={plain[name]!r} is not valid: use {what}{_choices(hint)}")
    check_ranges(plain, schema, prefix)


def require(cfg: DictConfig, key: str, example: str) -> None:
    """A mandatory (`???`) key left unset: one line saying how to give it, not OmegaConf's traceback."""
    if OmegaConf.is_missing(cfg, key):
        raise ConfigError(f"{key} is required, e.g. {example}")


def _accepts(tp: Any, value: Any) -> bool:
    """Whether a config value (None, bool, int, float, str, list or dict) fits the annotation `tp`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:  # Annotated[int, Range(...)]: the range is checked apart
        return _accepts(args[0], value)
    if origin is typing.Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        enum = _enum_in(tp)
        if enum is not None and str in args and isinstance(value, str):  # `Pooling | str`: a member's name
            return _accepts(enum, value)
        return any(_accepts(a, value) for a in args)
    if tp is type(None) or value is None:
        return tp is type(None)
    if tp in (bool, str):
        return isinstance(value, tp)
    if tp in (int, float):  # an int is a fine float; a bool is neither
        return isinstance(value, (int, float) if tp is float else int) and not isinstance(value, bool)
    if origin in (list, tuple, collections.abc.Sequence) or tp in (list, tuple):
        inner = [a for a in args if a is not Ellipsis]  # tuple[int, ...] -> [int]
        if not isinstance(value, (list, tuple)):
            return False
        return not inner or all(any(_accepts(a, v) for a in inner) for v in value)
    if isinstance(tp, type) and issubclass(tp, Enum):
        return value in tp.__members__ or any(value == m.value for m in tp)
    if isinstance(tp, type):  # a class: an instance, or a nested `_target_` node that builds one
        return isinstance(value, (tp, dict))
    return True  # Callable, ...: not checked here


def _enum_in(tp: Any) -> type[Enum] | None:
    options = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    return next((a for a in options if isinstance(a, type) and issubclass(a, Enum)), None)


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is Annotated:
        return _describe(typing.get_args(tp)[0])
    if typing.get_origin(tp) is typing.Literal:
        return "choice"
    if (enum := _enum_in(tp)) is not None:
        return enum.__name__
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _choices(tp: Any) -> str:
    """'; valid: a, b' for an Enum or Literal annotation, else ''."""
    if typing.get_origin(tp) is typing.Literal:
        return "; valid: " + ", ".join(map(str, typing.get_args(tp)))
    enum = _enum_in(tp)
    return f"; valid: {', '.join(enum.__members__)}" if enum is not None else ""


def check_targets(node: Any, key: str = "") -> None:
    """Each `_target_` node's keys must be arguments of the target, of the annotated types, within the
    annotated ranges (bigmodel.ranges)."""
    if isinstance(node, list):
        for i, v in enumerate(node):
            check_targets(v, f"{key}[{i}]")
        return
    if not isinstance(node, dict):
        return
    if isinstance(node.get("_target_"), str):
        target = get_object(node["_target_"])
        fn = target.__init__ if inspect.isclass(target) else target
        try:
            params, hints = inspect.signature(fn).parameters, typing.get_type_hints(fn, include_extras=True)
        except (TypeError, ValueError, NameError):
            params, hints = inspect.Signature().parameters, {}
        ranges = {**hints, **(TORCH_OPTIM_RANGES if node["_target_"].startswith("torch.optim.") else {})}
        open_ended = not params or any(p.kind == p.VAR_KEYWORD for p in params.values())
        for k, v in node.items():
            if str(k).startswith("_"):
                continue
            if not open_ended and k not in params:
                valid = [n for n in params if n not in ("self", "args", "kwargs")]
                raise ConfigError(f"{key}.{k} is not an argument of {node['_target_']}; valid: {valid}")
            if k in hints and not _accepts(hints[k], v):
                raise ConfigError(
                    f"{key}.{k}={v!r} is not a valid {_describe(hints[k])} (for {node['_target_']})"
                    + _choices(hints[k])
                )
            if k in ranges and (msg := out_of_range(f"{key}.{k}", v, ranges[k])):
                raise ConfigError(msg)
        defaults = {n: p.default for n, p in params.items() if p.default is not p.empty}
        if msg := not_a_multiple(hints, {**defaults, **node}, f"{key}."):
            raise ConfigError(msg)
        if node["_target_"].startswith("torch.optim.") and inspect.isclass(target):
            _check_torch_optimizer(node, key)
    for k, v in node.items():
        if not str(k).startswith("_"):
            check_targets(v, f"{key}.{k}" if key else str(k))
