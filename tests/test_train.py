"""The wiring in train(): what the test split is evaluated on."""

import torch
import torch.nn.functional as F
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

import bigmodel.train as train_module
from bigmodel.checkpoint import load, load_model_state
from conftest import compose_cfg, write_fake_cifar10


def mean_test_loss(cfg, state) -> float:
    """Cross-entropy over the whole test split of a fresh model holding `state`, computed here."""
    dm = instantiate(cfg.data)
    dm.setup()
    model = instantiate(cfg.model, **dm.model_args())
    load_model_state(model, state)
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for x, y in dm.loader("test"):
            total += F.cross_entropy(model(x), y, reduction="sum").item()
            n += len(y)
    return total / n


def test_the_test_split_is_evaluated_on_best_pt(compose_train, tmp_path, monkeypatch):
    from bigmodel.train import train

    write_fake_cifar10(tmp_path / "data" / "cifar10")
    (tmp_path / "run").mkdir()
    cfg = compose_train(
        [
            f"paths.data_dir={tmp_path}/data",
            "data.download=false",
            "data.val_size=20",
            "data.eval_batch_size=16",
            "trainer=debug",
            "trainer.max_steps=6",
            "trainer.limit_train_batches=-1",
            "trainer.limit_val_batches=-1",
            "trainer.limit_test_batches=-1",
            "trainer.val_check_interval=1",
            "logger=none",
            "callbacks=model_checkpoint",
            "callbacks.model_checkpoint.monitor=val/loss",
            "callbacks.model_checkpoint.mode=min",
            "optimizer.lr=0.5",
            "model.stem_width=4",
            "model.widths=[8]",
            "optimized_metric=test/loss",
        ]
    )
    test_loss = train(cfg)
    best, last = (load(str(tmp_path / "run" / "checkpoints" / f"{n}.pt")) for n in ("best", "last"))
    assert best["progress"]["global_step"] < last["progress"]["global_step"] == 6  # best is not the last
    on_best, on_last = mean_test_loss(cfg, best["model"]), mean_test_loss(cfg, last["model"])
    assert abs(on_best - on_last) > 1e-3
    assert abs(test_loss - on_best) < 1e-5

    # `bigmodel eval` measures the same on its own Runtime and the shared evaluation loop: no Trainer
    GlobalHydra.instance().clear()
    ev = compose_cfg(
        "eval",
        [f"ckpt_path={tmp_path}/run/checkpoints/best.pt", "trainer.device=cpu", "trainer.limit_test_batches=-1"],
        tmp_path / "eval",
    )
    GlobalHydra.instance().clear()
    monkeypatch.setattr(train_module, "Trainer", None)  # building one would fail
    assert abs(train_module.evaluate(ev)["test/loss"] - on_best) < 1e-5


def test_an_optimized_metric_the_run_does_not_log_is_refused_before_training(compose_train, tmp_path):
    import pytest

    from bigmodel.config import ConfigError
    from bigmodel.train import train

    write_fake_cifar10(tmp_path / "data" / "cifar10")
    (tmp_path / "run").mkdir()
    overrides = [f"paths.data_dir={tmp_path}/data", "data.download=false", "data.val_size=20", "trainer=debug"]
    cfg = compose_train(
        [*overrides, "logger=none", "model.stem_width=4", "model.widths=[8]", "optimized_metric=val/bogus"]
    )
    with pytest.raises(
        ConfigError, match=r"optimized_metric='val/bogus' is not a metric this run logs; valid: \['val/loss'"
    ):
        train(cfg)
    assert not list((tmp_path / "run").rglob("*.pt"))
