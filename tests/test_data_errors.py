"""Bad data files: one error line naming the file (and line), a non-zero exit, no traceback; nothing
dropped silently. Each test writes the bad file it needs."""

import gzip
import io
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from bigmodel.data.errors import DataError
from bigmodel.data.lm import LMData
from bigmodel.data.loading import seeded_split
from bigmodel.data.text_files import MAX_TEXT_CHARS, read_csv_rows, read_label_lines, read_text
from conftest import run_cli, write_fake_cifar10
from test_predict import ckpt  # noqa: F401  (the fixture: a small trained text classifier)
from test_text_data import write_sentiment

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def assert_one_line_error(out, *needles: str) -> str:
    """rc 1, no traceback, and one `error:` line holding every needle."""
    text = out.stdout + out.stderr
    assert out.returncode == 1, text[-2000:]
    assert "Traceback" not in text, text[-2000:]
    errors = [line for line in text.splitlines() if "error: " in line]
    assert len(errors) == 1, text[-2000:]
    assert all(n in errors[0] for n in needles), errors[0]
    return errors[0]


def write_images(root: Path, splits=("train", "test"), classes=("a", "b"), n: int = 3) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in splits:
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


def train_images(tmp_path: Path, root: Path):
    return run_cli(
        "train",
        "model=cnn",
        "data=image_folder",
        f"data.root={root}",
        "trainer=debug",
        "logger=none",
        cwd=tmp_path,
        env=ONE_THREAD,
    )


# ---------------------------------------------------------------- tracebacks before
def test_unreadable_file_names_the_file(tmp_path, monkeypatch):
    f = tmp_path / "train.txt"
    f.write_text("1 good\n", encoding="utf-8")

    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)  # tests run as root, where chmod 000 still reads
    with pytest.raises(DataError, match=r"train\.txt: cannot read it \(Permission denied\)"):
        read_label_lines(f)


def test_unreadable_cifar_batch_names_the_file(tmp_path):
    folder = write_fake_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    (folder / "data_batch_3").mkdir()  # readable by no one, root included
    from bigmodel.data.cifar10 import load_cifar10

    with pytest.raises(DataError, match=r"data_batch_3: cannot read it \(Is a directory\)"):
        load_cifar10(str(tmp_path), False, 10, 0, None, str(tmp_path / "cache"))


def test_cifar_batch_that_would_run_code_is_refused(tmp_path):
    import pickle

    folder = write_fake_cifar10(tmp_path)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (folder / "test_batch").write_bytes(pickle.dumps({"data": Payload(), "labels": [0]}))
    from bigmodel.data.cifar10 import load_cifar10

    with pytest.raises(DataError, match=r"test_batch: not a CIFAR-10 python batch file"):
        load_cifar10(str(tmp_path), False, 10, 0, None, str(tmp_path / "cache"))
    assert not marker.exists()


@pytest.mark.slow
def test_cli_unreadable_split_file_is_one_line(tmp_path):
    folder = write_sentiment(tmp_path / "data" / "sst2", dev=False)
    (folder / "dev.txt").mkdir()  # a folder where a file is expected: unreadable even as root
    out = run_cli("train", "model=lstm", "data=sst2", "trainer=debug", "logger=none", cwd=tmp_path, env=ONE_THREAD)
    assert_one_line_error(out, "dev.txt", "cannot read it")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["truncated", "gzip_not_tar"])
def test_cli_bad_archive_is_one_line_naming_it(tmp_path, kind):
    write_images(tmp_path / "src" / "pics")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(tmp_path / "src" / "pics", arcname="pics")
    data = buf.getvalue()
    (tmp_path / "archive").mkdir()
    bad = data[: len(data) // 2] if kind == "truncated" else gzip.compress(b"not a tar file " * 100)
    (tmp_path / "archive" / "pics.tar.gz").write_bytes(bad)
    out = train_images(tmp_path, tmp_path / "archive")
    assert_one_line_error(out, "pics.tar.gz", "cannot unpack it")
    assert not list((tmp_path / "cache").glob("pics-*"))  # nothing half-unpacked is left to be taken as data


@pytest.mark.slow
def test_cli_file_that_is_not_an_image_is_named(tmp_path):
    root = write_images(tmp_path / "pics")
    (root / "train" / "b" / "notes.jpg").write_text("not an image", encoding="utf-8")
    out = train_images(tmp_path, root)
    assert_one_line_error(out, str(root / "train" / "b" / "notes.jpg"), "cannot read it as an image")


def test_image_folder_reads_bmp_rejects_unknown_classes_and_warns_on_skipped_files(tmp_path, caplog):
    from PIL import Image

    from bigmodel.data.image_folder import read_split

    root = write_images(tmp_path / "pics", n=1)
    Image.new("RGB", (8, 8), (255, 0, 0)).save(root / "train" / "a" / "red.bmp")  # torchvision cannot decode BMP
    (root / "train" / "a" / "README.md").write_text("about", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="bigmodel"):
        x, y = read_split(root / "train", ["a", "b"], 8)
    assert x.shape == (3, 8, 8, 3) and y.tolist() == [0, 0, 1]
    assert torch.equal(x[1, 0, 0], torch.tensor([255, 0, 0], dtype=torch.uint8))  # red.bmp sorts after 0.png
    assert "skipped 1 file(s)" in caplog.text and "README.md" in caplog.text
    (root / "test" / "zebra").mkdir()
    with pytest.raises(DataError, match=r"test: class folder\(s\) \['zebra'\] are not in train/"):
        read_split(root / "test", ["a", "b"], 8)


@pytest.mark.parametrize("fmt", ["label_lines", "csv"])
def test_a_huge_single_line_is_an_error_not_a_huge_allocation(tmp_path, fmt):
    text = "good " * (10 * 2**20 // 5)  # a 10 MB line
    f = tmp_path / ("train.txt" if fmt == "label_lines" else "train.csv")
    if fmt == "label_lines":
        f.write_text(f"1 ok\n1 {text}\n", encoding="utf-8")
        with pytest.raises(DataError, match=rf"train\.txt:2: a line of 10,485,762 characters.*{MAX_TEXT_CHARS:,}"):
            read_label_lines(f)
    else:
        f.write_text(f"text,label\nok,1\n{text},1\n", encoding="utf-8")
        with pytest.raises(DataError, match=r"train\.csv:3: field larger than field limit"):
            read_csv_rows(f, "utf-8", "text", "label")


@pytest.mark.slow
def test_cli_latin1_prompt_file_is_one_line(tmp_path):
    from test_generate import save_lm_checkpoint, tiny_model

    save_lm_checkpoint(tmp_path / "lm.pt", tiny_model())
    (tmp_path / "prompt.txt").write_bytes("ROMEO: caf\xe9\n".encode("latin-1"))
    out = run_cli(
        "generate",
        f"ckpt_path={tmp_path / 'lm.pt'}",
        f"prompt_file={tmp_path / 'prompt.txt'}",
        "max_new_tokens=2",
        "device=cpu",
        cwd=tmp_path,
        env=ONE_THREAD,
    )
    assert_one_line_error(out, "prompt.txt:1", "cannot decode byte 0xe9", "save the file as UTF-8")


# ---------------------------------------------------------------- silent before
def test_tsv_text_with_a_tab_must_be_quoted(tmp_path):
    f = tmp_path / "train.tsv"
    f.write_text("label\ttext\npos\tgreat\tfilm\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train\.tsv:2: 3 fields, but the header has 2 .*must be quoted"):
        read_csv_rows(f, "utf-8", "text", "label")
    f.write_text('label\ttext\npos\t"great\tfilm"\n', encoding="utf-8")
    assert read_csv_rows(f, "utf-8", "text", "label") == [("pos", "great\tfilm", f"{f}:2")]


@pytest.mark.parametrize("closed_later", [False, True])
def test_tsv_open_quote_does_not_swallow_rows(tmp_path, closed_later):
    rows = [
        "pos\tgood",
        'neg\t"bad',
        "pos\tnice",
        "neg\tawful" + ('"' if closed_later else ""),
        "pos\tgreat",
        "neg\tworse",
    ]
    f = tmp_path / "train.tsv"
    f.write_text("label\ttext\n" + "\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train\.tsv:3: .*quote"):
        read_csv_rows(f, "utf-8", "text", "label")


def test_rows_wider_than_the_header_or_first_row_are_errors(tmp_path):
    f = tmp_path / "train.csv"
    f.write_text("text,label\nfine,a\nalso fine,b,extra\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train\.csv:3: 3 fields, but the header has 2"):
        read_csv_rows(f, "utf-8", "text", "label")
    f.write_text("fine,a\n\nbad,b,c\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train\.csv:3: 3 fields, but the first row has 2"):
        read_csv_rows(f, "utf-8", 0, 1, header=False)


def test_quoting_follows_the_documented_rule(tmp_path):
    f = tmp_path / "train.csv"
    f.write_text('text,label\n"say ""hi"", twice",a\nan "inner" quote,b\n"multi\nline",c\n', encoding="utf-8")
    rows = read_csv_rows(f, "utf-8", "text", "label")
    assert [t for _, t, _ in rows] == ['say "hi", twice', 'an "inner" quote', "multi\nline"]
    assert [w.rsplit(":", 1)[1] for _, _, w in rows] == ["2", "3", "4"]  # a record's first line
    f.write_text('text,label\nok,a\n"quoted" then more,b\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"train\.csv:3: .*expected after '\"'"):
        read_csv_rows(f, "utf-8", "text", "label")


def test_empty_validation_split_is_an_error_never_a_metric_of_zero(tmp_path):
    folder = write_sentiment(tmp_path / "sst2")
    (folder / "dev.txt").write_text("\n\n", encoding="utf-8")
    from bigmodel.data.text import labeled_text

    with pytest.raises(DataError, match=r"dev\.txt: no examples"):
        labeled_text(str(folder)).setup()
    with pytest.raises(DataError, match=r"0\.1 of 4 training examples holds out none"):
        seeded_split(4, 0.1, 0)
    (tmp_path / "val.csv").write_text("text,label\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"val\.csv: no examples, only a header"):
        read_csv_rows(tmp_path / "val.csv", "utf-8", "text", "label")


def test_trainer_refuses_to_report_metrics_of_an_empty_split():
    from helpers import make_trainer

    trainer = make_trainer(max_steps=1)
    x, y = trainer.datamodule.splits["val"]
    trainer.datamodule.splits["val"] = (x[:0], y[:0])
    with pytest.raises(DataError, match="the val split has no examples to evaluate"):
        trainer.evaluate("val")


@pytest.mark.slow
def test_cli_predict_warns_for_a_text_of_unknown_words(tmp_path, ckpt):
    out = run_cli("predict", f"ckpt_path={ckpt}", "text=zzyzx qwop blorf", cwd=tmp_path, env=ONE_THREAD)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "none of its words is in the model's vocabulary" in out.stdout + out.stderr
    known = run_cli("predict", f"ckpt_path={ckpt}", "text=a good film", cwd=tmp_path, env=ONE_THREAD)
    assert known.returncode == 0 and "vocabulary" not in known.stdout + known.stderr


@pytest.mark.slow
def test_cli_predict_latin1_suggests_the_key_that_works(tmp_path, ckpt):
    (tmp_path / "texts.txt").write_bytes("a good caf\xe9 film\n".encode("latin-1"))
    args = ["predict", f"ckpt_path={ckpt}", f"input_file={tmp_path / 'texts.txt'}"]
    line = assert_one_line_error(run_cli(*args, cwd=tmp_path, env=ONE_THREAD), "texts.txt:1", "(e.g. encoding=latin-1)")
    assert "data.encoding" not in line
    fixed = run_cli(*args, "encoding=latin-1", cwd=tmp_path, env=ONE_THREAD)  # the suggested key is accepted
    assert fixed.returncode == 0 and "a good café film" in fixed.stdout, fixed.stderr[-2000:]


@pytest.mark.parametrize(
    "text,val_fraction,needle",
    [
        ("hello", 0.1, "the corpus has 5 tokens.*needs 34; use more text"),
        ("x" * 40, 0.1, "the val split has 4 tokens.*use a larger data.val_fraction"),
        ("x" * 40, 0.8, "the train split has 8 tokens.*use a smaller data.val_fraction"),
    ],
)
def test_too_little_text_gets_advice_that_helps(tmp_path, text, val_fraction, needle):
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    dm = LMData(str(tmp_path / "t.txt"), cache_dir=str(tmp_path / "cache"), block_size=16, val_fraction=val_fraction)
    with pytest.raises(DataError, match=needle):
        dm.setup()


def test_decode_error_without_an_encoding_key_says_to_convert(tmp_path):
    f = tmp_path / "p.txt"
    f.write_bytes(b"caf\xe9")
    expected = r"p\.txt:1: cannot decode byte 0xe9 \(column 4\) as utf-8; save the file as UTF-8"
    with pytest.raises(DataError, match=expected):
        read_text(f, "utf-8", key=None)
