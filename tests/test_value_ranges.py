"""Every number is checked against its range before any work: one line naming the key, the value and
what is valid, a non-zero exit, no traceback, nothing trained."""

import math
import re
from typing import Annotated

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from bigmodel.config import ConfigError, check_targets
from bigmodel.ranges import MultipleOf, Range, not_a_multiple, out_of_range
from bigmodel.train import trainer_config
from conftest import compose_cfg, run_cli
from test_predict import ckpt  # noqa: F401  (a small trained text checkpoint, module-scoped)


def first_error(compose_train, overrides: list[str]) -> str:
    """The error train() raises for `overrides` before building anything ("" for none)."""
    cfg = compose_train(overrides)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved.pop("hydra")
    try:
        trainer_config(cfg)
        check_targets(resolved)
    except ConfigError as e:
        return str(e)
    return ""


# ---------------------------------------------------------------- the Range annotation itself
@pytest.mark.parametrize(
    "rng, text",
    [
        (Range(ge=1), ">= 1"),
        (Range(gt=0), "> 0"),
        (Range(ge=0, lt=1), "in [0, 1)"),
        (Range(ge=0, le=1), "in [0, 1]"),
        (Range(lt=0.5), "< 0.5"),
        (Range(ge=1, special={-1: "all"}), "-1 (all) or >= 1"),
    ],
)
def test_range_says_what_is_valid(rng, text):
    assert str(rng) == text


@pytest.mark.parametrize(
    "rng, inside, outside",
    [
        (Range(ge=1), [1, 2, 10**9], [0, -1, 0.5]),
        (Range(gt=0), [1e-12, 3.0], [0, -1e-9]),
        (Range(ge=0, lt=1), [0, 0.999], [1, 1.0, -0.1]),
        (Range(ge=1, special={-1: "all"}), [-1, 1, 7], [0, -2, -5]),
        (Range(ge=0), [0.0], [math.nan, math.inf, -math.inf]),  # never NaN or infinite
    ],
)
def test_range_contains(rng, inside, outside):
    assert all(v in rng for v in inside) and not any(v in rng for v in outside)


def test_lists_are_checked_element_by_element_and_unannotated_numbers_not_at_all():
    hint = list[Annotated[float, Range(gt=0)]]
    assert out_of_range("data.std", [0.2, 0.2], hint) is None
    assert out_of_range("data.std", [0.2, 0.0], hint) == "data.std=[0.2, 0.0] is out of range; valid: each value > 0"
    assert out_of_range("seed", -7, int) is None
    assert out_of_range("x", None, Annotated[int, Range(ge=1)] | None) is None  # None is the type check's job


def test_multiple_of_names_both_keys():
    hints = {"n_embd": Annotated[int, MultipleOf("n_head")]}
    assert not_a_multiple(hints, {"n_embd": 384, "n_head": 6}, "model.") is None
    assert (
        not_a_multiple(hints, {"n_embd": 32, "n_head": 5}, "model.")
        == "model.n_embd=32 must be a multiple of model.n_head=5"
    )


# ---------------------------------------------------------------- composed configs, as train() checks them
BAD = [
    # (overrides, the one line expected)
    (["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches=0 is out of range; valid: >= 1"),
    (["trainer.max_steps=-5"], "trainer.max_steps=-5 is out of range; valid: -1 (no limit) or >= 1"),
    (["trainer.max_steps=0"], "trainer.max_steps=0 is out of range; valid: -1 (no limit) or >= 1"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0 is out of range; valid: >= 1"),
    (["trainer.val_check_interval=-1"], "trainer.val_check_interval=-1 is out of range; valid: >= 0"),
    (["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val=-1.0 is out of range; valid: >= 0"),
    (["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps=0 is out of range; valid: >= 1"),
    (["trainer.limit_train_batches=0"], "trainer.limit_train_batches=0 is out of range; valid: -1 (all) or >= 1"),
    (["trainer.limit_val_batches=-2"], "trainer.limit_val_batches=-2 is out of range; valid: -1 (all) or >= 1"),
    (["trainer.limit_test_batches=0"], "trainer.limit_test_batches=0 is out of range; valid: -1 (all) or >= 1"),
    (["trainer.devices=0"], "trainer.devices=0 is out of range; valid: >= 1"),
    (["trainer.num_threads=-1"], "trainer.num_threads=-1 is out of range; valid: in [0, 1024]"),
    (["trainer.num_threads=100000"], "trainer.num_threads=100000 is out of range; valid: in [0, 1024]"),
    (["data.batch_size=0"], "data.batch_size=0 is out of range; valid: >= 1"),
    (["data.batch_size=-4"], "data.batch_size=-4 is out of range; valid: >= 1"),
    (["data.eval_batch_size=0"], "data.eval_batch_size=0 is out of range; valid: >= 1"),
    (["data.val_size=-1"], "data.val_size=-1 is out of range; valid: >= 0"),
    (["data.std=[0.2,0,0.2]"], "data.std=[0.2, 0, 0.2] is out of range; valid: each value > 0"),
    (["data.augment.crop_padding=-2"], "data.augment.crop_padding=-2 is out of range; valid: >= 0"),
    (["data=image_folder", "data.val_fraction=1.5"], "data.val_fraction=1.5 is out of range; valid: in [0, 1)"),
    (["data=image_folder", "data.image_size=0"], "data.image_size=0 is out of range; valid: >= 1"),
    (["data=sst2", "data.val_fraction=-0.1"], "data.val_fraction=-0.1 is out of range; valid: in [0, 1)"),
    (["data=sst2", "data.num_workers=-1"], "data.num_workers=-1 is out of range; valid: >= 0"),
    (["data=sst2", "data.max_length=0"], "data.max_length=0 is out of range; valid: >= 1"),
    (["data=text_csv", "data.min_freq=0"], "data.min_freq=0 is out of range; valid: >= 1"),
    (["data=text_csv", "data.bucket_pool=-1"], "data.bucket_pool=-1 is out of range; valid: >= 0"),
    (["data=text_lm", "data.block_size=0"], "data.block_size=0 is out of range; valid: >= 1"),
    (["data=text_lm", "data.test_fraction=1"], "data.test_fraction=1 is out of range; valid: in [0, 1)"),
    (["data=shakespeare_char", "data.epoch_blocks=0"], "data.epoch_blocks=0 is out of range; valid: >= 1"),
    (["optimizer.lr=-1"], "optimizer.lr=-1 is out of range; valid: > 0"),
    (["optimizer.lr=0"], "optimizer.lr=0 is out of range; valid: > 0"),
    (["optimizer.lr=nan"], "optimizer.lr=nan is out of range; valid: a finite number, > 0"),
    (["optimizer.weight_decay=-0.01"], "optimizer.weight_decay=-0.01 is out of range; valid: >= 0"),
    (["optimizer.betas=[0.9,1.5]"], "optimizer.betas=[0.9, 1.5] is out of range; valid: each value in [0, 1)"),
    (["optimizer=sgd", "optimizer.momentum=1.2"], "optimizer.momentum=1.2 is out of range; valid: in [0, 1)"),
    (["optimizer=adam", "optimizer.lr=-3"], "optimizer.lr=-3 is out of range; valid: > 0"),
    (
        ["optimizer=sgd", "optimizer.momentum=0"],  # torch's own check of two arguments together
        "optimizer: Nesterov momentum requires a momentum and zero dampening (for torch.optim.SGD)",
    ),
    (["loss.label_smoothing=5"], "loss.label_smoothing=5 is out of range; valid: in [0, 1]"),
    (["loss.label_smoothing=-0.1"], "loss.label_smoothing=-0.1 is out of range; valid: in [0, 1]"),
    (["scheduler.warmup_steps=-10"], "scheduler.warmup_steps=-10 is out of range; valid: >= 0"),
    (["scheduler.min_lr_ratio=2"], "scheduler.min_lr_ratio=2 is out of range; valid: in [0, 1]"),
    (
        ["scheduler=onecycle", "scheduler.warmup_frac=-0.2"],
        "scheduler.warmup_frac=-0.2 is out of range; valid: in [0, 1]",
    ),
    (["scheduler=step", "scheduler.step_size=0"], "scheduler.step_size=0 is out of range; valid: >= 1"),
    (["model.dropout=1"], "model.dropout=1 is out of range; valid: in [0, 1)"),
    (["model.widths=[64,0]"], "model.widths=[64, 0] is out of range; valid: each value >= 1"),
    (["model.stem_width=0"], "model.stem_width=0 is out of range; valid: >= 1"),
    (["model=lstm", "model.hidden_size=0"], "model.hidden_size=0 is out of range; valid: >= 1"),
    (["model=lstm", "model.word_dropout=-0.5"], "model.word_dropout=-0.5 is out of range; valid: in [0, 1)"),
    (
        ["model=textcnn", "model.filter_widths=[3,0]"],
        "model.filter_widths=[3, 0] is out of range; valid: each value >= 1",
    ),
    (["model=textcnn", "model.n_filters=0"], "model.n_filters=0 is out of range; valid: >= 1"),
    (["model=transformer", "model.n_layer=0"], "model.n_layer=0 is out of range; valid: >= 1"),
    (["model=transformer", "model.hidden_size=130"], "model.hidden_size=130 must be a multiple of model.n_head=4"),
    (["model=gpt", "model.n_embd=-8"], "model.n_embd=-8 is out of range; valid: >= 1"),
    (["model=gpt", "model.n_embd=32", "model.n_head=5"], "model.n_embd=32 must be a multiple of model.n_head=5"),
    (["model=gpt", "model.block_size=0"], "model.block_size=0 is out of range; valid: >= 1"),
    (
        ["callbacks=early_stopping", "callbacks.early_stopping.patience=-1"],
        "callbacks.early_stopping.patience=-1 is out of range; valid: >= 0",
    ),
    (["callbacks.lr_monitor.every_n_steps=0"], "callbacks.lr_monitor.every_n_steps=0 is out of range; valid: >= 1"),
    (["callbacks.text_sample.max_new_tokens=0"], "callbacks.text_sample.max_new_tokens=0 is out of range; valid: >= 1"),
    (["callbacks.text_sample.temperature=-1"], "callbacks.text_sample.temperature=-1 is out of range; valid: >= 0"),
    (
        ["optimizer.betas=[0.9,0.99,0.5]"],
        "optimizer.betas=[0.9, 0.99, 0.5] is not valid: use two numbers in [0, 1), e.g. [0.9, 0.999]",
    ),
]


@pytest.mark.parametrize("overrides, message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_out_of_range_values_are_named_with_their_valid_range(compose_train, overrides, message):
    assert first_error(compose_train, overrides) == message


CHOICES = [
    (
        ["model=lstm", "model.pooling=median"],
        "model.pooling='median' is not a valid Pooling (for bigmodel.models.rnn.LSTMClassifier); "
        "valid: last, max, mean",
    ),
    (
        ["model=transformer", "model.positions=rotary"],
        "model.positions='rotary' is not a valid Positions "
        "(for bigmodel.models.transformer.TransformerClassifier); valid: learned, sinusoidal",
    ),
    (
        ["callbacks.model_checkpoint.mode=maximum"],
        "callbacks.model_checkpoint.mode='maximum' is not a valid choice "
        "(for bigmodel.callbacks.ModelCheckpoint); valid: min, max",
    ),
    (
        ["data.augment.pad_mode=bogus"],
        "data.augment.pad_mode='bogus' is not a valid choice (for bigmodel.data.images.Augment); "
        "valid: reflect, constant",
    ),
]


@pytest.mark.parametrize("overrides, message", CHOICES, ids=[" ".join(o) for o, _ in CHOICES])
def test_a_choice_outside_its_options_lists_them(compose_train, overrides, message):
    assert first_error(compose_train, overrides) == message


GOOD_EDGES = [  # the edges of each range that still make sense
    "trainer.max_steps=-1",
    "trainer.max_steps=1",
    "trainer.max_epochs=1",
    "trainer.limit_val_batches=-1",
    "trainer.limit_train_batches=1",
    "trainer.val_check_interval=0",
    "trainer.gradient_clip_val=0",
    "trainer.num_threads=0",
    "data.batch_size=1",
    "data.val_size=0",
    "data.augment.crop_padding=0",
    "optimizer.weight_decay=0",
    "optimizer.lr=1e-9",
    "loss.label_smoothing=0",
    "loss.label_smoothing=1",
    "model.dropout=0",
    "model.dropout=0.99",
    "scheduler.warmup_steps=0",
    "scheduler.min_lr_ratio=1",
    "callbacks.model_checkpoint.mode=min",
    "optimizer=sgd",
]


@pytest.mark.parametrize("override", GOOD_EDGES)
def test_values_at_the_edge_of_their_range_pass(compose_train, override):
    assert first_error(compose_train, [override]) == ""


# ---------------------------------------------------------------- predict and eval
def test_predict_checks_its_values_and_asks_for_a_checkpoint(tmp_path):
    from bigmodel.predict import predict

    for overrides, message in [
        (["text=hi"], "ckpt_path is required, e.g. bigmodel predict ckpt_path="),
        (["text=hi", "ckpt_path=x", "batch_size=0"], "batch_size=0 is out of range; valid: >= 1"),
    ]:
        cfg = compose_cfg("predict", overrides, tmp_path)
        GlobalHydra.instance().clear()
        with pytest.raises(ConfigError, match=re.escape(message)):
            predict(cfg)


# ---------------------------------------------------------------- the real CLI
CLI = [
    (["train", "trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches=0 is out of range; valid: >= 1"),
    (["train", "trainer.max_steps=-5"], "trainer.max_steps=-5 is out of range; valid: -1 (no limit) or >= 1"),
    (["train", "trainer.max_epochs=0"], "trainer.max_epochs=0 is out of range; valid: >= 1"),
    (["train", "data.batch_size=-4"], "data.batch_size=-4 is out of range; valid: >= 1"),
    (["train", "optimizer.lr=-1"], "optimizer.lr=-1 is out of range; valid: > 0"),
    (["train", "loss.label_smoothing=5"], "loss.label_smoothing=5 is out of range; valid: in [0, 1]"),
    (["predict", "text=a fine film"], "ckpt_path is required, e.g. bigmodel predict ckpt_path="),
    (
        ["predict", "ckpt_path=missing.pt", "text=a fine film", "batch_size=0"],
        "batch_size=0 is out of range; valid: >= 1",
    ),
    (
        ["eval", "ckpt_path=missing.pt", "trainer.limit_test_batches=0"],
        "trainer.limit_test_batches=0 is out of range; valid: -1 (all) or >= 1",
    ),
    (["eval"], "ckpt_path is required, e.g. bigmodel eval ckpt_path="),
    (["train", "seed=abc"], "seed='abc' is not valid: use an integer from 0 to 2**31 - 1"),
    (["train", "test=maybe"], "test='maybe' is not valid: use true (test the best checkpoint) or false"),
    (["train", "optimizer.betas=[0.9]"], "optimizer.betas=[0.9] is not valid: use two numbers in [0, 1)"),
    (["lr_find", "lr_find.num_steps=abc"], "lr_find.num_steps='abc' is not valid: use an integer"),
]


@pytest.mark.slow
@pytest.mark.parametrize("args, message", CLI, ids=[" ".join(a) for a, _ in CLI])
def test_cli_refuses_bad_values_in_one_line_before_any_work(tmp_path, args, message):
    out = run_cli(
        *args, "trainer.progress_bar=false" if args[0] != "predict" else "device=cpu", cwd=tmp_path, timeout=120
    )
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].split("error: ", 1)[1].startswith(message), text
    assert not list(tmp_path.rglob("*.pt"))  # nothing trained, no checkpoint written
    assert not (tmp_path / "cache").exists()  # no data read or cached


def test_eval_checks_data_overrides_before_loading(tmp_path, ckpt):
    from bigmodel.train import evaluate

    cfg = compose_cfg("eval", [f"ckpt_path={ckpt}", "+data.batch_size=0", "+data.root=/nonexistent"], tmp_path)
    GlobalHydra.instance().clear()
    with pytest.raises(ConfigError, match=re.escape("data.batch_size=0 is out of range; valid: >= 1")):
        evaluate(cfg)  # the missing data.root would be found only later


@pytest.mark.usefixtures("one_thread")
def test_resuming_a_finished_run_is_an_error_not_a_silent_zero_step_run(tmp_path):
    from helpers import make_trainer

    done = make_trainer(max_steps=2, limit_val_batches=1)
    done.fit()
    done.save_checkpoint(str(tmp_path / "last.pt"))
    with pytest.raises(ConfigError, match=r"is at epoch 0, step 2: trainer.max_steps=2 is reached, nothing to train"):
        make_trainer(max_steps=2, limit_val_batches=1).fit(str(tmp_path / "last.pt"))
    more = make_trainer(max_steps=3, limit_val_batches=1)
    more.fit(str(tmp_path / "last.pt"))  # a higher limit trains on
    assert more.global_step == 3
