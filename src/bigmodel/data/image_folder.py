"""Any ImageFolder layout (`train/<class>/*`, `test/<class>/*`, optional `val/`), from a folder or a
.tar.gz of one. Images are decoded once into a uint8 tensor cache, then served like CIFAR-10."""

import functools
import hashlib
import logging
import os
import shutil
import tarfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from bigmodel.atomic import save_atomic
from bigmodel.data.errors import DataError
from bigmodel.data.images import Augment, ImageData, Splits
from bigmodel.data.loading import seeded_split
from bigmodel.ranges import Fraction, PositiveFloat, PositiveInt

log = logging.getLogger("bigmodel")
ARCHIVES = (".tar.gz", ".tgz", ".tar")
EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif"}
# The formats Pillow may open (names as Pillow spells them): those of EXTENSIONS. Pillow would also
# open EPS (through Ghostscript, if installed) and dozens of rarer formats; an image file or upload is
# read as one of these or refused.
PIL_FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "GIF")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _archive_in(root: Path) -> Path | None:
    if root.is_file() and root.name.endswith(ARCHIVES):
        return root
    found = [p for p in root.iterdir() if p.name.endswith(ARCHIVES)] if root.is_dir() else []
    return found[0] if len(found) == 1 else None


def locate(root: str, cache_dir: str) -> Path:
    """The folder holding train/ and test/: `root` itself, or its archive unpacked once into cache_dir."""
    path = Path(root).expanduser()
    if (path / "train").is_dir():
        return path
    archive = _archive_in(path) if path.exists() else None
    if archive is None:
        raise DataError(
            f"data.root={root!r}: expected a folder with train/<class>/ and test/<class>/, or a .tar.gz of one"
        )
    st = archive.stat()  # a replaced or re-written archive unpacks into a new folder
    key = hashlib.sha1(f"{archive.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:10]
    target = Path(cache_dir).expanduser() / f"{archive.name.split('.')[0]}-{key}"
    if not (target / ".complete").exists():
        log.info(f"unpacking {archive} into {target} (once)")
        target.mkdir(parents=True, exist_ok=True)
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(target, filter="data")
        except (tarfile.TarError, EOFError, OSError) as e:  # truncated, not a tar, unreadable, disk full
            shutil.rmtree(target, ignore_errors=True)  # no half-unpacked folder is left to be mistaken for data
            why = (
                "it ends early: truncated"
                if isinstance(e, EOFError)
                else e.strerror
                if isinstance(e, OSError)
                else "not a tar archive, or a damaged one"
            )
            raise DataError(
                f"{archive}: cannot unpack it ({why}); expected a complete .tar.gz of "
                "train/<class>/ and test/<class>/ folders"
            ) from None
        (target / ".complete").touch()
    inner = [p.parent for p in target.glob("*/train")] + ([target] if (target / "train").is_dir() else [])
    if not inner:
        raise DataError(f"archive {str(archive)!r} has no train/<class>/ folder")
    return inner[0]


def fit(img: torch.Tensor, size: int) -> torch.Tensor:
    """A decoded image (3, H, W) uint8 as (size, size, 3): how every image reaches an image model."""
    from torchvision.transforms.functional import resize

    if img.shape[1:] != (size, size):
        img = resize(img, [size, size], antialias=True)
    return img.permute(1, 2, 0)


def _decode(path: Path, size: int) -> torch.Tensor:
    """(size, size, 3) uint8. JPEG through torchvision (libjpeg-turbo, the fast path); everything else
    through Pillow, PNG included: torchvision's PNG decoder crashes the process on some damaged files
    (a wrong zlib checksum), where Pillow raises."""
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.functional import pil_to_tensor

    with open(path, "rb") as f:
        is_jpeg = f.read(2) == b"\xff\xd8"
    if not is_jpeg:
        return fit(_decode_pil(path, pil_to_tensor), size)
    try:
        img = decode_image(str(path), mode=ImageReadMode.RGB)  # (3, H, W) uint8
    except (RuntimeError, OSError):
        img = _decode_pil(path, pil_to_tensor)
    return fit(img, size)


def _decode_pil(path: Path, pil_to_tensor) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path, formats=PIL_FORMATS) as im:
            return pil_to_tensor(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else "not an image file"
        raise DataError(
            f"{path}: cannot read it as an image ({why}); remove it from the image folder or replace it with a JPEG/PNG"
        ) from None


def _image_files(folder: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """(file, class index) of folder/<class>/*; a class train/ does not have is an error (its images
    would be dropped), files that are not images by name are skipped with a warning."""
    extra = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in classes)
    if extra:
        raise DataError(f"{folder}: class folder(s) {extra} are not in train/ (classes: {classes})")
    files: list[tuple[Path, int]] = []
    skipped: list[tuple[Path, int]] = []
    for i, c in enumerate(classes):
        for p in sorted((folder / c).iterdir()) if (folder / c).is_dir() else []:
            if not p.name.startswith("."):  # .DS_Store and friends
                (files if p.suffix.lower() in EXTENSIONS else skipped).append((p, i))
    if skipped:
        log.warning(
            f"{folder}: skipped {len(skipped)} file(s) that are not images by their name "
            f"(first: {skipped[0][0].name}; read: {', '.join(sorted(EXTENSIONS))})"
        )
    return files


def read_split(folder: Path, classes: list[str], size: int, workers: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    files = _image_files(folder, classes) if folder.is_dir() else []
    if not files:
        raise DataError(f"no images in {str(folder)!r} (expected {folder}/<class>/*.jpg)")
    with ThreadPoolExecutor(workers) as pool:
        images = list(pool.map(lambda f: _decode(f[0], size), files, chunksize=256))
    return torch.stack(images), torch.tensor([i for _, i in files], dtype=torch.long)


def _fingerprint(base: Path) -> str:
    """Short hash of the folder path and of every image under <split>/<class>/ with its size and mtime:
    adding, removing, renaming or rewriting an image (or a class) changes it. Only stats, no decoding."""
    h = hashlib.sha1(str(base.resolve()).encode())
    entries = []
    for split in ("train", "val", "test"):
        if not (base / split).is_dir():
            continue
        with os.scandir(base / split) as classes:
            class_dirs = [c for c in classes if c.is_dir()]
        for c in class_dirs:
            with os.scandir(c.path) as files:
                for f in files:
                    if os.path.splitext(f.name)[1].lower() in EXTENSIONS:
                        st = f.stat()
                        entries.append(f"{split}/{c.name}/{f.name}\t{st.st_size}\t{st.st_mtime_ns}")
    for e in sorted(entries):
        h.update(e.encode() + b"\n")
    return h.hexdigest()[:10]


def load_image_folder(
    root: str, cache_dir: str, image_size: int, val_fraction: float, seed: int
) -> tuple[Splits, list[str]]:
    base = locate(root, cache_dir)
    classes = sorted(p.name for p in (base / "train").iterdir() if p.is_dir())
    cache = Path(cache_dir).expanduser() / f"{base.name}-{_fingerprint(base)}-{image_size}px.pt"
    if cache.exists():
        splits = torch.load(cache, weights_only=True)  # tensors only: a cache file never runs code
    else:
        log.info(f"decoding {base} at {image_size}px into {cache} (once)")
        splits = {s: read_split(base / s, classes, image_size) for s in ("train", "val", "test") if (base / s).is_dir()}
        save_atomic(splits, cache)  # temp file + rename: a crash or a concurrent reader never sees half a file
    if "test" not in splits:
        raise DataError(f"{str(base)!r} has no test/<class>/ folder")
    if "val" not in splits and val_fraction <= 0:
        splits["val"] = splits["test"]  # no held-out data asked for: validate on the test split
    elif "val" not in splits:
        x, y = splits["train"]
        tr, va = seeded_split(len(y), val_fraction, seed)
        splits |= {"train": (x[tr], y[tr]), "val": (x[va], y[va])}
    return splits, classes


def image_folder(
    root: str,
    cache_dir: str,
    image_size: PositiveInt = 32,
    val_fraction: Fraction = 0.1,
    batch_size: PositiveInt = 128,
    eval_batch_size: PositiveInt = 1000,
    augment: Augment | None = None,
    on_device: bool = False,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[PositiveFloat] = (0.25, 0.25, 0.25),
    seed: int = 0,
    channels_last: bool = False,
) -> ImageData:
    """The ImageFolder data module (see ImageData for loaders and augmentation)."""
    load = functools.partial(load_image_folder, root, cache_dir, image_size, val_fraction, seed)
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
