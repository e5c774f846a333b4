"""CIFAR-10 through torchvision (download when online, else a local `cifar-10-batches-py/`)."""

import functools
import logging
from pathlib import Path

import torch

from bigmodel.data.errors import DataError
from bigmodel.data.image_folder import load_image_folder
from bigmodel.data.images import Augment, ImageData, Splits, seeded_split

CIFAR10_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR10_STD = [0.2470, 0.2435, 0.2616]
log = logging.getLogger("bigmodel")
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def load_cifar10(root: str, download: bool, val_size: int, seed: int, fallback: str | None,
                 cache_dir: str) -> tuple[Splits, list[str]]:
    """Train/val/test uint8 tensors. `val_size` images of train are held out (seeded); with
    val_size=0 the test split doubles as the validation split. When the original data can be
    neither found nor downloaded, an ImageFolder copy at `fallback` (e.g. the JPEG re-encoding
    of CIFAR-10) is used instead, with a warning."""
    from torchvision.datasets import CIFAR10

    local = Path(root) / "cifar-10-batches-py"
    try:
        train = CIFAR10(root, train=True, download=download and not local.is_dir())
        test = CIFAR10(root, train=False, download=False)
    except Exception as e:  # offline download (URLError), missing or corrupt files (RuntimeError)
        why = f"download failed ({type(e).__name__}: {e})" if download else "data.download=false"
        if fallback and Path(fallback).exists():
            log.warning(f"CIFAR-10 not found in {str(local)!r} and {why}; using the ImageFolder copy "
                        f"at {fallback!r} (data.fallback) instead")
            return load_image_folder(fallback, cache_dir, 32, val_size / 50000, seed)
        raise DataError(
            f"CIFAR-10 not found in {str(local)!r} and {why}. Get it: download {URL} and unpack it into "
            f"{root!r} (or set BIGMODEL_DATA_DIR / data.root to where it is), or train on an image "
            "folder with data=image_folder.") from None

    def tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(ds.data), torch.tensor(ds.targets, dtype=torch.long)

    (x, y), test_split = tensors(train), tensors(test)
    splits: Splits = {"test": test_split}
    if val_size > 0:
        tr, va = seeded_split(len(y), val_size / len(y), seed)
        splits |= {"train": (x[tr], y[tr]), "val": (x[va], y[va])}
    else:
        splits |= {"train": (x, y), "val": test_split}
    return splits, list(train.classes)


def cifar10(root: str, download: bool = True, val_size: int = 5000, fallback: str | None = None,
            cache_dir: str = "~/.cache/bigmodel", batch_size: int = 128,
            eval_batch_size: int = 1000, augment: Augment | None = None, on_device: bool = False,
            mean: list[float] = CIFAR10_MEAN, std: list[float] = CIFAR10_STD, seed: int = 0) -> ImageData:
    """The CIFAR-10 data module (see ImageData for loaders and augmentation)."""
    load = functools.partial(load_cifar10, root, download, val_size, seed, fallback, cache_dir)
    return ImageData(load, batch_size=batch_size, eval_batch_size=eval_batch_size, augment=augment,
                     mean=list(mean), std=list(std), on_device=on_device, seed=seed)
