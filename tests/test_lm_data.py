"""Language-model data: tokenizers, the uint16 memmap cache, splits and block batches."""

import sys

import numpy as np
import pytest
import torch

from bigmodel.data import lm
from bigmodel.data.errors import DataError
from bigmodel.data.lm import cache_tokens, find_files, shakespeare_char, text_lm
from bigmodel.data.tokenizers import CharTokenizer
from bigmodel.metrics import LanguageModel

TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(60))  # 3,300 chars


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def test_char_tokenizer_round_trip_and_unknown_characters():
    tok = CharTokenizer("".join(sorted(set(TEXT))))
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT and max(ids) < tok.vocab_size
    assert tok.encode_array(TEXT).tolist() == ids
    assert tok.decode(tok.start_ids()) == "\n"
    with pytest.raises(DataError, match="'Z€'"):
        tok.encode("aZ€")


def test_cache_round_trip_is_a_uint16_memmap_and_is_reused(tmp_path, corpus, monkeypatch):
    tokens, state = cache_tokens([corpus], "char", "gpt2", str(tmp_path / "cache"))
    assert isinstance(tokens, np.memmap) and tokens.dtype == np.uint16 and len(tokens) == len(TEXT)
    tok = lm.tokenizer_from_state(state)
    assert tok.decode(tokens.tolist()) == TEXT
    assert len(list((tmp_path / "cache" / "lm_tokens").glob("*/tokens.bin"))) == 1
    # a second call reads the cache: nothing is tokenized again
    monkeypatch.setattr(lm, "write_tokens", lambda *a: pytest.fail("re-tokenized a cached corpus"))
    again, _ = cache_tokens([corpus], "char", "gpt2", str(tmp_path / "cache"))
    assert np.array_equal(again, tokens)
    monkeypatch.undo()
    # an edited file gets a new cache entry
    corpus.write_text(TEXT + "more!\n", encoding="utf-8")
    edited, _ = cache_tokens([corpus], "char", "gpt2", str(tmp_path / "cache"))
    assert len(edited) == len(TEXT) + 6
    assert len(list((tmp_path / "cache" / "lm_tokens").glob("*/tokens.bin"))) == 2


def test_long_files_are_tokenized_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(lm, "CHUNK", 100)
    (tmp_path / "a.txt").write_text(TEXT + "no newline at the end", encoding="utf-8")
    tokens, state = cache_tokens([tmp_path / "a.txt"], "char", "gpt2", str(tmp_path / "cache"))
    assert lm.tokenizer_from_state(state).decode(tokens.tolist()) == TEXT + "no newline at the end"


def test_files_folders_and_globs(tmp_path):
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    for name in ("docs/b.txt", "docs/a.txt", "docs/sub/c.txt", "docs/skip.md"):
        (tmp_path / name).write_text(name)
    assert [p.name for p in find_files(str(tmp_path / "docs"))] == ["a.txt", "b.txt", "c.txt"]
    assert [p.name for p in find_files([str(tmp_path / "docs/*.md"), str(tmp_path / "docs/a.txt")])] == [
        "skip.md",
        "a.txt",
    ]
    with pytest.raises(DataError, match="no text files found"):
        find_files(str(tmp_path / "nothing*.txt"))


def make_data(corpus, tmp_path, **kw):
    args = dict(cache_dir=str(tmp_path / "cache"), block_size=8, batch_size=4, seed=0) | kw
    dm = text_lm(str(corpus), **args)
    dm.setup()
    return dm


def test_splits_are_first_90_percent_then_last_10_percent(corpus, tmp_path):
    dm = make_data(corpus, tmp_path)
    tok = dm.tokenizer
    train, val = tok.decode(dm.splits["train"].tolist()), tok.decode(dm.splits["val"].tolist())
    assert train + val == TEXT and len(val) == int(0.1 * len(TEXT))
    assert dm.splits["test"] is dm.splits["val"]  # no test_fraction: test evaluates val
    assert dm.model_args() == {"vocab_size": len(set(TEXT))}
    assert isinstance(dm.metrics(), LanguageModel)
    assert dm.state_dict() == {"tokenizer": {"kind": "char", "chars": tok.chars}, "block_size": 8}
    held = make_data(corpus, tmp_path, test_fraction=0.05)
    parts = [held.tokenizer.decode(held.splits[s].tolist()) for s in ("train", "val", "test")]
    assert "".join(parts) == TEXT and len(parts[2]) == int(0.05 * len(TEXT))


def test_train_batches_are_random_contiguous_blocks_in_a_resumable_order(corpus, tmp_path):
    dm = make_data(corpus, tmp_path)
    train_text = dm.tokenizer.decode(dm.splits["train"].tolist())
    loader = dm.loader("train", epoch=0)
    assert len(loader) == (len(train_text) - 8) // 4  # every block start, whole batches only
    batches = list(loader)
    for x, y in batches[:20]:
        assert x.shape == y.shape == (4, 8) and x.dtype == torch.long
        assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one token
        for row_x, row_y in zip(x, y):
            assert dm.tokenizer.decode(row_x.tolist() + row_y[-1:].tolist()) in train_text
    starts = [train_text.index(dm.tokenizer.decode(x[0].tolist())) for x, _ in batches[:30]]
    assert starts != sorted(starts)  # shuffled
    again = list(dm.loader("train", epoch=0))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))  # same (seed, epoch): same order
    assert not torch.equal(batches[0][0], next(iter(dm.loader("train", epoch=1)))[0])
    resumed = list(dm.loader("train", epoch=0, skip_batches=5))
    assert len(resumed) == len(batches) - 5 and torch.equal(resumed[0][0], batches[5][0])


def test_epoch_blocks_makes_shorter_epochs_over_all_blocks(corpus, tmp_path):
    full = list(make_data(corpus, tmp_path).loader("train", epoch=0))
    dm = make_data(corpus, tmp_path, epoch_blocks=40)
    epochs = [list(dm.loader("train", epoch=e)) for e in range(3)]
    assert [len(b) for b in epochs] == [10, 10, 10]  # 40 blocks / batch 4
    assert all(torch.equal(a[0], b[0]) for a, b in zip(epochs[0], full))  # the start of the full epoch's order
    assert not torch.equal(epochs[1][0][0], epochs[0][0][0])  # each epoch draws other blocks
    resumed = list(dm.loader("train", epoch=1, skip_batches=3))
    assert len(resumed) == 7 and torch.equal(resumed[0][0], epochs[1][3][0])
    halves = [list(dm.loader("train", epoch=0, rank=r, world_size=2)) for r in (0, 1)]
    assert [len(h) for h in halves] == [5, 5]  # two ranks share the same 40 blocks


def test_ranks_take_disjoint_shares(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "random.txt").write_text("".join(rng.choice(list("abcdefghij \n"), 2000)))  # unique 8-grams
    dm = make_data(tmp_path / "random.txt", tmp_path, batch_size=1)
    shares = [{tuple(x[0].tolist()) for x, _ in dm.loader("train", rank=r, world_size=2)} for r in (0, 1)]
    n_blocks = len(dm.splits["train"]) - 8
    assert len(shares[0]) + len(shares[1]) >= n_blocks - 5  # together: (about) every block
    assert len(shares[0] & shares[1]) <= 1  # apart: disjoint (one index may repeat as padding)


def test_val_batches_are_non_overlapping_blocks_covering_the_split(corpus, tmp_path):
    dm = make_data(corpus, tmp_path, eval_batch_size=5)
    val = dm.splits["val"]
    xs, ys = zip(*dm.loader("val"))
    x, y = torch.cat(xs), torch.cat(ys)
    n_blocks = (len(val) - 1) // 8
    assert x.shape == (n_blocks, 8) and all(b.shape[0] == 5 for b in xs[:-1])  # only the last may be short
    assert torch.equal(x.flatten(), torch.from_numpy(val[: n_blocks * 8].astype(np.int64)))
    assert torch.equal(y.flatten(), torch.from_numpy(val[1 : n_blocks * 8 + 1].astype(np.int64)))


def test_too_little_text_for_a_block_is_a_clear_error(tmp_path):
    (tmp_path / "small.txt").write_text("tiny text " * 10)
    with pytest.raises(DataError, match="val split has 10 tokens.*block_size=16"):
        make_data(tmp_path / "small.txt", tmp_path, block_size=16)


def test_missing_shakespeare_offline_names_the_file_and_the_fix(tmp_path):
    dm = shakespeare_char(str(tmp_path / "tinyshakespeare"), download=False, cache_dir=str(tmp_path / "c"))
    with pytest.raises(DataError, match=r"tinyshakespeare/input.txt.*char-rnn"):
        dm.setup()


def test_shakespeare_char_reads_root_input_txt(tmp_path):
    (tmp_path / "ts").mkdir()
    (tmp_path / "ts" / "input.txt").write_text(TEXT)
    dm = shakespeare_char(str(tmp_path / "ts"), download=False, cache_dir=str(tmp_path / "c"), block_size=8)
    dm.setup()
    assert dm.tokenizer.vocab_size == len(set(TEXT)) and len(dm.splits["train"]) == len(TEXT) - int(0.1 * len(TEXT))


# ---------------------------------------------------------------- BPE (optional tiktoken)
def byte_level_encoding():
    """A tiktoken Encoding that needs no download: 256 byte tokens plus end-of-text."""
    tiktoken = pytest.importorskip("tiktoken")
    return tiktoken.Encoding(
        name="bytes",
        pat_str=r"\S+|\s+",
        mergeable_ranks={bytes([i]): i for i in range(256)},
        special_tokens={"<|endoftext|>": 256},
    )


def test_bpe_corpus_round_trip_with_end_of_text_between_files(tmp_path, monkeypatch):
    enc = byte_level_encoding()
    import tiktoken

    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: enc)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("héllo world\n" * 30, encoding="utf-8")
    (tmp_path / "docs" / "b.txt").write_text("second file\n" * 30, encoding="utf-8")
    dm = make_data(tmp_path / "docs", tmp_path, tokenizer="bpe")
    tokens = np.concatenate([dm.splits["train"], dm.splits["val"]])
    assert tokens.dtype == np.uint16 and (tokens == 256).sum() == 2  # one end-of-text after each file
    first = tokens[: int(np.argmax(tokens == 256))].tolist()
    assert dm.tokenizer.decode(first) == "héllo world\n" * 30
    assert dm.model_args() == {"vocab_size": 257}
    assert dm.state_dict()["tokenizer"] == {"kind": "bpe", "encoding": "gpt2", "vocab_size": 257}


def test_bpe_offline_vocabulary_is_one_clear_error(tmp_path, corpus, monkeypatch):
    tiktoken = pytest.importorskip("tiktoken")

    def offline(name):
        raise ConnectionError("Failed to resolve 'openaipublic.blob.core.windows.net'")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(DataError, match="'gpt2' BPE vocabulary.*TIKTOKEN_CACHE_DIR"):
        make_data(corpus, tmp_path, tokenizer="bpe")


def test_bpe_without_tiktoken_says_how_to_install(tmp_path, corpus, monkeypatch):
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # import fails as if not installed
    with pytest.raises(DataError, match=r"pip install 'bigmodel\[bpe\]'"):
        make_data(corpus, tmp_path, tokenizer="bpe")


def test_unknown_tokenizer_is_rejected(tmp_path, corpus):
    with pytest.raises(DataError, match="data.tokenizer='words'"):
        make_data(corpus, tmp_path, tokenizer="words")
