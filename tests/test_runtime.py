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


def test_info_is_a_pure_getter_and_init_is_explicit(monkeypatch):
    import torch.distributed as dist

    from bigmodel import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: pytest.fail("info() started a process group"))
    assert distributed.info() == (0, 1, 0)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.init() == (0, 1, 0)  # one process: nothing to start


def test_runtime_init_sets_device_threads_and_determinism():
    from bigmodel.config import TrainerConfig
    from bigmodel.runtime import Runtime

    threads = torch.get_num_threads()
    rt = Runtime(TrainerConfig(device=Device.cpu, deterministic=True, num_threads=1)).init()
    try:
        assert rt.device == torch.device("cpu") and (rt.rank, rt.world_size, rt.is_global_zero) == (0, 1, True)
        assert torch.are_deterministic_algorithms_enabled() and torch.get_num_threads() == 1
        Runtime(TrainerConfig(device=Device.cpu)).init()  # the next job of a sweep
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(threads)


def test_runtime_precision_and_step():
    from bigmodel.config import Precision, TrainerConfig
    from bigmodel.runtime import Runtime

    rt = Runtime(TrainerConfig(device=Device.cpu, precision=Precision.bf16)).init()
    with rt.autocast():
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    assert not rt.scaler.is_enabled()
    model = rt.setup(torch.nn.Linear(3, 1))
    assert rt.wrapped is model  # one process: nothing wraps it
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rt.backward(model(torch.ones(4, 3)).sum() * 100)
    norm = rt.clip(opt, max_norm=1e-3)
    assert norm > 1e-3 and rt.clip(opt, 0) is None  # the pre-clip norm; 0 = no clipping
    before = model.weight.detach().clone()
    assert rt.step(opt) and model.weight.grad is None
    assert (model.weight - before).norm() <= 0.1 * 1e-3 + 1e-7  # lr x the clipped norm


def test_prepare_moves_batches_and_makes_images_channels_last():
    from bigmodel.config import TrainerConfig
    from bigmodel.runtime import Runtime

    rt = Runtime(TrainerConfig(device=Device.cpu, channels_last=True)).init()
    (x,), y = rt.prepare((torch.rand(2, 3, 4, 4), torch.tensor([0, 1])))
    assert x.is_contiguous(memory_format=torch.channels_last) and y.tolist() == [0, 1]
    (tokens, lengths), _ = rt.prepare(((torch.ones(2, 5, dtype=torch.long), torch.tensor([5, 3])), torch.zeros(2)))
    assert tokens.shape == (2, 5) and lengths.tolist() == [5, 3]  # not images: left as they are
