"""Where and how a command runs: one `Runtime` for processes, device, precision, wrapping, compile
and collectives, plus the small pieces it needs (device choice, moving batches, clean stops on signals).

`train`, `eval`, `predict` and `generate` each build one from a TrainerConfig and call `init()` once:
the process-wide set-up (process group, CUDA device, threads, determinism, TF32) happens there and
nowhere else. The Trainer decides *when* to step; the Runtime knows *how*.
"""

import os
import signal
import threading
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from bigmodel import distributed
from bigmodel.config import ConfigError, Device, Precision, TrainerConfig

AUTOCAST_DTYPES = {Precision.bf16: torch.bfloat16, Precision.fp16: torch.float16}


def autocast_to(device: torch.device, dtype: torch.dtype | None):
    """Autocast to `dtype` on `device`'s type, or no context at all for None (fp32)."""
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


class Runtime:
    """Built once from the trainer config (`device_key` names the device setting in errors).

    init()                          processes, device, threads, determinism, TF32; returns self
    rank, world_size, device        this process; is_global_zero for rank 0
    autocast(), scaler              the precision: autocast context, GradScaler (fp16 only)
    setup(model, optimizer)         the model on the device (channels-last), wrapped (DDP/FSDP) as `wrapped`
    train_step_fn(loss_fn, counts)  forward + loss + train counts, one compiled function with compile=true
    prepare(batch), no_sync(sync)   a batch on the device as (args, targets); DDP's gradient sync
    backward(loss, accum), clip(optimizer, max_norm), step(optimizer), back_off()
    all_reduce_sum(tensors), any_true(flag)
    """

    def __init__(self, config: TrainerConfig, device_key: str = "trainer.device") -> None:
        self.config, self.device_key = config, device_key
        self.rank, self.world_size, self.local_rank = 0, 1, 0
        self.device = torch.device("cpu")  # until init()
        self.autocast_dtype = AUTOCAST_DTYPES.get(config.precision)
        self.scaler = torch.amp.GradScaler("cpu", enabled=False)
        self.model: nn.Module  # set by setup()
        self.wrapped: nn.Module  # what training and evaluation call: DDP/FSDP or the model

    def init(self) -> "Runtime":
        """The process-wide set-up, in one explicit call (idempotent for the process group)."""
        self.rank, self.world_size, self.local_rank = distributed.init()
        self.device = resolve_device(self.config.device, self.local_rank, self.device_key)
        if self.config.num_threads > 0:
            torch.set_num_threads(self.config.num_threads)
        deterministic = self.config.deterministic
        torch.backends.cudnn.benchmark = not deterministic
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # set either way: a sweep runs its jobs in one process, and one job's choice must not leak
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
        if self.device.type == "cuda":  # TF32 matmuls (~7x on an H100) unless bit-exact runs are asked for
            torch.set_float32_matmul_precision("highest" if deterministic else "high")
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.config.precision == Precision.fp16)
        return self

    @property
    def is_global_zero(self) -> bool:
        return self.rank == 0

    def autocast(self):
        return autocast_to(self.device, self.autocast_dtype)

    # ---------------------------------------------------------------- the model
    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> nn.Module:
        """`model` on this device (channels-last when asked); `self.wrapped` is what to call: DDP or
        FSDP around it when several processes run (FSDP re-points `optimizer` at the shards)."""
        model = model.to(self.device)
        if self.config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model, self.wrapped = (
            model,
            distributed.wrap(model, self.config.strategy, self.device, optimizer, self.config.precision),
        )
        return model

    def train_step_fn(self, loss_fn: Callable, counts: Callable | None = None) -> Callable:
        """`fn(args, targets) -> (loss, counts(logits, targets) or None)`. With trainer.compile the
        model, the loss and the counts are one compiled function (the logits never leave the graph);
        under DDP/FSDP the wrapped module is compiled and the loss runs beside it. Evaluation calls
        `wrapped` uncompiled: no recompiles for no_grad or a short last batch."""
        model: Callable = self.wrapped
        if self.config.compile and self.world_size > 1:
            model = torch.compile(model)

        def forward_loss(args: tuple, targets: torch.Tensor) -> tuple[torch.Tensor, Any]:
            logits = model(*args)
            loss = loss_fn(logits, targets)
            with torch.no_grad():
                hits = counts(logits.detach(), targets) if counts is not None else None
            return loss, hits

        return torch.compile(forward_loss) if self.config.compile and self.world_size == 1 else forward_loss

    def prepare(self, batch: Any) -> tuple[tuple, torch.Tensor]:
        """A batch on this device as (model args, targets); 4-D image inputs channels-last when asked."""
        inputs, targets = to_device(batch, self.device)
        args = as_args(inputs)
        if self.config.channels_last and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
            args = (args[0].contiguous(memory_format=torch.channels_last),) + args[1:]
        return args, targets

    # ---------------------------------------------------------------- backward and step
    def no_sync(self, sync: bool):
        """DDP / FSDP2: no gradient reduction on a micro-batch that does not end an optimizer step."""
        return distributed.no_sync(self.wrapped, last_micro_batch=sync)

    def backward(self, loss: torch.Tensor, accum: int = 1) -> None:
        self.scaler.scale(loss / accum).backward()

    def clip(self, optimizer: torch.optim.Optimizer, max_norm: float) -> torch.Tensor | None:
        """Unscale (fp16) and clip the global gradient norm to `max_norm` (0: off); the pre-clip norm,
        on the device."""
        if max_norm <= 0:
            return None
        self.scaler.unscale_(optimizer)
        return torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """The optimizer step, then zero_grad. False when fp16's GradScaler found inf/NaN gradients and
        skipped it: one read of its scale, right after the scaler's own (a non-fused optimizer's
        `scaler.step` reads its inf flags anyway). Without fp16 nothing is read back."""
        if not self.scaler.is_enabled():
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return True
        scale: Any = self.scaler._scale  # a tensor once the scaler has scaled a loss
        before = scale.clone()  # on the device: get_scale() would wait for the backward
        self.scaler.step(optimizer)
        self.scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return not bool(self.scaler._scale < before)

    def back_off(self) -> None:
        """A step dropped for a non-finite loss: fp16 forgets its inf checks and halves the scale."""
        if self.scaler.is_enabled():
            self.scaler.update(self.scaler._scale * 0.5)  # type: ignore[operator]

    # ---------------------------------------------------------------- collectives
    def all_reduce_sum(self, tensors: list[torch.Tensor]) -> None:
        distributed.all_reduce_sum(tensors, self.device)

    def any_true(self, flag: bool) -> bool:
        """True on every process when it is True on any (one read; free in a single process)."""
        return distributed.any_true(flag, self.device)


def resolve_device(device: Device, local_rank: int = 0, key: str = "trainer.device") -> torch.device:
    """The torch device for `device` (`key` names the setting in errors): auto is CUDA when present."""
    if device == Device.cuda and not torch.cuda.is_available():
        raise ConfigError(f"{key}=cuda, but torch sees no CUDA GPU here: use {key}=cpu (or auto)")
    if device == Device.cpu or (device == Device.auto and not torch.cuda.is_available()):
        return torch.device("cpu")
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(
            f"process {local_rank} of this machine needs cuda:{local_rank}, but "
            f"{torch.cuda.device_count()} GPU(s) are visible: start at most that many processes "
            "per machine (trainer.devices / torchrun --nproc_per_node)"
        )
    return torch.device("cuda", local_rank)


def to_device(x: Any, device: torch.device) -> Any:
    """Tensors, and tuples/lists of them, moved to `device` (asynchronously from pinned memory)."""
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, (tuple, list)):
        return type(x)(to_device(v, device) for v in x)
    return x


def as_args(inputs: Any) -> tuple:
    """A batch's inputs as the positional arguments of the model."""
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


class GracefulStop:
    """While active, the first SIGINT/SIGTERM calls `request_stop(signal_name)` so the loop can finish
    its step and save; a second one raises KeyboardInterrupt. Only the main thread can own signals."""

    def __init__(self, request_stop: Callable[[str], None]) -> None:
        self.request_stop, self.received = request_stop, False
        self.previous: dict[signal.Signals, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.received:
            raise KeyboardInterrupt
        self.received = True
        self.request_stop(signal.Signals(signum).name)

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
