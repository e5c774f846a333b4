"""Image data held as one uint8 tensor (N, H, W, C), batched and augmented as whole tensors.

Small image sets (CIFAR-10 is 150 MB as uint8) fit in memory, so there is no per-image Python
work: a batch is one gather, then crop/flip/normalize run as tensor ops on the training device
(`on_device=true` keeps the whole set on the GPU). Augmentation randomness is drawn per batch from
(seed, epoch, batch index, rank), so a resumed run sees exactly the same augmented batches.
"""

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from bigmodel.data.loading import ResumableSampler
from bigmodel.metrics import Classification
from bigmodel.ranges import NonNegativeInt


@dataclass
class Augment:
    crop_padding: NonNegativeInt = 4  # random crop of the original size from the image padded by this many pixels
    pad_mode: str = "reflect"  # "reflect" or "constant" (zeros)
    hflip: bool = True


def augment_batch(x: torch.Tensor, aug: Augment, g: torch.Generator) -> torch.Tensor:
    """Random crop with padding and horizontal flip of a float batch (B, C, H, W)."""
    b, _, h, w = x.shape
    if aug.crop_padding > 0:
        p = aug.crop_padding
        padded = F.pad(x, (p, p, p, p), mode=aug.pad_mode)
        dy = torch.randint(0, 2 * p + 1, (b,), generator=g).to(x.device)
        dx = torch.randint(0, 2 * p + 1, (b,), generator=g).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
        batch = torch.arange(b, device=x.device)[:, None, None, None]
        chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[batch, chans, rows, cols]
    if aug.hflip:
        flip = (torch.rand(b, generator=g) < 0.5).to(x.device)[:, None, None, None]
        x = torch.where(flip, x.flip(3), x)
    return x


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 images (B, H, W, C) as the float input (B, C, H, W) of an image model: pixels in [0, 1]
    standardized by the per-channel `mean` and `std` the data module was configured with."""
    mean, std = (255 * mean).view(1, -1, 1, 1).to(images.device), (255 * std).view(1, -1, 1, 1).to(images.device)
    return (images.permute(0, 3, 1, 2).float() - mean) / std


class ImageBatches:
    """An iterable of (images float (B, C, H, W), labels) over an in-memory uint8 image tensor."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int,
                 sampler: ResumableSampler, mean: torch.Tensor, std: torch.Tensor,
                 augment: Augment | None, seed: int, device: torch.device | None) -> None:
        self.images, self.labels, self.batch_size, self.sampler = images, labels, batch_size, sampler
        self.augment, self.seed = augment, seed
        self.device = device or torch.device("cpu")
        self.mean, self.std = mean.to(self.device), std.to(self.device)

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self):
        order = torch.tensor(list(self.sampler), dtype=torch.long)
        first = self.sampler.skip // self.batch_size
        pin = self.device.type == "cuda" and not self.images.is_cuda
        for i, start in enumerate(range(0, len(order), self.batch_size)):
            idx = order[start : start + self.batch_size].to(self.images.device)
            x, y = self.images[idx], self.labels[idx]
            if pin:
                x, y = x.pin_memory(), y.pin_memory()
            x = normalize(x.to(self.device, non_blocking=True), self.mean, self.std)
            if self.augment is not None:
                key = (self.seed, self.sampler.epoch, first + i, self.sampler.rank)  # ranks augment independently
                g = torch.Generator().manual_seed(hash(key) % 2**62)
                x = augment_batch(x, self.augment, g)
            yield x.contiguous(), y.to(self.device, non_blocking=True)


Splits = dict[str, tuple[torch.Tensor, torch.Tensor]]  # split -> (uint8 images (N, H, W, C), int64 labels)


class ImageData:
    """The image classification data module: `load()` -> (splits, class names); loaders; metrics.

    The CIFAR-10 and ImageFolder modules are this class with their own `load` function.
    """

    def __init__(self, load: Callable[[], tuple[Splits, list[str]]], *, batch_size: int,
                 eval_batch_size: int, augment: Augment | None, mean: list[float], std: list[float],
                 on_device: bool, seed: int) -> None:
        self.load, self.batch_size, self.eval_batch_size, self.augment = load, batch_size, eval_batch_size, augment
        self.mean, self.std = torch.tensor(mean), torch.tensor(std)
        self.on_device, self.seed = on_device, seed
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
        return {"class_names": self.class_names, "mean": self.mean.tolist(), "std": self.std.tolist(),
                "image_size": list(self.splits["train"][0].shape[1:3])}

    def _tensors(self, split: str, device: torch.device | None):
        if split not in self.splits:
            raise KeyError(f"split {split!r} not available; have {sorted(self.splits)}")
        if not (self.on_device and device is not None and device.type == "cuda"):
            return self.splits[split]
        if split not in self._resident:
            images, labels = self.splits[split]
            self._resident[split] = (images.to(device), labels.to(device))
        return self._resident[split]

    def loader(self, split: str, *, epoch: int = 0, skip_batches: int = 0, rank: int = 0,
               world_size: int = 1, device: torch.device | None = None) -> ImageBatches:
        images, labels = self._tensors(split, device)
        train = split == "train"
        bs = self.batch_size if train else self.eval_batch_size
        sampler = ResumableSampler(len(labels), shuffle=train, seed=self.seed, epoch=epoch, rank=rank,
                                   world_size=world_size, skip=skip_batches * bs)
        return ImageBatches(images, labels, batch_size=bs, sampler=sampler, mean=self.mean, std=self.std,
                            augment=self.augment if train else None, seed=self.seed, device=device)
