"""Pretrained word vectors: three file formats, coverage, clear errors, frozen embeddings."""

import logging
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from bigmodel import checkpoint
from bigmodel.config import ConfigError
from bigmodel.data.errors import DataError
from bigmodel.data.vectors import load_pretrained_vectors, read_vectors
from bigmodel.data.vocab import PAD, UNK, Vocab
from bigmodel.models.rnn import LSTMClassifier
from bigmodel.models.textcnn import TextCNN
from bigmodel.models.transformer import TransformerClassifier
from bigmodel.optim import param_groups
from conftest import run_cli
from test_text_data import write_sentiment

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest
VECS = {
    "good": [0.5, -1.0, 2.0, 0.25],
    "film": [1.5, 0.0, -0.5, 3.0],
    "Dull": [-2.0, 1.0, 0.0, 0.75],
    "dull": [9.0, 9.0, 9.0, 9.0],
    "zebra": [1.0, 1.0, 1.0, 1.0],
}  # "dull" (exact) beats "Dull"


def write_glove(path: Path, vecs=VECS) -> Path:
    path.write_text("".join(f"{w} {' '.join(map(str, v))}\n" for w, v in vecs.items()), encoding="utf-8")
    return path


def write_w2v_text(path: Path, vecs=VECS) -> Path:
    path.write_text(
        f"{len(vecs)} 4\n" + "".join(f"{w} {' '.join(map(str, v))}\n" for w, v in vecs.items()), encoding="utf-8"
    )
    return path


def write_w2v_binary(path: Path, vecs=VECS) -> Path:
    with open(path, "wb") as f:
        f.write(f"{len(vecs)} {len(next(iter(vecs.values())))}\n".encode())
        for w, v in vecs.items():
            f.write(w.encode() + b" " + struct.pack(f"<{len(v)}f", *v) + b"\n")
    return path


WRITERS = {"GloVe text": write_glove, "word2vec text": write_w2v_text, "word2vec binary": write_w2v_binary}


def data(words=("good", "film", "dull", "bad")) -> SimpleNamespace:
    """What load_pretrained_vectors reads from a data module: its vocabulary."""
    return SimpleNamespace(vocab=Vocab([PAD, UNK, *words], tokenizer="whitespace", lowercase=True))


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_each_format_is_detected_and_read(tmp_path, fmt):
    path = WRITERS[fmt](tmp_path / "vecs")
    name, dim, entries = read_vectors(path)
    got = {w: v.tolist() for w, v in entries}
    assert (name, dim) == (fmt, 4) and got == VECS


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_vectors_fill_their_words_rows_and_coverage_is_logged(tmp_path, fmt, caplog):
    path = WRITERS[fmt](tmp_path / "vecs")
    dm = data()
    torch.manual_seed(0)
    model = LSTMClassifier(len(dm.vocab), 2, embed_dim=4, hidden_size=4)
    before = model.embed.weight.detach().clone()
    with caplog.at_level(logging.INFO, logger="bigmodel"):
        coverage = load_pretrained_vectors(model, dm, str(path))
    emb = model.embed.weight.detach()
    for word in ("good", "film", "dull"):
        assert emb[dm.vocab.stoi[word]].tolist() == VECS[word], word
    assert torch.equal(emb[dm.vocab.stoi["bad"]], before[dm.vocab.stoi["bad"]])  # not in the file: unchanged
    assert not emb[0].any()  # <pad> stays zero
    assert coverage == 0.75
    assert any(f"pretrained vectors cover 75.0% of the 4 words ({fmt}" in r.getMessage() for r in caplog.records)


def test_lowercase_vocabulary_takes_a_cased_word_when_no_exact_match(tmp_path):
    path = write_glove(tmp_path / "v.txt", {"Good": [1.0, 2.0, 3.0, 4.0], "film": [0.0, 0.0, 0.0, 1.0]})
    dm = data()
    model = TransformerClassifier(len(dm.vocab), 2, hidden_size=4, n_head=2)
    load_pretrained_vectors(model, dm, str(path))
    assert model.embed.weight[dm.vocab.stoi["good"]].tolist() == [1.0, 2.0, 3.0, 4.0]


@pytest.mark.parametrize(
    "content,message",
    [
        ("good 1 2 3 4\nfilm 1 2 x 4\n", "line 2: 'x' is not a number"),
        ("good 1 2 3 4\nfilm 1 2 3\n", "line 2: expected a word and 4 numbers, got 4 fields"),
        ("2 4\ngood 1 2 3 4\n\nfilm 1 2 3 5z\n", "line 4: '5z' is not a number"),
        ("", "line 1: empty"),
        ("good 1 2 nan 4\n", "line 1: the vector of 'good' holds NaN"),
    ],
)
def test_bad_text_files_name_the_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=f"bad.txt {message}"):
        load_pretrained_vectors(LSTMClassifier(6, 2, embed_dim=4, hidden_size=4), data(), str(path))


def test_truncated_binary_missing_file_wrong_size_and_no_coverage_are_clear(tmp_path):
    path = write_w2v_binary(tmp_path / "v.bin")
    path.write_bytes(path.read_bytes()[:-10])
    model = LSTMClassifier(6, 2, embed_dim=4, hidden_size=4)
    with pytest.raises(DataError, match="v.bin: ends inside the vector of word 5 of 5"):
        load_pretrained_vectors(model, data(), str(path))
    with pytest.raises(DataError, match="model.pretrained_vectors=.*nope.txt'?: no such file"):
        load_pretrained_vectors(model, data(), str(tmp_path / "nope.txt"))
    glove = write_glove(tmp_path / "g.txt")
    with pytest.raises(ConfigError, match="4-dimensional vectors, the model's embedding has 8: .*model.embed_dim"):
        load_pretrained_vectors(LSTMClassifier(6, 2, embed_dim=8, hidden_size=4), data(), str(glove))
    with pytest.raises(DataError, match="none of the vocabulary's 2 words is in it"):
        load_pretrained_vectors(LSTMClassifier(4, 2, embed_dim=4, hidden_size=4), data(("cat", "dog")), str(glove))


@pytest.mark.parametrize("freeze", [True, False])
@pytest.mark.parametrize(
    "make",
    [
        lambda v, f: LSTMClassifier(v, 2, embed_dim=4, hidden_size=4, freeze_embeddings=f),
        lambda v, f: TextCNN(v, 2, embed_dim=4, n_filters=3, freeze_embeddings=f),
    ],
    ids=["lstm", "textcnn"],
)
def test_frozen_embeddings_stay_fixed_after_a_step(tmp_path, freeze, make):
    dm = data()
    torch.manual_seed(0)
    model = make(len(dm.vocab), freeze)
    load_pretrained_vectors(model, dm, str(write_glove(tmp_path / "v.txt")))
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = torch.optim.AdamW(param_groups(model, 0.01), lr=0.1)
    tokens = torch.tensor([[2, 3, 4], [5, 3, 0]])
    torch.nn.functional.cross_entropy(model(tokens, torch.tensor([3, 2])), torch.tensor([1, 0])).backward()
    opt.step()
    assert torch.equal(model.embed.weight, before["embed.weight"]) == freeze
    assert not torch.equal(model.head.weight, before["head.weight"])  # the rest trains


@pytest.mark.slow
def test_cli_trains_with_frozen_pretrained_vectors(tmp_path):
    write_sentiment(tmp_path / "data" / "sst2")
    words = ["good", "great", "bad", "dull", "film", "really"]
    rng = np.random.default_rng(0)
    vecs = {w: rng.normal(size=8).round(4).tolist() for w in words}
    path = write_w2v_binary(tmp_path / "vecs.bin", vecs)
    out = run_cli(
        "train",
        "model=lstm",
        "data=sst2",
        "trainer=debug",
        "logger=none",
        "model.embed_dim=8",
        "model.hidden_size=8",
        f"model.pretrained_vectors={path}",
        "model.freeze_embeddings=true",
        f"hydra.run.dir={tmp_path}/run",
        cwd=tmp_path,
        env={"OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    log = (tmp_path / "run" / "train.log").read_text()
    assert "pretrained vectors cover" in log and "(word2vec binary" in log
    ckpt = checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt")
    tokens = ckpt["data"]["vocab"]["tokens"]
    for w, v in vecs.items():
        assert np.allclose(ckpt["model"]["embed.weight"][tokens.index(w)].numpy(), v, atol=1e-6), w
    bad = run_cli(
        "train",
        "model=lstm",
        "data=sst2",
        "trainer=debug",
        "logger=none",
        f"model.pretrained_vectors={path}",
        f"hydra.run.dir={tmp_path}/bad",
        cwd=tmp_path,
    )
    text = bad.stdout + bad.stderr
    assert bad.returncode != 0 and "8-dimensional vectors" in text and "Traceback" not in text
