"""torch.distributed glue: who am I, wrap the model, sum tensors, full state dicts under FSDP.

Processes are started by torchrun (or by `trainer.devices=N`, which runs torchrun for you);
this module only reads the environment torchrun sets. Data parallel (DDP) keeps a full model on
every process; `trainer.strategy=fsdp` shards parameters, gradients and optimizer state with
FSDP2 (`fully_shard`, which also runs on CPU with Gloo). Checkpoints always hold the full,
unsharded state dict, so a checkpoint from any strategy loads into a plain model.
"""

import atexit
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from bigmodel.config import Precision, Strategy


def _from_submitit() -> None:
    """In a submitit job (hydra/launcher=submitit_slurm) with several tasks, one process per task:
    set the variables torchrun would (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) from Slurm's."""
    if "WORLD_SIZE" in os.environ or "SUBMITIT_EXECUTOR" not in os.environ:
        return
    from submitit.helpers import TorchDistributedEnvironment

    env = TorchDistributedEnvironment()
    if env.world_size > 1:
        env.export(set_cuda_visible_devices=False)  # each process picks cuda:LOCAL_RANK itself


def _close() -> None:
    """Tear the process group down before the interpreter exits (a live one can abort the exit)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def finish() -> None:
    """The end of a run that went well: the ranks meet, then the process group is torn down, so no
    rank closes its connections while a peer is still using them (which can abort that peer's exit).
    After an error the atexit hook tears down without waiting: the peers may never arrive."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def init() -> tuple[int, int, int]:
    """(rank, world_size, local_rank). Under torchrun (or in a multi-task submitit job) the first call
    starts the process group, selects this process's CUDA device, tears the group down at exit and
    quiets logging on ranks > 0; later calls (and single processes) only read."""
    _from_submitit()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available() and local_rank < torch.cuda.device_count():
            torch.cuda.set_device(local_rank)
        # NCCL for CUDA tensors, Gloo for CPU ones (trainer.device=cpu on a GPU machine works too)
        dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
        atexit.register(_close)
        if dist.get_rank() > 0:  # each log line once: rank 0's (torchrun runs also set this via Hydra)
            logging.getLogger().setLevel(logging.WARNING)
    return info()


def info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) of this process; (0, 1, 0) until init() started a group."""
    if not dist.is_initialized():
        return 0, 1, 0
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def shared_stamp(fmt: str) -> str:
    """The current time formatted as `fmt`, as rank 0 sees it (the same string on every process);
    joins the process group (init()) under torchrun."""
    stamp = [datetime.now().strftime(fmt)]
    if init()[1] > 1:
        dist.broadcast_object_list(stamp, src=0)
    return stamp[0]


def wrap(
    model: nn.Module,
    strategy: Strategy,
    device: torch.device,
    optimizer: torch.optim.Optimizer | None = None,
    precision: Precision | None = None,
) -> nn.Module:
    """The module to call for training: DDP or FSDP when several processes run, else the model itself.

    FSDP shards `model` in place and replaces its parameters, so `optimizer` (built on the old ones,
    still without state) is pointed at the sharded parameters. `precision=bf16` under FSDP: bf16
    copies of the parameters compute, gradients are reduced in fp32 (see mixed_precision).
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return model
    if strategy == Strategy.fsdp:
        return shard(model, optimizer, precision)
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def mixed_precision(precision: Precision | None):
    """FSDP2's policy for `precision`: bf16 parameters for compute and fp32 gradient reduction for
    bf16 (half the all-gather traffic, sums as exact as in fp32); None (fp32 throughout) otherwise."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if precision != Precision.bf16:
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)


def shard(
    model: nn.Module, optimizer: torch.optim.Optimizer | None = None, precision: Precision | None = None
) -> nn.Module:
    """FSDP2: each block of every nn.ModuleList (a Transformer's layers) is one unit, the rest another."""
    from torch.distributed.fsdp import fully_shard

    names = {id(p): name for name, p in model.named_parameters()}
    blocks = [block for m in model.modules() if isinstance(m, nn.ModuleList) for block in m]
    policy = mixed_precision(precision)
    for block in reversed(blocks):  # bottom-up: inner units first, the root last
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    if optimizer is not None:
        if optimizer.state:
            raise RuntimeError("trainer.strategy=fsdp: the optimizer already has state; shard before stepping")
        sharded = dict(model.named_parameters())
        for group in optimizer.param_groups:
            group["params"] = [sharded[names[id(p)]] for p in group["params"]]
    return model


def is_sharded(model: nn.Module) -> bool:
    """True for a model sharded by FSDP2 (its parameters are DTensors)."""
    if not dist.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def _full_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full state dict. Sharded: every process must call this; rank 0 gets it (on CPU), others {}."""
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_full_options())  # type: ignore[return-value]


def optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """optimizer.state_dict(); sharded, the full one keyed by parameter name (rank 0 only, as above)."""
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_full_options())


def load_model_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full state dict into a plain or a sharded model (each process keeps its shard)."""
    if not is_sharded(model):
        model.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, dict(state), options=StateDictOptions(full_state_dict=True))


def _keyed_by_name(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> dict:
    """An optimizer state dict keyed by parameter index (optimizer.state_dict()) re-keyed by name."""
    names = {id(p): name for name, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    return {
        "state": {order[i]: s for i, s in state["state"].items()},
        "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in state["param_groups"]],
    }


def load_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a state dict saved by optimizer_state_dict() under any strategy into this optimizer."""
    by_name = any(isinstance(p, str) for g in state["param_groups"] for p in g["params"])
    if not by_name and not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    if not by_name:
        state = _keyed_by_name(model, optimizer, state)
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def any_true(flag: bool, device: torch.device) -> bool:
    """True on every process when it is True on any: processes stop at the same step together."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    t = torch.tensor(float(flag), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_reduce_sum(tensors: list[torch.Tensor], device: torch.device) -> None:
    """Sum each tensor over all processes, in place (no-op in a single process)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    for t in tensors:
        buf = t.to(device)
        dist.all_reduce(buf)
        t.copy_(buf)


def rank() -> int:
    """This process's rank (0 in a single process); starts nothing."""
    return dist.get_rank() if dist.is_initialized() else 0


def gather_objects(obj: Any) -> list[Any]:
    """`obj` of every process, by rank, on every process ([obj] in a single process)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


@contextmanager
def no_sync(model: nn.Module, last_micro_batch: bool) -> Iterator[None]:
    """Around a micro-batch's forward and backward under gradient accumulation: gradients are
    reduced across processes only in the backward of a step's last micro-batch; the others add up
    locally. DDP: model.no_sync(); FSDP2: set_requires_gradient_sync (no reduce-scatter per
    micro-batch). A model in one process, or a compiled one around either, works the same."""
    inner: Any = getattr(model, "_orig_mod", model)  # torch.compile's wrapper
    if last_micro_batch or not dist.is_initialized():
        yield
    elif hasattr(inner, "set_requires_gradient_sync"):  # FSDP2 (fully_shard)
        inner.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            inner.set_requires_gradient_sync(True)
    elif hasattr(inner, "no_sync"):  # DDP
        with inner.no_sync():
            yield
    else:
        yield
