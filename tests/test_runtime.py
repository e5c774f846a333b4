"""Runtime helpers: device choice, batch moving, signal handling."""

import os
import signal

import pytest
import torch

from bigmodel.config import ConfigError, Device
from bigmodel.runtime import GracefulStop, as_args, resolve_device, to_device


def test_resolve_device():
    assert resolve_device(Device.cpu) == torch.device("cpu")
    if torch.cuda.is_available():
        assert resolve_device(Device.auto, 0) == torch.device("cuda", 0)
    else:
        assert resolve_device(Device.auto) == torch.device("cpu")
        with pytest.raises(ConfigError, match="trainer.device=cuda"):
            resolve_device(Device.cuda)


def test_to_device_and_as_args():
    batch = (torch.ones(2), [torch.zeros(1), "keep"])
    moved = to_device(batch, torch.device("cpu"))
    assert isinstance(moved, tuple) and isinstance(moved[1], list) and moved[1][1] == "keep"
    assert as_args(torch.ones(1))[0].shape == (1,) and len(as_args((1, 2))) == 2


def test_graceful_stop_first_signal_requests_stop_second_interrupts():
    seen = []
    before = signal.getsignal(signal.SIGTERM)
    with GracefulStop(seen.append):
        os.kill(os.getpid(), signal.SIGTERM)
        assert seen == ["SIGTERM"]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is before
