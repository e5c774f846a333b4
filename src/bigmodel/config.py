"""Typed schemas for the config groups whose keys the framework reads itself.

Registered in Hydra's ConfigStore so that a typo in a key or a value of the wrong type fails at
start-up with the key named (`trainer.max_stepz`, `trainer.precision=fp64`).
"""

from dataclasses import dataclass
from enum import Enum

from hydra.core.config_store import ConfigStore


class Device(Enum):
    auto = "auto"  # CUDA when present, else CPU
    cpu = "cpu"
    cuda = "cuda"


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
    max_epochs: int = 10
    max_steps: int = -1  # optimizer steps; > 0 takes precedence over max_epochs
    val_check_interval: int = 0  # validate every N optimizer steps; 0 = after each epoch
    limit_train_batches: int = -1  # batches per epoch; -1 = all
    limit_val_batches: int = -1
    limit_test_batches: int = -1
    log_every_n_steps: int = 10
    accumulate_grad_batches: int = 1
    gradient_clip_val: float = 0.0  # max global grad norm; 0 = no clipping
    compile: bool = False  # torch.compile the model for training
    deterministic: bool = False
    channels_last: bool = False  # memory format for 4-D (image) inputs and models
    on_nonfinite: NonFinite = NonFinite.stop
    profiler: Profiler = Profiler.none
    progress_bar: bool = True  # shown only when stderr is a terminal
    strategy: Strategy = Strategy.auto
    devices: int = 1  # > 1 launches that many processes with torchrun
    num_threads: int = 0  # torch CPU threads; 0 = torch's default. 1 avoids spin-waiting on a shared CPU


@dataclass
class PathsConfig:
    root_dir: str = "."
    data_dir: str = "./data"
    log_dir: str = "./logs"
    cache_dir: str = "~/.cache/bigmodel"
    output_dir: str = "."


def register_schemas() -> None:
    cs = ConfigStore.instance()
    cs.store(group="schema", name="trainer", node=TrainerConfig)
    cs.store(group="schema", name="paths", node=PathsConfig)


