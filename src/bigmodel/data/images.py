"""Image data held as one uint8 tensor (N, H, W, C), batched and augmented as whole tensors.

Small image sets (CIFAR-10 is 150 MB as uint8) fit in memory, so there is no per-image Python
work: a batch is one gather, then normalize and crop+flip (one more gather) run as tensor ops on
the training device. Augmentation randomness is keyed on (seed, epoch, batch position, rank), so a
resumed run sees exactly the same augmented batches. With `on_device=true` the whole set stays on
the device, and the epoch's order and all its crops/flips are drawn there by a generator on that
device when the epoch starts (as airbench does): per batch nothing is copied from the host and
nothing makes the host wait.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from bigmodel.data.loading import ResumableSampler
from bigmodel.metrics import Classification
from bigmodel.ranges import NonNegativeInt


@dataclass
class Augment:
    crop_padding: NonNegativeInt = 4  # random crop of the original size from the image padded by this many pixels
    pad_mode: Literal["reflect", "constant"] = "reflect"  # constant: zeros
    hflip: bool = True


def draw(aug: Augment, n: int, g: torch.Generator) -> torch.Tensor:
    """(3, n) int64 on g's device: row offsets, column offsets (0..2p) and flips (0/1) of n images."""
    dev, p = g.device, aug.crop_padding
    zeros = torch.zeros(n, dtype=torch.long, device=dev)
    dy = torch.randint(0, 2 * p + 1, (n,), generator=g, device=dev) if p > 0 else zeros
    dx = torch.randint(0, 2 * p + 1, (n,), generator=g, device=dev) if p > 0 else zeros
    flip = (torch.rand(n, generator=g, device=dev) < 0.5).long() if aug.hflip else zeros
    return torch.stack([dy, dx, flip])


def _source(padded: torch.Tensor, size: int, p: int, reflect: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """For positions along a padded axis (in [0, size + 2p)): the index into the image, and
    whether the position lies inside it (zero padding needs that)."""
    i = padded - p
    inside = (i >= 0) & (i < size)
    if reflect:  # as F.pad(mode="reflect"): mirrored without repeating the edge pixel
        i = torch.where(i < 0, -i, torch.where(i >= size, 2 * (size - 1) - i, i))
    return i.clamp(0, size - 1), inside


def crop_flip(x: torch.Tensor, draws: torch.Tensor, aug: Augment) -> torch.Tensor:
    """Crop from the padded image, then mirror, a channels-last batch (B, H, W, C) as one gather.
    `draws` (3, B) come from draw(); the padded image is never built."""
    b, h, w, _ = x.shape
    dy, dx, flip = draws.to(x.device)  # one copy (none when drawn on x's device)
    p, reflect = aug.crop_padding, aug.pad_mode == "reflect"
    j = torch.arange(w, device=x.device)
    rows, row_in = _source(dy[:, None] + torch.arange(h, device=x.device), h, p, reflect)  # (B, H)
    mirrored = torch.where(flip[:, None].bool(), w - 1 - j, j)  # the flip folded into the column index
    cols, col_in = _source(dx[:, None] + mirrored, w, p, reflect)  # (B, W)
    out = x[torch.arange(b, device=x.device)[:, None, None], rows[:, :, None], cols[:, None, :]]
    if p > 0 and not reflect:
        out = out * (row_in[:, :, None] & col_in[:, None, :])[..., None]  # zeros outside the image
    return out


def augment_batch(x: torch.Tensor, aug: Augment, g: torch.Generator) -> torch.Tensor:
    """Random crop with padding and horizontal flip of a float batch (B, C, H, W)."""
    return crop_flip(x.permute(0, 2, 3, 1), draw(aug, x.shape[0], g), aug).permute(0, 3, 1, 2)


def _key(*parts: int) -> int:
    return hash(parts) % 2**62  # a tuple of ints hashes the same in every process


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 images (B, H, W, C) as the float input (B, C, H, W) of an image model: pixels in [0, 1]
    standardized by the per-channel `mean` and `std` the data module was configured with."""
    mean, std = (255 * mean).view(1, -1, 1, 1).to(images.device), (255 * std).view(1, -1, 1, 1).to(images.device)
    return (images.permute(0, 3, 1, 2).float() - mean) / std


class ImageBatches:
    """An iterable of (images float (B, C, H, W), labels) over an in-memory uint8 image tensor.

    `on_device`: the epoch's order and augmentation are drawn on the device at the epoch's start
    (else: on the CPU, per batch). `channels_last`: batches keep the channels-last layout they are
    built in, instead of being copied to (B, C, H, W)-contiguous.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        sampler: ResumableSampler,
        mean: torch.Tensor,
        std: torch.Tensor,
        augment: Augment | None,
        seed: int,
        device: torch.device | None,
        on_device: bool = False,
        channels_last: bool = False,
    ) -> None:
        self.images, self.labels, self.batch_size, self.sampler = images, labels, batch_size, sampler
        self.augment, self.seed, self.on_device, self.channels_last = augment, seed, on_device, channels_last
        self.device = device or torch.device("cpu")
        self.mean = (255 * mean).view(1, 1, 1, -1).to(self.device)  # broadcast over (B, H, W, C)
        self.std = (255 * std).view(1, 1, 1, -1).to(self.device)

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def _epoch_draws(self) -> torch.Tensor | None:
        """The rest of this epoch's crops/flips, drawn on the device (the whole epoch, then the skipped cut)."""
        if self.augment is None or not self.on_device:
            return None
        s = self.sampler
        g = torch.Generator(self.device).manual_seed(_key(self.seed, s.epoch, s.rank))
        assert self.augment is not None  # only called for augmented (training) batches
        return draw(self.augment, s.per_rank, g)[:, s.skip :]

    def _batch_draws(self, batch: int, n: int) -> torch.Tensor:
        s = self.sampler
        g = torch.Generator().manual_seed(_key(self.seed, s.epoch, batch, s.rank))  # ranks augment independently
        assert self.augment is not None  # only called for augmented (training) batches
        return draw(self.augment, n, g)

    def __iter__(self):
        order = self.sampler.indices(self.images.device if self.on_device else None)
        epoch_draws, first = self._epoch_draws(), self.sampler.skip // self.batch_size
        pin = self.device.type == "cuda" and not self.images.is_cuda
        for i, start in enumerate(range(0, len(order), self.batch_size)):
            idx = order[start : start + self.batch_size].to(self.images.device)
            x, y = self.images[idx], self.labels[idx]
            if pin:
                x, y = x.pin_memory(), y.pin_memory()
            x = (x.to(self.device, non_blocking=True).float() - self.mean) / self.std  # (B, H, W, C)
            if self.augment is not None:
                draws = (
                    self._batch_draws(first + i, len(idx))
                    if epoch_draws is None
                    else epoch_draws[:, start : start + self.batch_size]
                )
                x = crop_flip(x, draws, self.augment)
            x = x.permute(0, 3, 1, 2)  # (B, C, H, W) viewed with channels-last strides
            yield (x if self.channels_last else x.contiguous()), y.to(self.device, non_blocking=True)


Splits = dict[str, tuple[torch.Tensor, torch.Tensor]]  # split -> (uint8 images (N, H, W, C), int64 labels)


class ImageData:
    """The image classification data module: `load()` -> (splits, class names); loaders; metrics.

    The CIFAR-10 and ImageFolder modules are this class with their own `load` function.
    """

    def __init__(
        self,
        load: Callable[[], tuple[Splits, list[str]]],
        *,
        batch_size: int,
        eval_batch_size: int,
        augment: Augment | None,
        mean: list[float],
        std: list[float],
        on_device: bool,
        seed: int,
        channels_last: bool = False,
    ) -> None:
        self.load, self.batch_size, self.eval_batch_size, self.augment = load, batch_size, eval_batch_size, augment
        self.mean, self.std = torch.tensor(mean), torch.tensor(std)
        self.on_device, self.seed, self.channels_last = on_device, seed, channels_last
        self.splits: Splits = {}
        self.class_names: list[str] = []
        self._resident: Splits = {}

    def setup(self) -> None:
        if not self.splits:
            self.splits, self.class_names = self.load()

    def model_args(self) -> dict:
        return {"num_classes": len(self.class_names), "in_channels": self.splits["train"][0].shape[-1]}

    def metrics(self) -> Classification:
        return Classification(len(self.class_names), self.class_names)

    def state_dict(self) -> dict:
        return {
            "class_names": self.class_names,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "image_size": list(self.splits["train"][0].shape[1:3]),
        }

    def _tensors(self, split: str, device: torch.device | None):
        if split not in self.splits:
            raise KeyError(f"split {split!r} not available; have {sorted(self.splits)}")
        if not (self.on_device and device is not None and device.type == "cuda"):
            return self.splits[split]
        if split not in self._resident:
            images, labels = self.splits[split]
            self._resident[split] = (images.to(device), labels.to(device))
        return self._resident[split]

    def loader(
        self,
        split: str,
        *,
        epoch: int = 0,
        skip_batches: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | None = None,
    ) -> ImageBatches:
        images, labels = self._tensors(split, device)
        train = split == "train"
        bs = self.batch_size if train else self.eval_batch_size
        sampler = ResumableSampler(
            len(labels),
            shuffle=train,
            seed=self.seed,
            epoch=epoch,
            rank=rank,
            world_size=world_size,
            skip=skip_batches * bs,
        )
        return ImageBatches(
            images,
            labels,
            batch_size=bs,
            sampler=sampler,
            mean=self.mean,
            std=self.std,
            augment=self.augment if train else None,
            seed=self.seed,
            device=device,
            on_device=self.on_device,
            channels_last=self.channels_last,
        )
