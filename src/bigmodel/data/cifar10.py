"""CIFAR-10: torchvision downloads it when online; the local `cifar-10-batches-py/` is read directly."""

import functools
import logging
import pickle
from pathlib import Path

import numpy as np
import torch

from bigmodel.data.errors import DataError
from bigmodel.data.image_folder import load_image_folder
from bigmodel.data.images import Augment, ImageData, Splits
from bigmodel.data.loading import seeded_split
from bigmodel.ranges import NonNegativeInt, PositiveFloat, PositiveInt

CIFAR10_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR10_STD = [0.2470, 0.2435, 0.2616]
log = logging.getLogger("bigmodel")
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


# what a CIFAR batch file may name: numpy arrays and their dtypes, nothing that could run code
_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    *((m, f) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for f in ("_reconstruct", "scalar")),
    *((m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric")),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR-10 batch never holds")
        return super().find_class(module, name)


def read_pickle(path: Path) -> dict:
    """A python-pickle CIFAR file (dict of arrays, lists, strings); anything else is a DataError naming it."""
    try:
        with open(path, "rb") as f:
            out = _ArrayUnpickler(f, encoding="latin1").load()
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or type(e).__name__})") from None
    except Exception as e:  # truncated, not a pickle, a foreign object
        raise DataError(
            f"{path}: not a CIFAR-10 python batch file ({type(e).__name__}: {e}); download {URL} again and unpack it"
        ) from None
    if not isinstance(out, dict):
        raise DataError(f"{path}: not a CIFAR-10 python batch file (holds a {type(out).__name__}, not a dict)")
    return out


def read_batches(folder: Path, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 32, 32, 3) uint8 and labels from python-pickle CIFAR batch files."""
    data, labels = [], []
    for name in names:
        batch = read_pickle(folder / name)
        try:
            data.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3 * 32 * 32))
            labels += list(batch["labels"])
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{folder / name}: not a CIFAR-10 batch ({type(e).__name__}: {e})") from None
        if len(data[-1]) != len(batch["labels"]):
            raise DataError(f"{folder / name}: {len(data[-1])} images but {len(batch['labels'])} labels")
    images = np.concatenate(data).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return torch.from_numpy(np.ascontiguousarray(images)), torch.tensor(labels, dtype=torch.long)


def load_cifar10(
    root: str, download: bool, val_size: int, seed: int, fallback: str | None, cache_dir: str
) -> tuple[Splits, list[str]]:
    """Train/val/test uint8 tensors. `val_size` images of train are held out (seeded); with
    val_size=0 the test split doubles as the validation split. torchvision downloads (and checks)
    the archive when it is missing; when it can be neither found nor downloaded, an ImageFolder
    copy at `fallback` (e.g. the JPEG re-encoding of CIFAR-10) is used instead, with a warning."""
    local = Path(root).expanduser() / "cifar-10-batches-py"
    if not (local / "batches.meta").is_file():
        try:
            if not download:
                raise FileNotFoundError("data.download=false")
            from torchvision.datasets import CIFAR10

            CIFAR10(root, train=True, download=True)
        except Exception as e:  # offline (URLError), refused, corrupt archive ...
            why = "data.download=false" if not download else f"download failed ({type(e).__name__}: {e})"
            if fallback and Path(fallback).exists():
                log.warning(
                    f"CIFAR-10 not found in {str(local)!r} and {why}; using the ImageFolder copy "
                    f"at {fallback!r} (data.fallback) instead"
                )
                return load_image_folder(fallback, cache_dir, 32, val_size / 50000, seed)
            raise DataError(
                f"CIFAR-10 not found in {str(local)!r} and {why}. Get it: download {URL} and unpack it "
                f"into {root!r} (or set BIGMODEL_DATA_DIR / data.root to where it is), or train on an "
                "image folder with data=image_folder."
            ) from None
    classes = read_pickle(local / "batches.meta").get("label_names")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise DataError(f"{local / 'batches.meta'}: no list of label_names")
    x, y = read_batches(local, [f"data_batch_{i}" for i in range(1, 6)])
    splits: Splits = {"test": read_batches(local, ["test_batch"])}
    if val_size > 0:
        tr, va = seeded_split(len(y), val_size / len(y), seed)
        splits |= {"train": (x[tr], y[tr]), "val": (x[va], y[va])}
    else:
        splits |= {"train": (x, y), "val": splits["test"]}
    return splits, list(classes)


def cifar10(
    root: str,
    download: bool = True,
    val_size: NonNegativeInt = 5000,
    fallback: str | None = None,
    cache_dir: str = "~/.cache/bigmodel",
    batch_size: PositiveInt = 128,
    eval_batch_size: PositiveInt = 1000,
    augment: Augment | None = None,
    on_device: bool = False,
    mean: list[float] = CIFAR10_MEAN,
    std: list[PositiveFloat] = CIFAR10_STD,
    seed: int = 0,
    channels_last: bool = False,
) -> ImageData:
    """The CIFAR-10 data module (see ImageData for loaders and augmentation)."""
    load = functools.partial(load_cifar10, root, download, val_size, seed, fallback, cache_dir)
    return ImageData(
        load,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        augment=augment,
        mean=list(mean),
        std=list(std),
        on_device=on_device,
        seed=seed,
        channels_last=channels_last,
    )
