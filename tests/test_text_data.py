"""Text classification data: parsing (and its errors), vocabulary, padding, resumable batch order."""

import random
from pathlib import Path

import pytest
import torch

from bigmodel import checkpoint
from bigmodel.data.errors import DataError
from bigmodel.data.text import BucketBatchSampler, labeled_text, pad_batch, text_csv
from bigmodel.data.text_files import read_csv_rows, read_label_lines
from bigmodel.data.vocab import PAD, UNK, Vocab, tokenize
from conftest import run_cli

GOOD = ["good", "great", "fun", "gripping", "moving"]
BAD = ["bad", "dull", "boring", "awful", "flat"]


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest


def write_sentiment(folder: Path, n_train: int = 48, dev: bool = True, seed: int = 0) -> Path:
    """A learnable SST-style folder: label 1 texts carry a good word, label 0 texts a bad one."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)

    def lines(n: int) -> str:
        out = []
        for i in range(n):
            y = i % 2
            word = rng.choice(GOOD if y else BAD)
            out.append(f"{y} {'a ' * rng.randint(0, 4)}{word} film , really {word} .")
        return "\n".join(out) + "\n"

    (folder / "train.txt").write_text(lines(n_train), encoding="utf-8")
    if dev:
        (folder / "dev.txt").write_text(lines(12), encoding="utf-8")
    (folder / "test.txt").write_text(lines(12), encoding="utf-8")
    return folder


def small(root: Path, **kw):
    dm = labeled_text(str(root), class_names=["negative", "positive"], batch_size=8, eval_batch_size=8, **kw)
    dm.setup()
    return dm


# ---------------------------------------------------------------- parsing
def test_label_lines_split_on_newline_only(tmp_path):
    f = tmp_path / "train.txt"
    f.write_bytes("1 first\tline\r\n\n0 caf\u00e9 \x85 \u2028 still one line\n   \n1 last".encode("utf-8"))
    rows = read_label_lines(f)
    assert [(label, text) for label, text, _ in rows] == [
        ("1", "first\tline"),
        ("0", "caf\u00e9 \x85 \u2028 still one line"),
        ("1", "last"),
    ]
    assert rows[1][2] == f"{f}:3"  # blank lines still count


@pytest.mark.parametrize(
    "content,line,message",
    [
        ("1 fine\n0 fine\njustoneword\n", 3, "expected `LABEL text`"),
        ("1 fine\n7 out of range\n", 2, "label '7'"),
        ("1 fine\n0 fine\n1 fine\nmaybe a label name\n", 4, "label 'maybe'"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, content, line, message):
    write_sentiment(tmp_path / "d")
    (tmp_path / "d" / "train.txt").write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as err:
        small(tmp_path / "d")
    assert f"train.txt:{line}:" in str(err.value) and message in str(err.value)


def test_decode_error_names_line_and_encoding_option_reads_it(tmp_path):
    folder = write_sentiment(tmp_path / "d")
    (folder / "train.txt").write_bytes(b"1 fine film\n0 na\xefve and dull\n1 good\n")  # Latin-1 byte
    with pytest.raises(DataError, match=r"train\.txt:2: cannot decode byte 0xef .*data\.encoding"):
        small(folder)
    dm = small(folder, encoding={"train": "latin-1"})  # per file; dev/test stay UTF-8
    assert "na\u00efve" in dm.vocab.stoi


def test_labels_may_be_class_names_or_indices(tmp_path):
    folder = write_sentiment(tmp_path / "d")
    (folder / "train.txt").write_text("positive a good film\n0 a bad film\nnegative dull\n", encoding="utf-8")
    dm = small(folder)
    assert [y for _, y in dm.datasets["train"]] == [1, 0, 0]
    assert dm.model_args() == {"vocab_size": len(dm.vocab), "num_classes": 2, "pad_idx": 0}


def test_missing_dev_carves_a_seeded_validation_split_from_train(tmp_path):
    folder = write_sentiment(tmp_path / "trec", n_train=40, dev=False)
    a, b, c = (
        small(folder, val_fraction=0.25, seed=1),
        small(folder, val_fraction=0.25, seed=1),
        small(folder, val_fraction=0.25, seed=2),
    )
    assert (len(a.datasets["train"]), len(a.datasets["val"])) == (30, 10)
    ids = lambda dm, s: sorted(t.tolist() + [y] for t, y in dm.datasets[s])  # noqa: E731
    assert ids(a, "val") == ids(b, "val") and ids(a, "val") != ids(c, "val")
    with pytest.raises(DataError, match="val_fraction"):
        small(folder, val_fraction=0.0)


def test_shipped_trec_config_reads_latin1_train_and_carves_val(compose_train, tmp_path):
    folder = tmp_path / "data" / "trec"
    folder.mkdir(parents=True)
    (folder / "train.txt").write_bytes(
        "".join(f"{i % 6} What is question {i} ?\n" for i in range(38)).encode("latin-1")
        + "5 How many r\u00f0les ?\n4 Where is Reykjav\u00edk ?\n".encode("latin-1")
    )
    (folder / "test.txt").write_text("3 Who wrote Hamlet ?\n1 What is caf\u00e9 ?\n", encoding="utf-8")
    from hydra.utils import instantiate

    dm = instantiate(compose_train(["data=trec", f"paths.data_dir={tmp_path}/data"]).data)
    dm.setup()
    assert dm.class_names == ["description", "entity", "abbreviation", "human", "location", "numeric"]
    assert (len(dm.datasets["train"]), len(dm.datasets["val"]), len(dm.datasets["test"])) == (36, 4, 2)
    assert dm.model_args()["num_classes"] == 6 and dm.vocab.encode("café")[0] == dm.vocab.unk_idx
    splits, _ = dm.load()
    assert "How many r\u00f0les ?" in {text for _, text in splits["train"] + splits["val"]}  # decoded as Latin-1


def test_missing_folder_says_what_to_put_where(tmp_path):
    with pytest.raises(DataError, match=r"train\.txt' not found.*BIGMODEL_DATA_DIR"):
        small(tmp_path / "nowhere")


# ---------------------------------------------------------------- vocabulary
def test_vocab_from_train_only_with_min_freq_max_size_and_specials(tmp_path):
    folder = write_sentiment(tmp_path / "d")
    (folder / "train.txt").write_text("1 The the THE cat cat dog\n0 the cat bird\n", encoding="utf-8")
    (folder / "dev.txt").write_text("1 zebra the\n", encoding="utf-8")
    dm = small(folder, min_freq=2)
    assert dm.vocab.itos == [PAD, UNK, "the", "cat"]  # lowercased, by frequency; dog/bird once; zebra not in train
    assert dm.vocab.encode("THE zebra cat") == [2, 1, 3]
    everything = small(folder, min_freq=1)  # min_freq=2 would also hide a dev word seen once
    assert everything.vocab.itos == [PAD, UNK, "the", "cat", "bird", "dog"]  # ties alphabetical
    assert "zebra" not in everything.vocab.stoi and everything.vocab.encode("zebra") == [everything.vocab.unk_idx]
    assert Vocab.build(["b a a c c c"], max_size=2).itos == [PAD, UNK, "c", "a"]
    assert Vocab.build(["x"]).encode("") == [1]  # never an empty sequence
    assert tokenize("It's a gripping, funny film!", "words") == ["it's", "a", "gripping", ",", "funny", "film", "!"]


def test_vocab_round_trips_through_a_checkpoint(tmp_path):
    dm = small(write_sentiment(tmp_path / "d"), max_length=4)
    path = tmp_path / "ckpt.pt"
    checkpoint.save_atomic({"format": checkpoint.FORMAT_VERSION, "data": dm.state_dict()}, path)
    state = torch.load(path, weights_only=True)["data"]  # plain Python types only
    assert checkpoint.load(path)["data"] == dm.state_dict()
    vocab = Vocab.from_state(state["vocab"])
    assert state["class_names"] == ["negative", "positive"] and vocab.itos == dm.vocab.itos
    text = "A gripping film , really unseen-word . and more"
    assert vocab.encode(text) == dm.vocab.encode(text) and len(vocab.encode(text)) == 4


def test_a_checkpoints_vocabulary_is_used_even_if_the_train_file_changed(tmp_path):
    folder = write_sentiment(tmp_path / "d")
    trained = small(folder)
    (folder / "train.txt").write_text("1 zebra zebra\n0 okapi okapi\n", encoding="utf-8")
    restored = labeled_text(str(folder), class_names=["negative", "positive"], batch_size=8, eval_batch_size=8)
    restored.load_state_dict(trained.state_dict())
    restored.setup()
    assert restored.vocab.itos == trained.vocab.itos and "zebra" not in restored.vocab.itos
    assert [x.tolist() for x, _ in restored.datasets["test"]] == [x.tolist() for x, _ in trained.datasets["test"]]
    relabeled = labeled_text(str(folder), class_names=["neg", "pos"], batch_size=8, eval_batch_size=8)
    relabeled.load_state_dict(trained.state_dict())
    with pytest.raises(DataError, match="differ from the checkpoint"):
        relabeled.setup()


# ---------------------------------------------------------------- batches
def test_batches_are_padded_per_batch_with_lengths(tmp_path):
    (tokens, lengths), labels = pad_batch([(torch.tensor([5, 6, 7]), 1), (torch.tensor([8]), 0)], pad_idx=0)
    assert tokens.tolist() == [[5, 6, 7], [8, 0, 0]] and lengths.tolist() == [3, 1] and labels.tolist() == [1, 0]
    dm = small(write_sentiment(tmp_path / "d"))
    for (tokens, lengths), labels in dm.loader("val"):
        assert tokens.shape == (len(labels), int(lengths.max()))  # padded to this batch's longest text
        assert bool((tokens[torch.arange(tokens.shape[1]) >= lengths[:, None]] == 0).all())
        assert bool((tokens[torch.arange(tokens.shape[1]) < lengths[:, None]] != 0).all())


def flat(loader) -> list[list[int]]:
    return [tokens.tolist() for (tokens, _), _ in loader]


@pytest.mark.parametrize("bucket_pool", [0, 3])
def test_train_order_is_seeded_resumable_and_rank_aware(tmp_path, bucket_pool):
    dm = small(write_sentiment(tmp_path / "d", n_train=60), bucket_pool=bucket_pool, seed=3)
    full = flat(dm.loader("train", epoch=1))
    assert len(full) == len(dm.loader("train", epoch=1)) == 8  # ceil(60 / 8)
    assert full == flat(dm.loader("train", epoch=1)) and full != flat(dm.loader("train", epoch=2))
    assert flat(dm.loader("train", epoch=1, skip_batches=3)) == full[3:]
    ranks = [flat(dm.loader("train", epoch=1, rank=r, world_size=2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 4
    seen = sorted(row for r in ranks for batch in r for row in batch)
    assert len(seen) == 60 and ranks[0] != ranks[1]


def test_bucketing_groups_similar_lengths():
    lengths = [random.Random(i).randint(1, 50) for i in range(400)]
    sampler = BucketBatchSampler(lengths, 16, pool=25, seed=0)
    batches = sampler.batches()
    assert sorted(i for b in batches for i in b) == list(range(400))
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded < 1.1 * sum(lengths)  # random batches pad ~1.7x


# ---------------------------------------------------------------- CSV / TSV
def test_text_csv_named_columns_tsv_and_inferred_labels(tmp_path):
    (tmp_path / "train.tsv").write_text(
        'id\treview\tstars\n1\t"Great film,\nreally."\tpos\n2\tDull.\tneg\n3\tFun!\tpos\n4\tFun, great.\tpos\n',
        encoding="utf-8",
    )
    (tmp_path / "test.csv").write_text("stars,review\nneg,Awful\n", encoding="utf-8")  # delimiter per file
    dm = text_csv(
        str(tmp_path / "train.tsv"),
        test_file=str(tmp_path / "test.csv"),
        text_column="review",
        label_column="stars",
        val_fraction=0.25,
        min_freq=1,
        seed=0,
    )
    dm.setup()
    assert dm.class_names == ["neg", "pos"]
    assert (len(dm.datasets["train"]), len(dm.datasets["val"]), len(dm.datasets["test"])) == (3, 1, 1)
    assert dm.datasets["test"][0][1] == 0 and dm.vocab.tokenizer.value == "words"
    assert {",", "."} <= set(dm.vocab.itos)  # punctuation split from words
    bad = text_csv(str(tmp_path / "train.tsv"), text_column="text")
    with pytest.raises(
        DataError,
        match=r"train\.tsv: no column 'text' in the header \(data\.text_column\); "
        r"columns are \['id', 'review', 'stars'\]",
    ):
        bad.setup()


def test_integer_labels_from_one_are_their_own_classes(tmp_path):
    from bigmodel.data.text_files import infer_class_names

    assert infer_class_names(["1", "0", "3"]) == ["0", "1", "2", "3"]  # 0..K-1, as in SST/TREC files
    assert infer_class_names(["5", "1", "3", "10"]) == ["1", "3", "5", "10"]  # stars: no phantom class 0
    (tmp_path / "train.csv").write_text("text,stars\ngreat,5\nbad,1\nok,3\nfine,5\n", encoding="utf-8")
    (tmp_path / "test.csv").write_text("text,stars\nmeh,0\n", encoding="utf-8")
    dm = text_csv(str(tmp_path / "train.csv"), label_column="stars", val_fraction=0.25, min_freq=1, seed=0)
    dm.setup()
    assert dm.class_names == ["1", "3", "5"] and dm.model_args()["num_classes"] == 3
    unseen = text_csv(
        str(tmp_path / "train.csv"),
        test_file=str(tmp_path / "test.csv"),
        label_column="stars",
        val_fraction=0.25,
        min_freq=1,
    )
    with pytest.raises(DataError, match=r"test\.csv:2: label '0' is not one of"):
        unseen.setup()


def test_text_csv_bad_rows_name_the_line(tmp_path):
    f = tmp_path / "train.csv"
    f.write_text("text,label\nfine,a\n\nshort\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train\.csv:4: 1 columns, expected at least 2"):
        read_csv_rows(f, "utf-8", "text", "label")
    f.write_text("fine,a\n,b\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train\.csv:2: empty text"):
        read_csv_rows(f, "utf-8", 0, 1, header=False)
    with pytest.raises(DataError, match="header=false"):
        read_csv_rows(f, "utf-8", "text", "label", header=False)


@pytest.mark.slow
def test_cli_prints_a_bad_line_as_one_error_line(tmp_path):
    folder = write_sentiment(tmp_path / "data" / "sst2")
    (folder / "dev.txt").write_text("1 ok\n\n1\n", encoding="utf-8")
    out = run_cli("train", "model=lstm", "data=sst2", "trainer=debug", "logger=none", cwd=tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode == 1 and "dev.txt:3: expected `LABEL text`" in text and "Traceback" not in text


def test_the_text_and_label_columns_must_differ(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\na fine film,pos\n")
    with pytest.raises(DataError, match="data.text_column and data.label_column are both 'label'"):
        text_csv(str(tmp_path / "train.csv"), text_column="label")


def test_an_empty_label_is_named_with_its_line(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\na fine film,pos\na dull one,\n")
    with pytest.raises(DataError, match=r"train.csv:3: empty label"):
        text_csv(str(tmp_path / "train.csv")).setup()
