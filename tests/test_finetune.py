"""init_from: a new run starts from a checkpoint's weights; heads, vocabularies and pruned zeros are handled."""

import logging
import random
from pathlib import Path

import pytest
import torch
import torch.nn.utils.prune
from hydra.core.global_hydra import GlobalHydra

from bigmodel import checkpoint
from bigmodel.checkpoint import CheckpointError
from bigmodel.config import ConfigError
from bigmodel.data.lm import text_lm
from bigmodel.data.text import labeled_text, text_csv
from bigmodel.data.vectors import load_pretrained_vectors
from bigmodel.finetune import InitFrom, from_config
from bigmodel.models.cnn import CNN
from bigmodel.models.gpt import GPT
from bigmodel.models.rnn import LSTMClassifier
from bigmodel.train import train
from conftest import compose_cfg, run_cli, tiny_image_data
from test_text_data import write_sentiment

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest
SMALL_LSTM = ["model=lstm", "model.embed_dim=16", "model.hidden_size=16", "logger=none", "trainer=debug"]
TINY_GPT = [
    "model=gpt",
    "data=text_lm",
    "model.n_layer=1",
    "model.n_head=2",
    "model.n_embd=16",
    "model.block_size=16",
    "logger=none",
    "trainer=debug",
    "callbacks.text_sample.max_new_tokens=8",
]


def run_train(root: Path, run: str, overrides: list[str]) -> Path:
    """train() in-process with outputs under root/run; returns the run folder."""
    (root / run).mkdir(parents=True, exist_ok=True)
    cfg = compose_cfg(
        "train",
        [f"paths.data_dir={root}/data", f"paths.log_dir={root}/logs", f"paths.cache_dir={root}/cache", *overrides],
        root / run,
    )
    try:
        train(cfg)
    finally:
        GlobalHydra.instance().clear()
    return root / run


@pytest.fixture(scope="module")
def sst_ckpt(tmp_path_factory) -> Path:
    """best.pt of a small 2-class LSTM trained on a sentiment folder."""
    root = tmp_path_factory.mktemp("pre")
    write_sentiment(root / "data" / "sst2", n_train=64)
    run = run_train(
        root,
        "run",
        [
            *SMALL_LSTM,
            "data=sst2",
            "trainer.max_steps=20",
            "trainer.max_epochs=5",
            "trainer.limit_train_batches=-1",
            "test=false",
        ],
    )
    return run / "checkpoints" / "best.pt"


def three_class_csv(path: Path) -> Path:
    """Reviews in 3 classes, with words the sentiment folder never had ("superb", "meh", "okay")."""
    rows = ["text,label"] + [
        f"{t},{y}"
        for _ in range(12)
        for t, y in (("a superb great film", "pos"), ("meh okay film", "mid"), ("a dull awful film", "neg"))
    ]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def build(init: InitFrom, dm, **model_kw) -> tuple[LSTMClassifier, dict]:
    init.reuse_vocabulary(dm)
    dm.setup()
    torch.manual_seed(1)
    model = LSTMClassifier(**dm.model_args(), **{"embed_dim": 16, "hidden_size": 16, **model_kw})
    return model, {k: v.clone() for k, v in model.state_dict().items()}


def test_changed_head_is_reinitialized_and_every_other_weight_equals_the_checkpoint(sst_ckpt, tmp_path, caplog):
    ckpt = checkpoint.load(sst_ckpt)
    dm = text_csv(str(three_class_csv(tmp_path / "r.csv")), min_freq=1, batch_size=8)
    model, fresh = build(init := InitFrom(str(sst_ckpt)), dm)
    with caplog.at_level(logging.INFO, logger="bigmodel"):
        report = init.load_weights(model, dm)
    assert report.head_reset == ["head.weight", "head.bias"]
    assert not report.missing and not report.unexpected and not report.mismatched
    line = next(r.getMessage() for r in caplog.records if "head re-initialized" in r.getMessage())
    assert "2 classes ['negative', 'positive']" in line and "3 ['mid', 'neg', 'pos']" in line
    assert any("9 of 11 tensors loaded" in r.getMessage() for r in caplog.records)
    state = model.state_dict()
    assert torch.equal(state["head.weight"], fresh["head.weight"]) and state["head.weight"].shape == (3, 32)
    for k, v in ckpt["model"].items():
        if k.startswith("lstm."):
            assert torch.equal(state[k], v), k


def test_same_data_loads_every_weight_exactly(sst_ckpt, tmp_path, caplog):
    ckpt = checkpoint.load(sst_ckpt)
    dm = labeled_text(str(sst_ckpt.parents[2] / "data" / "sst2"), class_names=["negative", "positive"])
    model, _ = build(init := InitFrom(str(sst_ckpt.parents[1])), dm)  # a run folder: its best.pt
    with caplog.at_level(logging.INFO, logger="bigmodel"):
        report = init.load_weights(model, dm)
    assert init.path == str(sst_ckpt)
    assert set(report.loaded) == set(ckpt["model"]) and not report.grown and not report.head_reset
    for k, v in ckpt["model"].items():
        assert torch.equal(model.state_dict()[k], v), k
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_vocabulary_is_reused_and_extended_so_rows_follow_their_words(sst_ckpt, tmp_path):
    ckpt = checkpoint.load(sst_ckpt)
    old = ckpt["data"]["vocab"]["tokens"]
    dm = text_csv(str(three_class_csv(tmp_path / "r.csv")), min_freq=1, batch_size=8)
    model, fresh = build(init := InitFrom(str(sst_ckpt)), dm)
    init.load_weights(model, dm)
    new = dm.vocab.itos
    assert new[: len(old)] == old and {"superb", "meh", "okay"} <= set(new[len(old) :])
    emb, old_emb = model.embed.weight.detach(), ckpt["model"]["embed.weight"]
    for word in ("film", "dull", "awful", "great", ","):
        assert torch.equal(emb[dm.vocab.stoi[word]], old_emb[old.index(word)]), word
    for word in ("superb", "meh"):  # new words: their fresh rows, not some old word's vector
        i = dm.vocab.stoi[word]
        assert torch.equal(emb[i], fresh["embed.weight"][i])
    assert dm.state_dict()["vocab"]["tokens"] == new  # the fine-tuned checkpoint saves the extended vocabulary


def test_with_pretrained_vectors_old_words_keep_the_checkpoints_rows_and_new_words_take_the_files(sst_ckpt, tmp_path):
    ckpt = checkpoint.load(sst_ckpt)
    old = ckpt["data"]["vocab"]["tokens"]
    vec = {w: [float(i + j) for j in range(16)] for i, w in enumerate(["superb", "film"])}
    (tmp_path / "v.txt").write_text("".join(f"{w} {' '.join(map(str, v))}\n" for w, v in vec.items()))
    dm = text_csv(str(three_class_csv(tmp_path / "r.csv")), min_freq=1, batch_size=8)
    model, _ = build(init := InitFrom(str(sst_ckpt)), dm)
    load_pretrained_vectors(model, dm, str(tmp_path / "v.txt"))  # the order train() uses
    init.load_weights(model, dm)
    emb = model.embed.weight.detach()
    assert emb[dm.vocab.stoi["superb"]].tolist() == vec["superb"]
    assert torch.equal(emb[dm.vocab.stoi["film"]], ckpt["model"]["embed.weight"][old.index("film")])


def test_reordered_classes_reorder_the_head_rows(sst_ckpt, tmp_path, caplog):
    ckpt = checkpoint.load(sst_ckpt)
    dm = labeled_text(str(sst_ckpt.parents[2] / "data" / "sst2"), class_names=["positive", "negative"])
    model, _ = build(init := InitFrom(str(sst_ckpt)), dm)
    with caplog.at_level(logging.INFO, logger="bigmodel"):
        init.load_weights(model, dm)
    assert torch.equal(model.head.weight.detach(), ckpt["model"]["head.weight"].flip(0))
    assert any("re-ordered by name" in r.getMessage() for r in caplog.records)


def test_missing_unexpected_and_mismatched_keys_are_one_line_each(sst_ckpt, tmp_path, caplog):
    ckpt = checkpoint.load(sst_ckpt)
    ckpt["model"]["extra.weight"] = torch.zeros(2)
    ckpt["config"]["model"]["n_layer"] = 1
    path = tmp_path / "odd.pt"
    checkpoint.save_atomic(ckpt, path)
    dm = labeled_text(str(sst_ckpt.parents[2] / "data" / "sst2"), class_names=["negative", "positive"])
    model, fresh = build(init := InitFrom(str(path)), dm, n_layer=2, hidden_size=8)
    with caplog.at_level(logging.INFO, logger="bigmodel"):
        report = init.load_weights(model, dm, {"model": {**ckpt["config"]["model"], "n_layer": 2, "hidden_size": 8}})
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 4, lines
    assert "missing in the checkpoint" in lines[0] and "lstm.weight_ih_l1" in lines[0]
    assert "unexpected in the checkpoint" in lines[1] and "extra.weight" in lines[1]
    assert "shape mismatch" in lines[2] and "lstm.weight_hh_l0: checkpoint (64, 16) vs model (32, 8)" in lines[2]
    assert "model.hidden_size=8 (checkpoint 16)" in lines[3] and "model.n_layer=2 (checkpoint 1)" in lines[3]
    assert torch.equal(model.lstm.weight_hh_l0.detach(), fresh["lstm.weight_hh_l0"])  # left as initialized
    assert torch.equal(model.embed.weight.detach(), ckpt["model"]["embed.weight"]) and "embed.weight" in report.loaded


def test_an_image_classifier_gets_a_new_head_for_other_classes(tmp_path, caplog):
    torch.manual_seed(0)
    old = CNN(num_classes=4, in_channels=3, stem_width=4, widths=(8,))
    checkpoint.save_atomic(
        {
            "format": checkpoint.FORMAT_VERSION,
            "model": old.state_dict(),
            "model_args": {"num_classes": 4, "in_channels": 3},
            "data": {"class_names": ["c0", "c1", "c2", "c3"]},
        },
        tmp_path / "cnn.pt",
    )
    dm = tiny_image_data(num_classes=3)
    init = InitFrom(str(tmp_path / "cnn.pt"))
    init.reuse_vocabulary(dm)  # images: nothing to reuse
    dm.setup()
    model = CNN(**dm.model_args(), stem_width=4, widths=(8,))
    with caplog.at_level(logging.INFO, logger="bigmodel"):
        report = init.load_weights(model, dm)
    assert report.head_reset == ["head.weight"] and not report.mismatched and not init.vocab_reused
    assert any(
        "4 classes ['c0', 'c1', 'c2', 'c3'], this data has 3 ['c0', 'c1', 'c2']: head re-initialized" in r.getMessage()
        for r in caplog.records
    )
    for k, v in old.state_dict().items():
        if k != "head.weight":
            assert torch.equal(model.state_dict()[k], v), k


def test_nothing_fitting_and_missing_files_are_clear_errors(sst_ckpt, tmp_path):
    with pytest.raises(CheckpointError, match="init_from='.*nope.pt': no such file"):
        InitFrom(str(tmp_path / "nope.pt"))
    with pytest.raises(CheckpointError, match="folder without checkpoints/best.pt"):
        InitFrom(str(tmp_path))
    init = InitFrom(str(sst_ckpt))
    dm = labeled_text(str(sst_ckpt.parents[2] / "data" / "sst2"), class_names=["negative", "positive"])
    init.reuse_vocabulary(dm)
    dm.setup()
    with pytest.raises(CheckpointError, match="no weight of the checkpoint fits Linear"):
        init.load_weights(torch.nn.Linear(3, 2), dm)


def test_init_keys_are_checked():
    with pytest.raises(ConfigError, match="init_keep_sparsity='yes' is not valid; use true, false or null"):
        from_config(None, "yes")
    with pytest.raises(ConfigError, match="init_keep_sparsity=true needs init_from=PATH"):
        from_config(None, True)
    assert from_config(None, False) is None and from_config(None, None) is None


def prune_half(ckpt_path: Path, out: Path) -> dict[str, torch.Tensor]:
    """A copy of the checkpoint with the smaller half of each LSTM weight matrix zeroed; returns the masks."""
    ckpt = checkpoint.load(ckpt_path)
    masks = {}
    for k, v in ckpt["model"].items():
        if k.startswith("lstm.weight"):
            masks[k] = v.abs() > v.abs().median()
            ckpt["model"][k] = v * masks[k]
    checkpoint.save_atomic(ckpt, out)
    return masks


def test_a_checkpoint_pruned_with_torch_prune_loads_its_masked_weights(sst_ckpt, tmp_path):
    ckpt = checkpoint.load(sst_ckpt)
    pruned = LSTMClassifier(**ckpt["model_args"], embed_dim=16, hidden_size=16)
    pruned.load_state_dict(ckpt["model"])
    torch.nn.utils.prune.l1_unstructured(pruned.lstm, "weight_hh_l0", amount=0.5)  # not made permanent
    ckpt["model"] = pruned.state_dict()
    assert "lstm.weight_hh_l0_orig" in ckpt["model"] and "lstm.weight_hh_l0_mask" in ckpt["model"]
    checkpoint.save_atomic(ckpt, tmp_path / "p.pt")
    dm = labeled_text(str(sst_ckpt.parents[2] / "data" / "sst2"), class_names=["negative", "positive"])
    model, _ = build(init := InitFrom(str(tmp_path / "p.pt")), dm)
    report = init.load_weights(model, dm)
    assert not report.missing and not report.unexpected
    assert torch.equal(model.lstm.weight_hh_l0.detach(), pruned.lstm.weight_hh_l0.detach())
    assert (model.lstm.weight_hh_l0 == 0).float().mean() == 0.5


@pytest.mark.parametrize("keep", [True, False])
def test_init_keep_sparsity_holds_pruned_zeros_while_fine_tuning(sst_ckpt, tmp_path, keep):
    masks = prune_half(sst_ckpt, tmp_path / "pruned.pt")
    run = run_train(
        sst_ckpt.parents[2],
        f"ft-{keep}",
        [
            *SMALL_LSTM,
            "data=sst2",
            "trainer.max_steps=4",
            "test=false",
            "optimizer.lr=0.01",
            f"init_from={tmp_path / 'pruned.pt'}",
            f"init_keep_sparsity={str(keep).lower()}",
        ],
    )
    tuned = checkpoint.load(run / "checkpoints" / "last.pt")["model"]
    pruned = checkpoint.load(tmp_path / "pruned.pt")["model"]
    for k, mask in masks.items():
        zeros_kept = bool((tuned[k][~mask] == 0).all())
        assert zeros_kept == keep, k
        assert not torch.equal(tuned[k][mask], pruned[k][mask]), k  # the other weights do train


def test_gpt_fine_tunes_on_a_corpus_with_new_characters(tmp_path):
    rng = random.Random(0)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("".join(rng.choice("abcde \n") for _ in range(3000)))
    (tmp_path / "data" / "b.txt").write_text("".join(rng.choice("cdeXYZ! \n") for _ in range(3000)))
    run = run_train(tmp_path, "pre", [*TINY_GPT, f"data.files={tmp_path}/data/a.txt"])
    ckpt = checkpoint.load(run / "checkpoints" / "best.pt")
    old_chars = ckpt["data"]["tokenizer"]["chars"]
    assert "X" not in old_chars
    dm = text_lm(str(tmp_path / "data" / "b.txt"), cache_dir=str(tmp_path / "cache"), block_size=16, batch_size=4)
    init = InitFrom(str(run))
    init.reuse_vocabulary(dm)
    dm.setup()
    chars = dm.tokenizer.chars
    assert chars.startswith(old_chars) and set(chars[len(old_chars) :]) == set("!XYZ")
    model = GPT(**dm.model_args(), block_size=16, n_layer=1, n_head=2, n_embd=16)
    fresh = model.tok_emb.weight.detach().clone()
    report = init.load_weights(model, dm)
    assert report.grown == ["tok_emb.weight", "lm_head.weight"]
    emb, old_emb = model.tok_emb.weight.detach(), ckpt["model"]["tok_emb.weight"]
    for c in "cde \n":
        assert torch.equal(emb[dm.tokenizer.index[c]], old_emb[old_chars.index(c)]), c
    assert torch.equal(emb[dm.tokenizer.index["X"]], fresh[dm.tokenizer.index["X"]])
    assert model.lm_head.weight is model.tok_emb.weight  # still tied
    x = torch.tensor([dm.tokenizer.encode("XcY")])
    assert model(x).shape == (1, 3, len(chars))


def test_lm_tokenizer_kind_must_match_the_checkpoint(tmp_path):
    dm = text_lm(str(tmp_path), tokenizer="bpe")
    with pytest.raises(ConfigError, match="checkpoint's tokenizer is 'char', data.tokenizer='bpe'"):
        dm.reuse_vocabulary({"tokenizer": {"kind": "char", "chars": "ab"}})


# ---------------------------------------------------------------- the command line
@pytest.mark.slow
def test_cli_fine_tunes_a_text_classifier_on_new_classes_then_predicts(sst_ckpt, tmp_path):
    csv_path = three_class_csv(tmp_path / "reviews.csv")
    args = [
        "train",
        *SMALL_LSTM,
        "data=text_csv",
        f"data.train_file={csv_path}",
        "data.min_freq=1",
        f"init_from={sst_ckpt}",
        f"hydra.run.dir={tmp_path}/ft",
    ]
    out = run_cli(*args, cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    log = (tmp_path / "ft" / "train.log").read_text()
    assert "head re-initialized" in log and "new training words" in log and "9 of 11 tensors loaded" in log
    pred = run_cli(
        "predict",
        f"ckpt_path={tmp_path}/ft/checkpoints/best.pt",
        "text=a superb film",
        f"hydra.run.dir={tmp_path}/p",
        cwd=tmp_path,
        env={"OMP_NUM_THREADS": "1"},
    )
    assert pred.returncode == 0, pred.stderr[-3000:]
    assert pred.stdout.strip().split("\t")[1].startswith("mid=")
    bad = run_cli(
        "train", *SMALL_LSTM, "data=sst2", f"init_from={tmp_path}/nope.pt", f"hydra.run.dir={tmp_path}/x", cwd=tmp_path
    )
    text = bad.stdout + bad.stderr
    assert bad.returncode != 0 and "init_from=" in text and "no such file" in text and "Traceback" not in text


@pytest.mark.slow
def test_cli_gpt_pretrain_fine_tune_generate(tmp_path):
    rng = random.Random(1)
    (tmp_path / "a.txt").write_text("".join(rng.choice("abcde \n") for _ in range(3000)))
    (tmp_path / "b.txt").write_text("".join(rng.choice("cdeXYZ! \n") for _ in range(3000)))
    env = {"OMP_NUM_THREADS": "1"}
    pre = run_cli(
        "train", *TINY_GPT, f"data.files={tmp_path}/a.txt", f"hydra.run.dir={tmp_path}/pre", cwd=tmp_path, env=env
    )
    assert pre.returncode == 0, pre.stderr[-3000:]
    ft = run_cli(
        "train",
        *TINY_GPT,
        f"data.files={tmp_path}/b.txt",
        f"init_from={tmp_path}/pre",
        f"hydra.run.dir={tmp_path}/ft",
        cwd=tmp_path,
        env=env,
    )
    assert ft.returncode == 0, ft.stderr[-3000:]
    log = (tmp_path / "ft" / "train.log").read_text()
    assert "characters: 7 from the checkpoint + 4 new '!XYZ'" in log and "17 of 17 tensors loaded" in log
    gen = run_cli(
        "generate",
        f"ckpt_path={tmp_path}/ft/checkpoints/best.pt",
        "prompt=XYc",
        "max_new_tokens=5",
        f"hydra.run.dir={tmp_path}/g",
        cwd=tmp_path,
        env=env,
    )
    assert gen.returncode == 0, gen.stderr[-3000:]
    assert "XYc" in gen.stdout
