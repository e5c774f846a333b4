"""Every option of every config group composes, and what it describes can be built."""

import inspect
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from bigmodel.cli import config_dir
from bigmodel.train import trainer_config

CONFIGS = Path(config_dir())
# Sizes a data module would hand to the model: each model takes the ones its constructor names.
MODEL_ARGS = {"num_classes": 4, "in_channels": 3, "vocab_size": 50, "pad_idx": 0}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def test_configs_ship_with_the_package_lookup():
    assert (CONFIGS / "train.yaml").is_file()
    assert {"model", "data", "optimizer", "scheduler", "trainer", "logger", "callbacks", "experiment",
            "debug"} <= {p.name for p in CONFIGS.iterdir() if p.is_dir()}


def build_model(cfg_model):
    target = instantiate({"_target_": cfg_model._target_, "_partial_": True})
    params = inspect.signature(target.func).parameters
    return instantiate(cfg_model, **{k: v for k, v in MODEL_ARGS.items() if k in params})


@pytest.mark.parametrize("option", options("model"))
def test_model_configs_build(compose_train, option):
    model = build_model(compose_train([f"model={option}"]).model)
    assert isinstance(model, torch.nn.Module) and sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("option", options("data"))
def test_data_configs_instantiate(compose_train, option):
    dm = instantiate(compose_train([f"data={option}"]).data)
    for method in ("setup", "model_args", "loader", "metrics", "state_dict"):
        assert callable(getattr(dm, method)), method


@pytest.mark.parametrize("option", options("optimizer"))
@pytest.mark.parametrize("scheduler", options("scheduler"))
def test_optimizer_and_scheduler_configs(compose_train, option, scheduler):
    cfg = compose_train([f"optimizer={option}", f"scheduler={scheduler}"])
    opt = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(2, 2))])
    assert opt.param_groups[0]["lr"] == cfg.optimizer.lr
    if cfg.scheduler:
        sched = instantiate(cfg.scheduler)(opt, 100)
        for _ in range(10):
            opt.step()
            sched.step(1.0) if hasattr(sched, "monitor") else sched.step()  # plateau: at validation, on a metric
        assert 0 <= opt.param_groups[0]["lr"] <= cfg.optimizer.lr


@pytest.mark.parametrize("group", ["loss", "logger", "callbacks"])
def test_component_configs_instantiate(compose_train, group):
    for option in options(group):
        cfg = compose_train([f"{group}={option}"])
        node = cfg[group]
        objs = [instantiate(node)] if "_target_" in node else [instantiate(c) for c in node.values()]
        for obj in objs:
            assert obj is not None
            if hasattr(obj, "close"):
                obj.close()


@pytest.mark.parametrize("option", options("trainer") + ["debug=fast"])
def test_trainer_configs_validate(compose_train, option):
    override = option if "=" in option else f"trainer={option}"
    tcfg = trainer_config(compose_train([override]))
    assert tcfg.max_epochs >= 1


@pytest.mark.parametrize("option", options("experiment"))
def test_experiments_compose_and_build(compose_train, option):
    cfg = compose_train([f"experiment={option}"])
    assert cfg.name == option
    trainer_config(cfg)
    build_model(cfg.model)
    instantiate(cfg.data)
    instantiate(cfg.loss)


SHIPPED = [f"{g}={o}" for g in ("model", "data", "optimizer", "scheduler", "loss", "logger", "callbacks", "experiment")
           for o in options(g)]


@pytest.mark.parametrize("override", SHIPPED)
def test_shipped_configs_fit_their_targets_signatures(compose_train, override):
    from omegaconf import OmegaConf

    from bigmodel.config import check_targets

    cfg = OmegaConf.to_container(compose_train([override]), resolve=True)
    cfg.pop("hydra")  # Hydra's own nodes are Hydra's to check
    check_targets(cfg)


@pytest.mark.parametrize("override, message", [
    ("data.batch_size=abc", "data.batch_size='abc' is not a valid int"),
    ("optimizer.lr=abc", "optimizer.lr='abc' is not a valid float"),
    ("model.widths=abc", "model.widths='abc' is not a valid"),
    ("data.augment.hflip=maybe", "data.augment.hflip='maybe' is not a valid bool"),
    ("scheduler.warmup_steps=1.5", "scheduler.warmup_steps=1.5 is not a valid int"),
    ("+data.colour=1", "data.colour is not an argument of bigmodel.data.cifar10.cifar10; valid: .*batch_size"),
])
def test_bad_values_in_target_groups_name_the_key(compose_train, override, message):
    from omegaconf import OmegaConf

    from bigmodel.config import ConfigError, check_targets

    cfg = OmegaConf.to_container(compose_train([override]), resolve=True)
    cfg.pop("hydra")
    with pytest.raises(ConfigError, match=message):
        check_targets(cfg)
