"""Language-model data: text files -> tokens (char-level or GPT-2 BPE) -> blocks of `block_size`.

A corpus is tokenized once into a uint16 file under `cache_dir` and read back as a memory map, so
a large corpus is neither re-tokenized nor held in RAM. The token stream is split in order: the
first part trains, the last `val_fraction` validates (and `test_fraction`, if any, after it).
Train items are every valid block start (an epoch sees each offset once, in a (seed, epoch)
shuffled order, so batches are random contiguous blocks and resume exactly); val/test items are
non-overlapping blocks, so one pass covers every token once.
"""

import functools
import hashlib
import json
import logging
import math
import urllib.request
from collections.abc import Callable
from glob import glob
from pathlib import Path

import numpy as np
import torch

from bigmodel.atomic import atomic_open, write_text_atomic
from bigmodel.config import ConfigError
from bigmodel.data.errors import DataError
from bigmodel.data.loading import ResumableSampler
from bigmodel.data.tokenizers import BPETokenizer, CharTokenizer, tokenizer_from_state
from bigmodel.metrics import LanguageModel
from bigmodel.ranges import Fraction, PositiveInt

log = logging.getLogger("bigmodel")
CHUNK = 1 << 20  # characters read and tokenized at a time
SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


# ---------------------------------------------------------------- the uint16 token cache
def find_files(files: str | list[str]) -> list[Path]:
    """Each entry is a file, a folder (its *.txt files) or a glob; sorted within each entry."""
    found: list[Path] = []
    for entry in [files] if isinstance(files, str) else list(files):
        p = Path(entry).expanduser()
        if p.is_dir():
            found += sorted(p.rglob("*.txt"))
        elif p.is_file():
            found.append(p)
        else:
            found += sorted(Path(f) for f in glob(str(p), recursive=True) if Path(f).is_file())
    if not found:
        raise DataError(f"data.files={files!r}: no text files found (give files, folders of *.txt, or globs)")
    return found


def read_chunks(path: Path):
    """The file's text in pieces of about CHUNK characters, cut after a newline where possible."""
    try:
        with open(path, encoding="utf-8") as f:
            rest = ""
            while block := f.read(CHUNK):
                text = rest + block
                cut = text.rfind("\n") + 1 or len(text)
                rest = text[cut:]
                yield text[:cut]
            if rest:
                yield rest
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None
    except OSError as e:  # a folder named like a text file, no permission, a vanished file
        raise DataError(f"{path}: cannot read it ({e.strerror or type(e).__name__})") from None


def build_tokenizer(files: list[Path], kind: str, encoding: str, base_chars: str = "") -> CharTokenizer | BPETokenizer:
    """BPE, or the corpus's characters: `base_chars` (a checkpoint's, in their order) then the new ones sorted."""
    if kind == "bpe":
        return BPETokenizer(encoding)
    if kind != "char":
        raise DataError(f"data.tokenizer={kind!r} is not valid; use 'char' or 'bpe'")
    chars: set[str] = set()
    for f in files:
        for text in read_chunks(f):
            chars.update(text)
    ordered = base_chars + "".join(sorted(chars - set(base_chars)))
    if len(ordered) > 65536:
        raise DataError(f"{len(ordered)} distinct characters do not fit uint16 token ids")
    return CharTokenizer(ordered)


def write_tokens(files: list[Path], tok: CharTokenizer | BPETokenizer, path: Path) -> int:
    """Tokenize `files` into a raw uint16 file at `path` (written to a temp file, then renamed)."""
    n = 0
    with atomic_open(path) as out:
        for f in files:
            for text in read_chunks(f):
                ids = tok.encode_array(text)
                out.write(ids.tobytes())
                n += len(ids)
            if isinstance(tok, BPETokenizer):  # documents are separated by the end-of-text token
                out.write(np.array(tok.start_ids(), dtype=np.uint16).tobytes())
                n += 1
    return n


def cache_tokens(
    files: list[Path], kind: str, encoding: str, cache_dir: str, base_chars: str = ""
) -> tuple[np.memmap, dict]:
    """Tokens of all `files` as a read-only uint16 memmap, and the tokenizer's state.

    The cache key is the tokenizer choice (and base characters) and each file's path, size and
    modification time."""
    sig = [kind, encoding if kind == "bpe" else base_chars] + [
        f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files
    ]
    key = hashlib.sha1("\n".join(sig).encode()).hexdigest()[:16]
    folder = Path(cache_dir).expanduser() / "lm_tokens" / f"{files[0].stem}-{kind}-{key}"
    meta_path, bin_path = folder / "meta.json", folder / "tokens.bin"
    if not meta_path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tok = build_tokenizer(files, kind, encoding, base_chars)
        log.info(f"tokenizing {len(files)} file(s) ({kind}) into {folder}")
        n = write_tokens(files, tok, bin_path)
        meta = {"tokenizer": tok.state_dict(), "num_tokens": n, "files": [str(f) for f in files]}
        write_text_atomic(meta_path, json.dumps(meta))  # written last: its presence marks a complete cache
    meta = json.loads(meta_path.read_text())
    if meta["num_tokens"] == 0:
        raise DataError(f"{[str(f) for f in files]}: no text to train on")
    return np.memmap(bin_path, dtype=np.uint16, mode="r", shape=(meta["num_tokens"],)), meta["tokenizer"]


# ---------------------------------------------------------------- batches
class TokenBatches:
    """An iterable of (x, y) int64 (B, T) batches, y = x shifted by one token, from blocks that
    start at `sampler` indices times `stride`; gathered with one numpy index per batch."""

    def __init__(
        self,
        tokens: np.ndarray,
        *,
        block_size: int,
        stride: int,
        batch_size: int,
        sampler: ResumableSampler,
        drop_last: bool,
        device: torch.device | None,
    ) -> None:
        self.tokens, self.block_size, self.stride, self.batch_size = tokens, block_size, stride, batch_size
        self.sampler, self.drop_last = sampler, drop_last
        self.device = device or torch.device("cpu")
        self.offsets = np.arange(block_size + 1)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        order = np.fromiter(iter(self.sampler), dtype=np.int64)
        pin = self.device.type == "cuda"
        for i in range(len(self)):
            starts = order[i * self.batch_size : (i + 1) * self.batch_size] * self.stride
            chunk = torch.from_numpy(self.tokens[starts[:, None] + self.offsets].astype(np.int64))  # (B, T+1)
            if pin:
                chunk = chunk.pin_memory()
            chunk = chunk.to(self.device, non_blocking=True)
            yield chunk[:, :-1], chunk[:, 1:]


class LMData:
    """The language-model data module (see bigmodel.data): blocks of a tokenized text corpus."""

    def __init__(
        self,
        files: str | list[str],
        *,
        tokenizer: str = "char",
        encoding: str = "gpt2",
        cache_dir: str = "~/.cache/bigmodel",
        block_size: int = 256,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.0,
        seed: int = 0,
        epoch_blocks: int | None = None,
        fetch: Callable[[], None] | None = None,
    ) -> None:
        self.fetch = fetch  # called first in setup(), e.g. to download a missing corpus
        self.files, self.kind, self.encoding, self.cache_dir = files, tokenizer, encoding, cache_dir
        self.block_size, self.batch_size = block_size, batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_fraction, self.test_fraction, self.seed = val_fraction, test_fraction, seed
        self.epoch_blocks = epoch_blocks  # training blocks per epoch; None = every start offset once
        self.splits: dict[str, np.ndarray] = {}
        self.tokenizer: CharTokenizer | BPETokenizer | None = None
        self.base_chars = ""  # a checkpoint's characters, kept first in their order (reuse_vocabulary)

    def setup(self) -> None:
        if self.splits:
            return
        if self.fetch is not None:
            self.fetch()
        tokens, tok_state = cache_tokens(
            find_files(self.files), self.kind, self.encoding, self.cache_dir, self.base_chars
        )
        self.tokenizer = tokenizer_from_state(tok_state)
        if self.base_chars and isinstance(self.tokenizer, CharTokenizer):
            new = self.tokenizer.chars[len(self.base_chars) :]
            log.info(f"characters: {len(self.base_chars)} from the checkpoint + {len(new)} new {new!r}")
        n = len(tokens)
        n_test = int(n * self.test_fraction)
        n_val = int(n * self.val_fraction)
        n_train = n - n_val - n_test
        self.splits = {"train": tokens[:n_train], "val": tokens[n_train : n_train + n_val]}
        self.splits["test"] = tokens[n_train + n_val :] if n_test else self.splits["val"]  # none: test = val
        self._check_sizes(n, n_test > 0)
        log.info(
            f"{n:,} tokens ({self.kind}, vocabulary {self.tokenizer.vocab_size}): "
            + ", ".join(f"{k} {len(v):,}" for k, v in self.splits.items())
        )

    def _check_sizes(self, n: int, has_test: bool) -> None:
        """Each split must hold one block of block_size + 1 tokens; the advice depends on which is short."""
        need, parts = self.block_size + 1, 3 if has_test else 2
        short = [(s, len(t)) for s, t in self.splits.items() if len(t) < need]
        if not short:
            return
        split, have = short[0]
        if n < parts * need:  # no choice of fractions helps: each split needs a whole block
            raise DataError(
                f"the corpus has {n:,} tokens: too few for a block of data.block_size={self.block_size} "
                f"(+1 token) in each of the {parts} splits, which needs {parts * need:,}; use more "
                "text (data.files) or a smaller data.block_size"
            )
        key = {
            "train": "a smaller data.val_fraction / data.test_fraction",
            "val": "a larger data.val_fraction",
            "test": "a larger data.test_fraction",
        }[split]
        raise DataError(
            f"the {split} split has {have:,} tokens (of {n:,}), too few for one block of "
            f"data.block_size={self.block_size} (+1); use {key}, a smaller block_size or more text"
        )

    def model_args(self) -> dict:
        return {"vocab_size": self._tokenizer().vocab_size}

    def metrics(self) -> LanguageModel:
        return LanguageModel()

    def state_dict(self) -> dict:
        return {"tokenizer": self._tokenizer().state_dict(), "block_size": self.block_size}

    def _tokenizer(self) -> CharTokenizer | BPETokenizer:
        if self.tokenizer is None:
            raise RuntimeError("no tokenizer yet: call setup() first")
        return self.tokenizer

    def reuse_vocabulary(self, state: dict) -> bool:
        """Tokenize as a checkpoint did (call before setup; for `init_from`): char-level keeps its
        characters' ids and appends the corpus's new characters; BPE uses its encoding."""
        tok = state.get("tokenizer")
        if not tok:
            return False
        if tok["kind"] != self.kind:
            raise ConfigError(
                f"init_from: the checkpoint's tokenizer is {tok['kind']!r}, "
                f"data.tokenizer={self.kind!r}: set data.tokenizer={tok['kind']} so its token ids "
                "keep their meaning"
            )
        if tok["kind"] == "char":
            self.base_chars = tok["chars"]
        elif tok["encoding"] != self.encoding:
            raise ConfigError(
                f"init_from: the checkpoint's BPE encoding is {tok['encoding']!r}, "
                f"data.encoding={self.encoding!r}: set data.encoding={tok['encoding']}"
            )
        return True

    def loader(
        self,
        split: str,
        *,
        epoch: int = 0,
        skip_batches: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | None = None,
    ) -> TokenBatches:
        if split not in self.splits:
            raise KeyError(f"split {split!r} not available; have {sorted(self.splits)}")
        tokens, t, train = self.splits[split], self.block_size, split == "train"
        stride = 1 if train else t
        n_blocks = (len(tokens) - t - 1) // stride + 1  # blocks whose x and y both fit
        bs = self.batch_size if train else self.eval_batch_size
        sampler = ResumableSampler(
            n_blocks,
            shuffle=train,
            seed=self.seed,
            epoch=epoch,
            rank=rank,
            world_size=world_size,
            skip=skip_batches * bs,
            limit=self.epoch_blocks if train else None,
        )
        return TokenBatches(
            tokens, block_size=t, stride=stride, batch_size=bs, sampler=sampler, drop_last=train, device=device
        )


# ---------------------------------------------------------------- data modules from config
def text_lm(
    files: str | list[str],
    tokenizer: str = "char",
    encoding: str = "gpt2",
    cache_dir: str = "~/.cache/bigmodel",
    block_size: PositiveInt = 256,
    batch_size: PositiveInt = 64,
    eval_batch_size: PositiveInt | None = None,
    val_fraction: Fraction = 0.1,
    test_fraction: Fraction = 0.0,
    seed: int = 0,
    epoch_blocks: PositiveInt | None = None,
) -> LMData:
    """Any text file(s): `files` is a path, a folder of *.txt, a glob, or a list of them."""
    return LMData(
        files,
        tokenizer=tokenizer,
        encoding=encoding,
        cache_dir=cache_dir,
        block_size=block_size,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        epoch_blocks=epoch_blocks,
    )


def fetch_shakespeare(path: Path, download: bool) -> None:
    """Download tiny shakespeare to `path` unless it is there."""
    if path.is_file():
        return
    why = "data.download=false"
    if download:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with urllib.request.urlopen(SHAKESPEARE_URL, timeout=30) as r:
                path.write_bytes(r.read())
            return
        except Exception as e:  # offline, refused, read-only folder ...
            why = f"download failed ({type(e).__name__}: {e})"
    raise DataError(
        f"tiny shakespeare not found at {str(path)!r} and {why}. Get it: download "
        f"{SHAKESPEARE_URL} to that path (or set BIGMODEL_DATA_DIR / data.root to where "
        "tinyshakespeare/input.txt is)"
    )


def shakespeare_char(
    root: str,
    download: bool = True,
    cache_dir: str = "~/.cache/bigmodel",
    block_size: PositiveInt = 256,
    batch_size: PositiveInt = 64,
    eval_batch_size: PositiveInt | None = None,
    val_fraction: Fraction = 0.1,
    seed: int = 0,
    epoch_blocks: PositiveInt | None = None,
) -> LMData:
    """tiny shakespeare (1.1 M characters, 65 distinct), char-level: first 90% train, last 10% val."""
    path = Path(root).expanduser() / "input.txt"
    return LMData(
        str(path),
        tokenizer="char",
        cache_dir=cache_dir,
        block_size=block_size,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        val_fraction=val_fraction,
        seed=seed,
        epoch_blocks=epoch_blocks,
        fetch=functools.partial(fetch_shakespeare, path, download),
    )
