"""Shared fixtures: compose configs like the CLI does, and run the CLI in a subprocess."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from bigmodel.cli import config_dir
from bigmodel.config import register_schemas
from bigmodel.rundir import register_resolver

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def one_thread():
    """One torch thread for the test: tiny models run fastest on one, and two spin-wait badly when
    other jobs share the CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def compose_cfg(config_name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """The config `bigmodel <config_name> <overrides>` would run with, outputs under output_dir."""
    register_schemas()
    register_resolver()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=config_dir()):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m bigmodel <args>` in cwd, runs written under cwd/logs, no network needed."""
    full_env = {
        **os.environ,
        "BIGMODEL_LOG_DIR": str(cwd / "logs"),
        "BIGMODEL_CACHE_DIR": str(cwd / "cache"),
        "BIGMODEL_DATA_DIR": str(cwd / "data"),
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "bigmodel", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def compose_train(tmp_path):
    """compose_train(overrides) -> the train config with every output under tmp_path."""

    def make(overrides: list[str]) -> DictConfig:
        return compose_cfg(
            "train",
            [f"paths.log_dir={tmp_path}/logs", f"paths.cache_dir={tmp_path}/cache", *overrides],
            tmp_path / "run",
        )

    yield make
    GlobalHydra.instance().clear()


def write_fake_cifar10(root: Path, n_train: int = 100, n_test: int = 40, seed: int = 0) -> Path:
    """A small CIFAR-10 in torchvision's on-disk format:
    root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}."""
    import pickle

    import numpy as np

    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": n_train // 5}, f)
    for name, n in [*[(f"data_batch_{i}", n_train // 5) for i in range(1, 6)], ("test_batch", n_test)]:
        labels = rng.integers(0, 10, n).tolist()
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        for i, y in enumerate(labels):  # make the classes learnable: a class-dependent brightness
            data[i] = (data[i] // 4 + y * 20).astype(np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels, "batch_label": name}, f)
    return folder


def tiny_image_data(
    n: int = 64, num_classes: int = 4, size: int = 8, batch_size: int = 8, augment: bool = True, seed: int = 0
):
    """An in-memory ImageData with random (but learnable) images; no files."""
    import torch

    from bigmodel.data.images import Augment, ImageData

    def load():
        g = torch.Generator().manual_seed(seed)
        splits = {}
        for split, m in (("train", n), ("val", n // 2), ("test", n // 2)):
            y = torch.randint(0, num_classes, (m,), generator=g)
            x = torch.randint(0, 40, (m, size, size, 3), generator=g, dtype=torch.uint8) + (y * 60).view(
                -1, 1, 1, 1
            ).to(torch.uint8)
            splits[split] = (x, y)
        return splits, [f"c{i}" for i in range(num_classes)]

    return ImageData(
        load,
        batch_size=batch_size,
        eval_batch_size=16,
        augment=Augment(crop_padding=1) if augment else None,
        mean=[0.5] * 3,
        std=[0.25] * 3,
        on_device=False,
        seed=seed,
    )
