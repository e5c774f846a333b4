"""Checkpoints: exact resume (weights and logged curve), atomic writes, clear errors, ckpt_path=auto."""

import os

import pytest
import torch

from bigmodel import checkpoint
from bigmodel.callbacks import ModelCheckpoint
from bigmodel.checkpoint import CheckpointError, check_resumable, config_diff, load_model_state, newest
from helpers import StopAt, make_trainer


def _ckpt(tmp_path):
    return {"model_checkpoint": ModelCheckpoint(str(tmp_path), monitor="val/acc", mode="max")}


@pytest.mark.parametrize(
    "stop_at,config",
    [
        (5, {}),  # mid-epoch (8 batches per epoch)
        (8, {}),  # exactly at an epoch boundary, before its validation
        (3, {"accumulate_grad_batches": 3}),  # accumulation: 3 batches per step, epochs end on a partial step
        (4, {"val_check_interval": 3}),
    ],
)
def test_stop_and_resume_equals_uninterrupted(tmp_path, stop_at, config):
    straight = make_trainer(max_steps=12, **config)
    straight.fit()

    first = make_trainer(max_steps=12, callbacks={**_ckpt(tmp_path), "stop": StopAt(stop_at)}, **config)
    first.fit()
    assert first.global_step == stop_at

    resumed = make_trainer(max_steps=12, model_seed=123, callbacks=_ckpt(tmp_path / "b"), **config)
    resumed.fit(ckpt_path=str(tmp_path / "last.pt"))

    assert resumed.global_step == straight.global_step == 12
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    for name in ("train/loss", "train/acc", "val/loss", "lr"):  # the two halves log the same curve
        assert first.logger.curve(name) + resumed.logger.curve(name) == straight.logger.curve(name), name


def test_checkpoint_contents(tmp_path):
    trainer = make_trainer(max_steps=3, callbacks=_ckpt(tmp_path))
    trainer.checkpoint_extras = {"config": {"seed": 0}}
    trainer.fit()
    ckpt = checkpoint.load(tmp_path / "last.pt")
    assert {"model", "optimizer", "scheduler", "scaler", "progress", "rng", "callbacks", "config"} <= set(ckpt)
    assert ckpt["progress"]["global_step"] == 3
    assert (tmp_path / "best.pt").is_file()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save_atomic({"format": checkpoint.FORMAT_VERSION, "v": 1}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_atomic({"v": 2}, path)
    monkeypatch.undo()
    assert checkpoint.load(path)["v"] == 1
    assert os.listdir(tmp_path) == ["last.pt"]


def test_corrupt_checkpoint_error_names_the_file(tmp_path):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match="last.pt.*not a readable checkpoint"):
        checkpoint.load(bad)
    with pytest.raises(checkpoint.CheckpointError, match="no such file"):
        checkpoint.load(tmp_path / "missing.pt")


def test_mismatched_checkpoint_names_what_differs(tmp_path):
    trainer = make_trainer(max_steps=1, callbacks=_ckpt(tmp_path))
    trainer.fit()
    other = make_trainer(bn=False)
    with pytest.raises(checkpoint.CheckpointError, match="does not fit this model: missing .* unexpected"):
        other.load_checkpoint(str(tmp_path / "last.pt"))
    config = {"model": {"_target_": "CNN", "widths": [8], "dropout": 0.2}, "optimizer": {"_target_": "SGD"}}
    saved = {"config": config}
    checkpoint.check_resumable(saved, config | {"model": {**config["model"], "dropout": 0.5}}, "last.pt")  # fine
    with pytest.raises(checkpoint.CheckpointError, match=r"model.widths: \[8\] in the checkpoint, \[16\] now"):
        checkpoint.check_resumable(saved, config | {"model": {**config["model"], "widths": [16]}}, "last.pt")
    with pytest.raises(checkpoint.CheckpointError, match="optimizer: SGD in the checkpoint, AdamW now"):
        checkpoint.check_resumable(saved, config | {"optimizer": {"_target_": "AdamW"}}, "last.pt")
    with pytest.raises(checkpoint.CheckpointError, match="optimizer: None in the checkpoint, SGD now"):
        checkpoint.check_resumable({"config": {"model": config["model"]}}, config, "last.pt")
    wider = torch.nn.Linear(3, 3)
    with pytest.raises(checkpoint.CheckpointError, match="shape mismatch weight"):
        checkpoint.load_model_state(wider, {"weight": torch.zeros(2, 3), "bias": torch.zeros(3)})


def test_newest_finds_the_latest_run(tmp_path):
    old = tmp_path / "runs" / "a" / "checkpoints" / "last.pt"
    new = tmp_path / "runs" / "b" / "checkpoints" / "last.pt"
    for p in (old, new):
        p.parent.mkdir(parents=True)
        p.write_bytes(b"x")
    os.utime(old, (1, 1))
    assert checkpoint.newest(tmp_path) == new
    assert checkpoint.newest(tmp_path, exclude=str(tmp_path / "runs" / "b")) == old
    with pytest.raises(checkpoint.CheckpointError, match="ckpt_path=auto"):
        checkpoint.newest(tmp_path / "nothing")


def test_ckpt_path_auto_picks_own_folder_then_newest_else_fresh(compose_train, tmp_path):
    import os

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf, open_dict

    from bigmodel.train import resolve_ckpt_path

    def touch(path, mtime):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        os.utime(path, (mtime, mtime))

    cfg = compose_train(["name=exp", "ckpt_path=auto"])
    assert resolve_ckpt_path(cfg) is None  # nothing to resume: a fresh start, not an error
    older, newer = (tmp_path / "logs" / "exp" / "runs" / r / "checkpoints" / "last.pt" for r in ("a", "b"))
    touch(older, 1_000), touch(newer, 2_000)
    assert resolve_ckpt_path(cfg) == str(newer)
    own = tmp_path / "run" / "checkpoints" / "last.pt"  # the run folder already has one: a requeued job
    touch(own, 500)
    assert resolve_ckpt_path(cfg) == str(own)
    own.unlink()
    OmegaConf.set_readonly(cfg.hydra, False)
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
    HydraConfig.instance().set_config(cfg)
    assert resolve_ckpt_path(cfg) is None  # a sweep job never takes a sibling's or another run's checkpoint


# ---------------------------------------------------------------- checkpoint.py helpers on their own
def test_wrapped_model_prefixes_are_stripped():
    src = torch.nn.Linear(2, 3)
    for prefix in ("module.", "_orig_mod.", "_orig_mod.module."):  # DDP, torch.compile, both
        dst = torch.nn.Linear(2, 3)
        load_model_state(dst, {prefix + k: v for k, v in src.state_dict().items()})
        assert torch.equal(dst.weight, src.weight) and torch.equal(dst.bias, src.bias), prefix


def test_any_one_kind_of_mismatch_is_refused_with_a_short_list():
    model = torch.nn.Linear(2, 3)
    state = model.state_dict()
    with pytest.raises(CheckpointError, match=r"does not fit this model: missing \['bias'\]$"):
        load_model_state(model, {"weight": state["weight"]})
    with pytest.raises(CheckpointError, match=r"does not fit this model: unexpected \['extra'\]$"):
        load_model_state(model, {**state, "extra": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"^checkpoint '' does not fit this model"):  # no path given
        load_model_state(model, {})
    many = torch.nn.Sequential(*[torch.nn.Linear(1, 1, bias=False) for _ in range(6)])
    with pytest.raises(
        CheckpointError,
        match=r"missing \['0.weight', '1.weight', '2.weight', '3.weight', "
        r"'4.weight'\] \.\.\.$",
    ):
        load_model_state(many, {})
    few = torch.nn.Sequential(*[torch.nn.Linear(1, 1, bias=False) for _ in range(5)])
    with pytest.raises(CheckpointError, match=r"'4.weight'\]$"):
        load_model_state(few, {})


def test_config_diff_names_each_changed_leaf():
    assert config_diff({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}}, "m") == [("m.b.c", 2, 3)]
    assert config_diff({"a": 1}, {"a": 1, "b": 2}, "m") == [("m.b", None, 2)]  # keys of either side
    assert config_diff({"a": 1}, None, "m") == [("m", {"a": 1}, None)]
    assert config_diff({1: "x", "b": 2}, {1: "y", "b": 3}, "m") == [("m.1", "x", "y"), ("m.b", 2, 3)]  # mixed keys


def test_check_resumable_needs_both_configs_and_lists_every_difference():
    saved = {"config": {"model": {"widths": [8]}, "optimizer": {"_target_": "SGD"}}}
    check_resumable(saved, None, "p")  # nothing to compare with
    check_resumable({}, {"model": {"widths": [16]}}, "p")
    with pytest.raises(
        CheckpointError,
        match=r"^ckpt_path='p' does not fit this run: model.widths: \[8\] in the "
        r"checkpoint, \[16\] now; optimizer: SGD in the checkpoint, AdamW now$",
    ):
        check_resumable(saved, {"model": {"widths": [16]}, "optimizer": {"_target_": "AdamW"}}, "p")


def test_newest_goes_by_write_time_not_name(tmp_path):
    a, b = (tmp_path / r / "checkpoints" / "last.pt" for r in ("a", "b"))
    for p, t in ((a, 2_000), (b, 1_000)):
        p.parent.mkdir(parents=True)
        p.write_bytes(b"")
        os.utime(p, (t, t))
    assert newest(tmp_path) == a
    with pytest.raises(CheckpointError, match=f"under {str(tmp_path / 'x')!r} to resume from"):
        newest(tmp_path / "x")


def test_rng_state_round_trip():
    import random

    state = checkpoint.rng_state()
    first = (random.random(), torch.rand(3))
    checkpoint.set_rng_state(state)
    again = (random.random(), torch.rand(3))
    assert first[0] == again[0] and torch.equal(first[1], again[1])


def test_save_atomic_makes_folders_and_writes_beside_the_target(tmp_path, monkeypatch):
    target = tmp_path / "a" / "b" / "last.pt"
    checkpoint.save_atomic({"format": checkpoint.FORMAT_VERSION, "v": 1}, target)  # folders made on the way
    assert checkpoint.load(target)["v"] == 1
    during = []

    def look_then_fail(obj, f):
        during.extend(sorted(os.listdir(target.parent)))
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", look_then_fail)
    with pytest.raises(OSError):
        checkpoint.save_atomic({}, target)
    # the temporary file sits beside the target (so the rename is atomic), hidden, named after it
    assert len(during) == 2 and during[1] == "last.pt"
    assert during[0].startswith(".last.pt.") and during[0].endswith(".tmp")
    assert os.listdir(target.parent) == ["last.pt"]  # and is removed when writing fails


def test_load_errors_name_the_file_and_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match=f"^ckpt_path={str(tmp_path / 'none.pt')!r}: no such file$"):
        checkpoint.load(tmp_path / "none.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match=f"^ckpt_path={str(bad)!r} is not a readable checkpoint \\(.*\\w+Error: "):
        checkpoint.load(bad)
    bad.write_bytes(b"\x80\x02garbage")  # a pickle header: refused as a bare pickle, never unpickled
    with pytest.raises(
        CheckpointError, match=f"^ckpt_path={str(bad)!r} is not a bigmodel checkpoint: it is a bare pickle"
    ):
        checkpoint.load(bad)
    for name, obj in (("list.pt", [1, 2]), ("other.pt", {"format": 99})):
        torch.save(obj, tmp_path / name)
        with pytest.raises(
            CheckpointError,
            match=f"^ckpt_path={str(tmp_path / name)!r} is not a bigmodel checkpoint "
            f"\\(format {checkpoint.FORMAT_VERSION}\\)$",
        ):
            checkpoint.load(tmp_path / name)


def test_mismatch_lists_are_cut_at_five():
    many = torch.nn.Sequential(*[torch.nn.Linear(1, 1, bias=False) for _ in range(6)])
    extra = {f"x{i}": torch.zeros(1) for i in range(6)}
    full = dict(many.state_dict())
    with pytest.raises(CheckpointError, match=r"unexpected \['x0', 'x1', 'x2', 'x3', 'x4'\] \.\.\.$"):
        load_model_state(many, {**full, **extra})
    with pytest.raises(CheckpointError, match=r"unexpected \['x0', 'x1', 'x2', 'x3', 'x4'\]$"):
        load_model_state(many, {**full, **{k: v for k, v in extra.items() if k != "x5"}})
    wrong = {k: torch.zeros(2, 1) for k in full}
    with pytest.raises(
        CheckpointError, match=r"shape mismatch ([0-9]\.weight: checkpoint \(2, 1\) vs model \(1, 1\)(; |$)){5}$"
    ):
        load_model_state(many, wrong)


# ---------------------------------------------------------------- Trainer.state_dict / load_checkpoint
def test_resume_checks_the_config_and_names_the_file(tmp_path):
    trainer = make_trainer(max_steps=2, callbacks=_ckpt(tmp_path))
    trainer.checkpoint_extras = {"config": {"model": {"widths": [8]}, "optimizer": {"_target_": "SGD"}}}
    trainer.fit()
    path = str(tmp_path / "last.pt")
    other = make_trainer()
    other.checkpoint_extras = {"config": {"model": {"widths": [16]}, "optimizer": {"_target_": "SGD"}}}
    with pytest.raises(CheckpointError, match=f"^ckpt_path={path!r} does not fit this run: model.widths"):
        other.load_checkpoint(path)
    with pytest.raises(CheckpointError, match=f"^checkpoint {path!r} does not fit this model"):
        make_trainer(bn=False).load_checkpoint(path)
    one_group = make_trainer()
    one_group.optimizer = torch.optim.SGD(one_group.model.parameters(), lr=0.1)  # the checkpoint has two groups
    with pytest.raises(CheckpointError, match=f"^checkpoint {path!r}: optimizer state does not fit optimizer=SGD \\("):
        one_group.load_checkpoint(path)


def test_resume_into_fewer_parts_and_the_message(tmp_path, caplog):
    trainer = make_trainer(max_steps=3, callbacks=_ckpt(tmp_path))
    trainer.fit()
    bare = make_trainer(max_steps=5)
    bare.scheduler_factory = None  # no scheduler, no callbacks: their saved states are skipped
    with caplog.at_level("INFO", logger="bigmodel"):
        bare.fit(ckpt_path=str(tmp_path / "last.pt"))
    assert bare.global_step == 5 and bare.scheduler is None
    assert f"resumed from {tmp_path / 'last.pt'} at epoch 0, step 3" in caplog.text
    no_opt = make_trainer()
    no_opt.optimizer, no_opt.scheduler = None, None
    state = no_opt.state_dict()
    assert state["optimizer"] is None and state["scheduler"] is None


def test_fp16_resume_restores_the_loss_scale(tmp_path):
    from bigmodel.config import Precision
    from test_trainer import InfGradAt

    first = make_trainer(
        max_steps=6, precision=Precision.fp16, bn=False, callbacks={**_ckpt(tmp_path), "stop": StopAt(2)}
    )
    first.model[-1].weight.register_hook(InfGradAt(1))  # one overflow: the scale halves
    first.fit()
    assert first.scaler.get_scale() == 2.0**15
    resumed = make_trainer(max_steps=6, precision=Precision.fp16, bn=False)
    resumed.load_checkpoint(str(tmp_path / "last.pt"))
    assert resumed.scaler.get_scale() == 2.0**15 and resumed.global_step == 2


def test_a_stop_request_finishes_the_step_then_stops(caplog):
    trainer = make_trainer(max_steps=5)
    with caplog.at_level("INFO", logger="bigmodel"):
        trainer._request_stop("SIGTERM")
    assert trainer.should_stop is True and trainer.interrupted is True
    assert "received SIGTERM: finishing this step, then saving last.pt" in caplog.text
    trainer.fit()
    assert trainer.global_step == 0  # stopped before any step: nothing to finish
