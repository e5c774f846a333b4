"""Text classification data: labeled sentence files or a CSV/TSV -> token ids -> padded batches.

Batches are `((tokens (B, T) long, lengths (B,) long), labels (B,))`, padded to the longest text
of each batch, so the Trainer calls `model(tokens, lengths)` and models mask what is padding.
Train order depends only on (seed, epoch); `bucket_pool > 0` groups texts of similar length
(less padding) with the same guarantee. File parsing (and its errors) is in `text_files.py`.
"""

import functools
import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Sampler

from bigmodel.data.errors import DataError
from bigmodel.data.loading import make_loader, seeded_split
from bigmodel.data.text_files import Example, Raw, read_csv_rows, read_label_lines, to_examples
from bigmodel.data.tokenizers import unknown_warning
from bigmodel.data.vocab import Tokenizer, Vocab
from bigmodel.metrics import Classification
from bigmodel.ranges import Fraction, NonNegativeInt, PositiveInt

log = logging.getLogger("bigmodel")
Splits = dict[str, list[Example]]  # "train" | "val" | "test" -> [(label index, text)]


def pad_batch(items: list[tuple[torch.Tensor, int]], pad_idx: int):
    """[(ids (T_i,), label)] -> ((tokens (B, max T_i), lengths (B,)), labels (B,))."""
    seqs, labels = zip(*items)
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    tokens = pad_sequence(list(seqs), batch_first=True, padding_value=pad_idx)
    return (tokens, lengths), torch.tensor(labels, dtype=torch.long)


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of texts of similar length, in an order that depends only on (seed, epoch).

    The epoch's permutation is cut into pools of `pool` batches; each pool is sorted by length and
    cut into batches, and the batches are shuffled. Rank r takes every world_size-th batch (padded
    to equal counts); `skip` batches of this rank are skipped to resume mid-epoch.
    """

    def __init__(
        self,
        lengths: list[int],
        batch_size: int,
        *,
        pool: int,
        seed: int,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        skip: int = 0,
    ) -> None:
        self.lengths, self.batch_size, self.pool, self.seed, self.epoch = lengths, batch_size, pool, seed, epoch
        self.rank, self.world_size, self.skip = rank, world_size, skip
        self.per_rank = math.ceil(math.ceil(len(lengths) / batch_size) / world_size)

    def batches(self) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        span, out = self.batch_size * self.pool, []
        for start in range(0, len(order), span):
            chunk = sorted(order[start : start + span], key=self.lengths.__getitem__)  # stable
            out += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        out = [out[i] for i in torch.randperm(len(out), generator=g).tolist()]
        out += out[: self.per_rank * self.world_size - len(out)]
        return out[self.rank :: self.world_size][self.skip :]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return max(self.per_rank - self.skip, 0)


class TextClassificationData:
    """The text classification data module: `load()` -> (splits of (label, text), class names).

    The vocabulary is built from the train split at setup(); val/test are stored sorted by length
    (their order does not change a metric, and it keeps padding small).
    """

    def __init__(
        self,
        load: Callable[[], tuple[Splits, list[str]]],
        *,
        tokenizer: Tokenizer | str,
        lowercase: bool,
        min_freq: int,
        max_size: int | None,
        max_length: int | None,
        ngrams: int = 1,
        batch_size: int,
        eval_batch_size: int,
        bucket_pool: int,
        num_workers: int,
        seed: int,
    ) -> None:
        self.load, self.tokenizer, self.lowercase = load, Tokenizer(tokenizer), lowercase
        self.min_freq, self.max_size, self.max_length, self.ngrams = min_freq, max_size, max_length, ngrams
        self.batch_size, self.eval_batch_size, self.bucket_pool = batch_size, eval_batch_size, bucket_pool
        self.num_workers, self.seed = num_workers, seed
        self._vocab: Vocab | None = None
        self.base_tokens: list[str] | None = None  # a checkpoint's vocabulary to extend (reuse_vocabulary)
        self.class_names: list[str] = []
        self.datasets: dict[str, list[tuple[torch.Tensor, int]]] = {}

    @property
    def vocab(self) -> Vocab:
        """The vocabulary: built by setup(), or a checkpoint's (load_state_dict)."""
        if self._vocab is None:
            raise RuntimeError("no vocabulary yet: call setup() (or load_state_dict) first")
        return self._vocab

    @vocab.setter
    def vocab(self, vocab: Vocab) -> None:
        self._vocab = vocab

    def setup(self) -> None:
        if self.datasets:
            return
        splits, class_names = self.load()
        if self._vocab is None:
            self.class_names = class_names
            self.vocab = Vocab.build(
                (text for _, text in splits["train"]),
                min_freq=self.min_freq,
                max_size=self.max_size,
                tokenizer=self.tokenizer,
                lowercase=self.lowercase,
                max_length=self.max_length,
                ngrams=self.ngrams,
            )
            if self.base_tokens is not None:
                self.vocab = self._extend(self.base_tokens, self.vocab)
        elif class_names != self.class_names:
            raise DataError(f"the data's labels {class_names} differ from the checkpoint's {self.class_names}")
        for split, examples in splits.items():
            items = [(torch.tensor(self.vocab.encode(text), dtype=torch.long), label) for label, text in examples]
            self.datasets[split] = items if split == "train" else sorted(items, key=lambda it: len(it[0]))
        sizes = ", ".join(f"{s} {len(d)}" for s, d in self.datasets.items())
        log.info(f"text data: {sizes} examples, {len(self.class_names)} classes, vocabulary {len(self.vocab)}")
        warning = unknown_warning(
            [ids.tolist() for ids, _ in self.datasets.get("val", [])], self.vocab.unk_idx, self.vocab.tokenizer
        )
        if warning:
            log.warning(warning)

    def model_args(self) -> dict:
        return {"vocab_size": len(self.vocab), "num_classes": len(self.class_names), "pad_idx": self.vocab.pad_idx}

    def metrics(self) -> Classification:
        return Classification(len(self.class_names), self.class_names)

    def state_dict(self) -> dict:
        return {"vocab": self.vocab.state_dict(), "class_names": list(self.class_names)}

    def load_state_dict(self, state: dict) -> None:
        """Use a checkpoint's vocabulary and labels (call before setup): `bigmodel eval` then encodes
        text exactly as training did, even if the training file has changed since."""
        self.vocab, self.class_names = Vocab.from_state(state["vocab"]), list(state["class_names"])

    def reuse_vocabulary(self, state: dict) -> bool:
        """Start from a checkpoint's vocabulary (call before setup; for `init_from`): its words keep
        their ids, and setup() appends the training words it lacks, so embedding rows fit their words.
        The labels come from this data."""
        if "vocab" not in state:
            return False
        self.base_tokens = list(state["vocab"]["tokens"])
        return True

    def _extend(self, base: list[str], built: Vocab) -> Vocab:
        """`base` then the words of `built` it lacks (most frequent first), at most max_size words in all."""
        known = set(base)
        new = [t for t in built.itos if t not in known]
        if self.max_size is not None:
            new = new[: max(self.max_size + 2 - len(base), 0)]
        log.info(f"vocabulary: {len(base) - 2:,} words from the checkpoint + {len(new):,} new training words")
        return Vocab.from_state({**built.state_dict(), "tokens": base + new})

    def loader(
        self,
        split: str,
        *,
        epoch: int = 0,
        skip_batches: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | None = None,
    ) -> DataLoader:
        if split not in self.datasets:
            raise KeyError(f"split {split!r} not available; have {sorted(self.datasets)}")
        data, train = self.datasets[split], split == "train"
        collate = functools.partial(pad_batch, pad_idx=self.vocab.pad_idx)
        pin = device is not None and device.type == "cuda"
        if train and self.bucket_pool > 0:
            sampler = BucketBatchSampler(
                [len(ids) for ids, _ in data],
                self.batch_size,
                pool=self.bucket_pool,
                seed=self.seed,
                epoch=epoch,
                rank=rank,
                world_size=world_size,
                skip=skip_batches,
            )
            dataset: Any = data  # a list is a map-style data set
            return DataLoader(
                dataset, batch_sampler=sampler, collate_fn=collate, num_workers=self.num_workers, pin_memory=pin
            )
        return make_loader(
            data,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            seed=self.seed,
            epoch=epoch,
            skip_batches=skip_batches,
            rank=rank,
            world_size=world_size,
            num_workers=self.num_workers,
            pin_memory=pin,
            collate_fn=collate,
        )


def _carve_val(splits: dict[str, list[Raw]], val_fraction: float, seed: int) -> None:
    """No validation file: hold out a seeded `val_fraction` of train."""
    if not 0 < val_fraction < 1:
        raise DataError(f"there is no validation file, so data.val_fraction must be in (0, 1); got {val_fraction}")
    train = splits["train"]
    tr, va = seeded_split(len(train), val_fraction, seed)
    splits["train"], splits["val"] = [train[i] for i in tr.tolist()], [train[i] for i in va.tolist()]


def _finish(
    splits: dict[str, list[Raw]], class_names: list[str] | None, val_fraction: float, seed: int
) -> tuple[Splits, list[str]]:
    if "val" not in splits:
        _carve_val(splits, val_fraction, seed)
    if "test" not in splits:
        log.warning("no test file: the test split evaluates the validation split")
        splits["test"] = splits["val"]
    return to_examples(splits, class_names)


def load_labeled_dir(
    root: str, encoding: str | dict[str, str], class_names: list[str] | None, val_fraction: float, seed: int
) -> tuple[Splits, list[str]]:
    """root/{train,dev,test}.txt with `LABEL text` lines; no dev.txt -> a seeded split of train."""
    folder = Path(root).expanduser()
    if not (folder / "train.txt").exists():
        raise DataError(
            f"{str(folder / 'train.txt')!r} not found: put train.txt, test.txt (and optionally "
            "dev.txt) there, one `LABEL text` example a line, or set BIGMODEL_DATA_DIR / data.root"
        )
    splits = {}
    for split, stem in (("train", "train"), ("val", "dev"), ("test", "test")):
        path = folder / f"{stem}.txt"
        if path.exists():  # a folder or an unreadable file is an error, not a missing split
            enc = encoding if isinstance(encoding, str) else encoding.get(stem, "utf-8")
            splits[split] = read_label_lines(path, enc)
    return _finish(splits, class_names, val_fraction, seed)


def load_csv_files(
    files: dict[str, str | None],
    text_column: str | int,
    label_column: str | int,
    delimiter: str | None,
    header: bool,
    encoding: str,
    class_names: list[str] | None,
    val_fraction: float,
    seed: int,
) -> tuple[Splits, list[str]]:
    splits = {}
    for split, path in files.items():
        if path is not None:
            if not Path(path).expanduser().exists():
                raise DataError(f"data.{split}_file={path!r}: no such file")
            splits[split] = read_csv_rows(
                Path(path).expanduser(), encoding, text_column, label_column, delimiter, header
            )
    return _finish(splits, class_names, val_fraction, seed)


def labeled_text(
    root: str,
    class_names: list[str] | None = None,
    encoding: str | dict[str, str] = "utf-8",
    val_fraction: Fraction = 0.1,
    tokenizer: str = "whitespace",
    lowercase: bool = True,
    min_freq: PositiveInt = 1,
    max_size: PositiveInt | None = None,
    max_length: PositiveInt | None = None,
    ngrams: PositiveInt = 1,
    batch_size: PositiveInt = 64,
    eval_batch_size: PositiveInt = 512,
    bucket_pool: NonNegativeInt = 0,
    num_workers: NonNegativeInt = 0,
    seed: int = 0,
) -> TextClassificationData:
    """SST-2/SST-5/TREC-style folders (see load_labeled_dir); labels are indices into class_names."""
    load = functools.partial(load_labeled_dir, root, encoding, class_names and list(class_names), val_fraction, seed)
    return TextClassificationData(
        load,
        tokenizer=tokenizer,
        lowercase=lowercase,
        min_freq=min_freq,
        max_size=max_size,
        max_length=max_length,
        ngrams=ngrams,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        bucket_pool=bucket_pool,
        num_workers=num_workers,
        seed=seed,
    )


def text_csv(
    train_file: str,
    val_file: str | None = None,
    test_file: str | None = None,
    text_column: str | int = "text",
    label_column: str | int = "label",
    delimiter: str | None = None,
    header: bool = True,
    class_names: list[str] | None = None,
    encoding: str = "utf-8",
    val_fraction: Fraction = 0.1,
    tokenizer: str = "words",
    lowercase: bool = True,
    min_freq: PositiveInt = 1,
    max_size: PositiveInt | None = None,
    max_length: PositiveInt | None = 256,
    ngrams: PositiveInt = 1,
    batch_size: PositiveInt = 64,
    eval_batch_size: PositiveInt = 512,
    bucket_pool: NonNegativeInt = 0,
    num_workers: NonNegativeInt = 0,
    seed: int = 0,
) -> TextClassificationData:
    """A user's CSV/TSV files; labels are class names (or indices into class_names)."""
    if text_column == label_column:
        raise DataError(
            f"data.text_column and data.label_column are both {text_column!r}: the model would read its labels"
        )
    files = {"train": train_file, "val": val_file, "test": test_file}
    load = functools.partial(
        load_csv_files,
        files,
        text_column,
        label_column,
        delimiter,
        header,
        encoding,
        class_names and list(class_names),
        val_fraction,
        seed,
    )
    return TextClassificationData(
        load,
        tokenizer=tokenizer,
        lowercase=lowercase,
        min_freq=min_freq,
        max_size=max_size,
        max_length=max_length,
        ngrams=ngrams,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        bucket_pool=bucket_pool,
        num_workers=num_workers,
        seed=seed,
    )
