"""Gradient accumulation across processes (distributed.no_sync) and FSDP2's mixed precision:
fakes for the dispatch, and two Gloo processes sharding a small model for the real thing."""

import os
import socket
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn

from bigmodel import distributed
from bigmodel.config import Precision


class FakeDDP(nn.Module):
    def __init__(self, calls: list) -> None:
        super().__init__()
        self.calls = calls

    @contextmanager
    def no_sync(self):
        self.calls.append("no_sync on")
        yield
        self.calls.append("no_sync off")


class FakeFSDP(nn.Module):
    def __init__(self, calls: list) -> None:
        super().__init__()
        self.calls = calls

    def set_requires_gradient_sync(self, requires: bool) -> None:
        self.calls.append(f"sync {requires}")


class Compiled:
    """What torch.compile returns: the module under `_orig_mod`."""

    def __init__(self, inner: nn.Module) -> None:
        self._orig_mod = inner


def micro_batches(model, calls: list, n: int = 3) -> list:
    for i in range(n):
        with distributed.no_sync(model, last_micro_batch=i == n - 1):
            calls.append(f"backward {i}")
    return calls


def test_no_sync_skips_the_reduction_of_all_but_the_last_micro_batch(monkeypatch):
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    calls: list = []
    assert micro_batches(FakeDDP(calls), calls) == [
        "no_sync on",
        "backward 0",
        "no_sync off",
        "no_sync on",
        "backward 1",
        "no_sync off",
        "backward 2",
    ]
    calls = []
    assert micro_batches(Compiled(FakeFSDP(calls)), calls) == [
        "sync False",
        "backward 0",
        "sync True",
        "sync False",
        "backward 1",
        "sync True",
        "backward 2",
    ]
    assert micro_batches(nn.Linear(1, 1), []) == ["backward 0", "backward 1", "backward 2"]  # a plain model
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    calls = []
    assert micro_batches(FakeDDP(calls), calls) == ["backward 0", "backward 1", "backward 2"]  # one process


def test_mixed_precision_policy_follows_the_precision():
    bf16 = distributed.mixed_precision(Precision.bf16)
    assert (bf16.param_dtype, bf16.reduce_dtype) == (torch.bfloat16, torch.float32)
    for p in (Precision.fp32, Precision.fp16, None):
        policy = distributed.mixed_precision(p)
        assert (policy.param_dtype, policy.reduce_dtype) == (None, None)


def tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


def data() -> torch.Tensor:
    return torch.randn(2, 2, 3, 4, generator=torch.Generator().manual_seed(1))  # (micro-batch, rank, batch, features)


def fsdp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    model, xs = distributed.shard(tiny()), data()
    local_grads = []
    for m in range(2):
        with distributed.no_sync(model, last_micro_batch=m == 1):
            model(xs[m, rank]).pow(2).sum().backward()
        local_grads.append([p.grad is not None for p in model.parameters()])  # sharded grads exist once reduced
    grads = {n: p.grad.full_tensor() for n, p in model.named_parameters()}
    mixed = distributed.shard(tiny(), precision=Precision.bf16)
    out = mixed(xs[0, rank])
    out.float().pow(2).sum().backward()
    torch.save(
        {
            "local": local_grads,
            "grads": grads,
            "out_dtype": out.dtype,
            "param_dtypes": {p.dtype for p in mixed.parameters()},
            "grad_dtypes": {p.grad.dtype for p in mixed.parameters()},
        },
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    dist.barrier()
    dist.destroy_process_group()


def test_fsdp_accumulates_locally_then_reduces_once_and_computes_in_bf16(tmp_path, one_thread):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(fsdp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    ref, xs = tiny(), data()
    sum(ref(xs[m, r]).pow(2).sum() for m in range(2) for r in range(2)).backward()
    for r in ranks:
        assert r["local"] == [[False] * 4, [True] * 4]  # no reduce-scatter after the first micro-batch
        for name, p in ref.named_parameters():  # one reduction of both micro-batches: the mean over ranks
            torch.testing.assert_close(r["grads"][name], p.grad / 2, rtol=1e-5, atol=1e-6, msg=name)
        assert r["out_dtype"] == torch.bfloat16  # computed with bf16 copies of the parameters
        assert r["param_dtypes"] == {torch.float32} and r["grad_dtypes"] == {torch.float32}  # kept and reduced in fp32
