"""torch.distributed glue: who am I, wrap the model, sum tensors across processes.

Processes are started by torchrun (or by `trainer.devices=N`, which runs torchrun for you);
this module only reads the environment torchrun sets.
"""

import os

import torch
import torch.distributed as dist

from bigmodel.config import Strategy


def info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank), initializing the process group on first use under torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if not dist.is_initialized():
        return 0, 1, 0
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def wrap(model: torch.nn.Module, strategy: Strategy, device: torch.device) -> torch.nn.Module:
    """The module to call for training: DDP or FSDP when several processes run, else the model itself."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return model
    if strategy == Strategy.fsdp:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        return FSDP(model, device_id=device if device.type == "cuda" else None, use_orig_params=True)
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def all_reduce_sum(tensors: list[torch.Tensor], device: torch.device) -> None:
    """Sum each tensor over all processes, in place (no-op in a single process)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    for t in tensors:
        buf = t.to(device)
        dist.all_reduce(buf)
        t.copy_(buf)
