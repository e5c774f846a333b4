"""Where and how the Trainer runs: device choice, moving batches, and clean stops on signals."""

import signal
import threading
from typing import Any, Callable

import torch

from bigmodel.config import ConfigError, Device


def resolve_device(device: Device, local_rank: int = 0, key: str = "trainer.device") -> torch.device:
    """The torch device for `device` (`key` names the setting in errors): auto is CUDA when present."""
    if device == Device.cuda and not torch.cuda.is_available():
        raise ConfigError(f"{key}=cuda, but torch sees no CUDA GPU here: use {key}=cpu (or auto)")
    if device == Device.cpu or (device == Device.auto and not torch.cuda.is_available()):
        return torch.device("cpu")
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(f"process {local_rank} of this machine needs cuda:{local_rank}, but "
                           f"{torch.cuda.device_count()} GPU(s) are visible: start at most that many processes "
                           "per machine (trainer.devices / torchrun --nproc_per_node)")
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
