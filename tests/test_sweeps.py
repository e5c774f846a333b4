"""Sweeps: `bigmodel train -m` and `hparams_search=optuna` write their runs under one sweep folder
whose TensorBoard view compares them (HParams with each run's hyperparameters and final metrics)."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
from tensorboard.plugins.hparams import plugin_data_pb2

from conftest import run_cli, write_fake_cifar10

TINY = [
    "model.stem_width=4",
    "model.widths=[8]",
    "data.download=false",
    "data.val_size=20",
    "data.batch_size=16",
    "debug=fast",
]


def sweep_dir(cwd: Path) -> Path:
    sweeps = list((cwd / "logs").glob("*/multirun/*"))
    assert len(sweeps) == 1, sweeps
    return sweeps[0]


def hparams_by_run(folder: Path) -> dict[str, dict]:
    """What TensorBoard's HParams tab shows for `folder`: run -> (hyperparameters, declared metric tags)."""
    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(folder))
    mux.Reload()
    out = {}
    for run, tags in mux.PluginRunToTagToContent("hparams").items():
        if "_hparams_/session_start_info" not in tags:
            continue
        info = plugin_data_pb2.HParamsPluginData.FromString(tags["_hparams_/session_start_info"])
        values = {
            k: v.number_value if v.HasField("number_value") else v.string_value
            for k, v in info.session_start_info.hparams.items()
        }
        experiment = plugin_data_pb2.HParamsPluginData.FromString(tags["_hparams_/experiment"]).experiment
        metrics = {m.name.tag for m in experiment.metric_infos}
        out[run] = {"hparams": values, "metrics": metrics}
    return out


@pytest.mark.slow
def test_multirun_runs_share_one_sweep_folder_with_hparams(tmp_path):
    write_fake_cifar10(tmp_path / "data" / "cifar10")
    out = run_cli("train", "-m", *TINY, "optimizer.lr=1e-3,3e-3", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    sweep = sweep_dir(tmp_path)
    assert sweep.parent.parent.name == "cnn-cifar10"  # ${name} resolves for the sweep folder
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]

    runs = hparams_by_run(sweep)
    assert sorted(runs) == ["0/optimizer.lr=0.001", "1/optimizer.lr=0.003"]  # trials named by what the sweep varies
    assert sorted(r["hparams"]["optimizer.lr"] for r in runs.values()) == pytest.approx([1e-3, 3e-3])
    for r in runs.values():
        assert r["hparams"]["model.stem_width"] == 4
        assert {"val/acc", "val/loss", "test/acc"} <= r["metrics"]
    assert f"bigmodel tensorboard --logdir {sweep}" in out.stdout


def test_hparams_search_optuna_composes(compose_train):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    cfg = compose_train(["hparams_search=optuna"])
    assert cfg.optimized_metric == "val/acc"
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert set(sweeper.params) == {"optimizer.lr", "optimizer.weight_decay"}
    assert cfg.hydra.mode.name == "MULTIRUN"


def test_slurm_launcher_composes_with_documented_options(compose_train):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = compose_train(
        [
            "hydra/launcher=submitit_slurm",
            "hydra.launcher.nodes=2",
            "hydra.launcher.tasks_per_node=4",
            "hydra.launcher.gpus_per_node=4",
            "hydra.launcher.partition=gpu",
            "hydra.launcher.timeout_min=600",
        ]
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)


@pytest.mark.slow
def test_optuna_search_logs_the_best_trial(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    write_fake_cifar10(tmp_path / "data" / "cifar10")
    out = run_cli("train", *TINY, "hparams_search=optuna", "hydra.sweeper.n_trials=2", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    sweep = sweep_dir(tmp_path)
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert set(best.best_params) == {"optimizer.lr", "optimizer.weight_decay"}
    assert 0.0 <= best.best_value <= 1.0  # val/acc
    assert "Best parameters:" in out.stdout and "best trial" in out.stdout
    runs = hparams_by_run(sweep)
    assert len(runs) == 2
    assert max(r["hparams"]["optimizer.lr"] for r in runs.values()) <= 1e-2  # drawn from the search space
