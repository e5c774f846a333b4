"""Shared loader plumbing: a resumable, rank-aware sampler and the DataLoader factory."""

import math
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from bigmodel.data.errors import DataError


class ResumableSampler(Sampler[int]):
    """Yields this rank's indices for one epoch, starting after `skip` samples.

    The order depends only on (seed, epoch), so a resumed run sees exactly the batches an
    uninterrupted run would have. With world_size > 1 each rank takes every world_size-th index
    of the same permutation (padded to equal length, like DistributedSampler). `limit` makes an
    epoch the first `limit` indices of each epoch's permutation (for data sets too large to finish).
    """

    def __init__(
        self,
        num_samples: int,
        *,
        shuffle: bool,
        seed: int,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        skip: int = 0,
        limit: int | None = None,
    ) -> None:
        self.num_samples, self.shuffle, self.seed, self.epoch = num_samples, shuffle, seed, epoch
        self.rank, self.world_size, self.skip = rank, world_size, skip
        self.epoch_size = min(num_samples, limit) if limit else num_samples  # the first `limit` of the order
        self.per_rank = math.ceil(self.epoch_size / world_size)

    def indices(self, device: torch.device | None = None) -> torch.Tensor:
        """This rank's rest of the epoch as a tensor on `device`, shuffled by a generator on that
        device: on the CPU the order __iter__ gives; on a GPU another order, as reproducible, drawn
        without a copy from the host."""
        if self.shuffle:
            g = torch.Generator(device or "cpu").manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=g, device=device)
        else:
            order = torch.arange(self.num_samples, device=device)
        order = order[: self.epoch_size]
        pad = self.per_rank * self.world_size - self.epoch_size
        if pad:
            order = torch.cat([order, order[:pad]])
        return order[self.rank :: self.world_size][self.skip :]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return max(self.per_rank - self.skip, 0)


def default_workers() -> int:
    """Leave one core for the training loop itself."""
    return max(min((os.cpu_count() or 1) - 1, 8), 0)


def make_loader(
    dataset: Any,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    epoch: int = 0,
    skip_batches: int = 0,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    pin_memory: bool = False,
    drop_last: bool = False,
    collate_fn: Callable[[list], Any] | None = None,
) -> DataLoader:
    """A DataLoader over `dataset` whose order is reproducible and resumable (see ResumableSampler)."""
    sampler = ResumableSampler(
        len(dataset),
        shuffle=shuffle,
        seed=seed,
        epoch=epoch,
        rank=rank,
        world_size=world_size,
        skip=skip_batches * batch_size,
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory and torch.cuda.is_available(),
        drop_last=drop_last,
        collate_fn=collate_fn,
        persistent_workers=False,
        # its own generator: creating the iterator draws nothing from the global RNG
        generator=torch.Generator().manual_seed(seed + epoch),
        prefetch_factor=4 if num_workers > 0 else None,
    )


def seeded_split(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, val) of a reproducible random split of n items."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = int(round(n * val_fraction))
    if n_val >= n:
        raise DataError(
            f"holding out {n_val} of {n} training examples for validation leaves none to train on; "
            "lower data.val_size / data.val_fraction"
        )
    if n_val == 0 and val_fraction > 0:  # an empty validation split would report metrics of nothing
        raise DataError(
            f"a validation fraction of {val_fraction:g} of {n} training examples holds out none; "
            f"raise data.val_fraction to at least {1 / n:.2g} or give a validation file/folder"
        )
    return order[n_val:], order[:n_val]
