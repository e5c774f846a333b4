"""Shared fixtures: compose configs like the CLI does, and run the CLI in a subprocess."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from bigmodel.cli import config_dir
from bigmodel.config import register_schemas

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def compose_cfg(config_name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """The config `bigmodel <config_name> <overrides>` would run with, outputs under output_dir."""
    register_schemas()
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
    full_env = {**os.environ, "BIGMODEL_LOG_DIR": str(cwd / "logs"), "BIGMODEL_CACHE_DIR": str(cwd / "cache"),
                "BIGMODEL_DATA_DIR": str(cwd / "data"), "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "bigmodel", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def compose_train(tmp_path):
    """compose_train(overrides) -> the train config with every output under tmp_path."""

    def make(overrides: list[str]) -> DictConfig:
        return compose_cfg("train", [f"paths.log_dir={tmp_path}/logs", f"paths.cache_dir={tmp_path}/cache",
                                     *overrides], tmp_path / "run")

    yield make
    GlobalHydra.instance().clear()
