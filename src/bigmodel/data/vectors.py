"""Pretrained word vectors for a text classifier's embedding: `model.pretrained_vectors=PATH`.

Three formats, told apart by the file itself:
- word2vec text: a first line `COUNT DIM`, then `word v1 ... vDIM` lines;
- word2vec binary: the same header, then per word `word<space>` and DIM little-endian float32;
- GloVe text: no header, `word v1 ... vDIM` lines from the first.
Only the vocabulary's words are kept while reading, so a large file needs little memory. A word
matches exactly, or (for a lowercased vocabulary) through its lowercase form when no exact match exists.
"""

import itertools
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import nn

from bigmodel.config import ConfigError
from bigmodel.data.errors import DataError

log = logging.getLogger("bigmodel")
Entry = tuple[str, np.ndarray]  # (word, vector (DIM,) float32)
Keep = Callable[[str], bool] | None  # which words to return (None: all); the others are skipped unparsed


def _header(line: bytes) -> tuple[int, int] | None:
    """(count, dim) when `line` is a word2vec header of two integers."""
    parts = line.split()
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        return int(parts[0]), int(parts[1])
    return None


def _text_entry(raw: bytes, path: Path, n: int, dim: int, keep: Keep) -> Entry | None:
    """The line's (word, vector), or None for a word `keep` rejects (its numbers are not parsed)."""
    try:
        line = raw.decode("utf-8").rstrip("\r\n ")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} line {n}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    fields = line.split(" ")
    if len(fields) < dim + 1 or not fields[0]:
        raise DataError(f"{path} line {n}: expected a word and {dim} numbers, got {len(fields)} fields")
    word = " ".join(fields[:-dim])
    if keep is not None and not keep(word):
        return None
    try:
        vec = np.array([float(x) for x in fields[-dim:]], dtype=np.float32)
    except ValueError:
        bad = next(x for x in fields[-dim:] if not _is_float(x))
        raise DataError(f"{path} line {n}: {bad[:30]!r} is not a number") from None
    if not np.isfinite(vec).all():
        raise DataError(f"{path} line {n}: the vector of {word!r} holds NaN or infinity")
    return word, vec


def _is_float(x: str) -> bool:
    try:
        float(x)
        return True
    except ValueError:
        return False


def _looks_like_text(line: bytes, dim: int) -> bool:
    try:
        fields = line.decode("utf-8").rstrip("\r\n ").split(" ")
    except UnicodeDecodeError:
        return False
    return len(fields) >= dim + 1 and all(_is_float(x) for x in fields[-dim:])


def _binary_entries(f: BinaryIO, path: Path, count: int, dim: int, keep: Keep) -> Iterator[Entry]:
    size = 4 * dim
    for i in range(count):
        word = bytearray()
        while (c := f.read(1)) != b" ":
            if not c:
                raise DataError(f"{path}: ends inside word {i + 1} of {count} (a truncated word2vec binary file?)")
            if c != b"\n" or word:  # a newline may end the previous vector
                word += c
        data = f.read(size)
        if len(data) < size:
            raise DataError(
                f"{path}: ends inside the vector of word {i + 1} of {count} (a truncated word2vec binary file?)"
            )
        text = word.decode("utf-8", errors="replace")
        if keep is None or keep(text):
            vec = np.frombuffer(data, dtype="<f4").astype(np.float32)
            if not np.isfinite(vec).all():
                raise DataError(f"{path}: the vector of word {i + 1} ({text!r}) holds NaN or infinity")
            yield text, vec


def read_vectors(path: str | Path, keep: Keep = None) -> tuple[str, int, Iterator[Entry]]:
    """(format name, dimension, the entries `keep` accepts) of a word-vector file; errors name the file and line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"model.pretrained_vectors={str(path)!r}: no such file")
    f = open(path, "rb")
    first = f.readline()
    if not first.strip():
        f.close()
        raise DataError(f"{path} line 1: empty: not a word2vec or GloVe vector file")
    header = _header(first)
    if header is None:  # GloVe: the first line is already a vector
        dim = len(first.rstrip(b"\r\n ").split(b" ")) - 1
        if dim < 1:
            f.close()
            raise DataError(f"{path} line 1: expected a word and its numbers (GloVe) or `COUNT DIM` (word2vec)")
        return "GloVe text", dim, _text_lines(f, path, dim, keep, [(1, first)])
    count, dim = header
    at = f.tell()
    probe = f.readline(1 << 20)  # a text line of numbers, or the start of binary vectors
    f.seek(at)
    if _looks_like_text(probe, dim) or not probe:
        return "word2vec text", dim, _text_lines(f, path, dim, keep, [])
    return "word2vec binary", dim, _closing(f, _binary_entries(f, path, count, dim, keep))


def _text_lines(f: BinaryIO, path: Path, dim: int, keep: Keep, first: list[tuple[int, bytes]]) -> Iterator[Entry]:
    """Entries of the remaining lines (from line 2), after those already read (`first`)."""
    with f:
        for n, raw in itertools.chain(first, enumerate(f, 2)):
            if raw.strip() and (entry := _text_entry(raw, path, n, dim, keep)) is not None:
                yield entry


def _closing(f: BinaryIO, entries: Iterator[Entry]) -> Iterator[Entry]:
    with f:
        yield from entries


def vocab_vectors(itos: list[str], path: str | Path, dim: int, lowercase: bool) -> tuple[dict[int, np.ndarray], str]:
    """{vocabulary id: vector} for the words (ids >= 2: not <pad>/<unk>) found in the file, and its format."""
    stoi = {w: i for i, w in enumerate(itos) if i >= 2}
    fmt, file_dim, entries = read_vectors(path, lambda w: w in stoi or (lowercase and w.lower() in stoi))
    if file_dim != dim:
        raise ConfigError(
            f"model.pretrained_vectors={str(path)!r} holds {file_dim}-dimensional vectors, the model's "
            f"embedding has {dim}: set the embedding size to {file_dim} (model.embed_dim for lstm and "
            "textcnn, model.hidden_size for transformer)"
        )
    found: dict[int, np.ndarray] = {}
    exact: set[int] = set()
    for word, vec in entries:
        i = stoi.get(word)
        if i is not None and i not in exact:
            found[i] = vec
            exact.add(i)
        elif lowercase and (i := stoi.get(word.lower())) is not None and i not in found:
            found[i] = vec
    return found, fmt


def load_pretrained_vectors(model: nn.Module, datamodule, path: str) -> float:
    """Copy the vectors of the data's vocabulary into the model's word embedding (the nn.Embedding
    with one row per vocabulary entry); words not in the file keep their initialization.
    Returns the share of the vocabulary's words covered."""
    vocab = getattr(datamodule, "vocab", None)
    if vocab is None:
        raise ConfigError(
            "model.pretrained_vectors needs text classification data with a vocabulary "
            "(e.g. data=sst2 or data=text_csv)"
        )
    embeds = [m for m in model.modules() if isinstance(m, nn.Embedding) and m.num_embeddings == len(vocab)]
    if not embeds:
        raise ConfigError(
            f"model.pretrained_vectors: {type(model).__name__} has no word embedding of {len(vocab)} rows to fill"
        )
    embed = embeds[0]
    found, fmt = vocab_vectors(vocab.itos, path, embed.embedding_dim, vocab.lowercase)
    words = len(vocab) - 2
    if not found:
        raise DataError(
            f"model.pretrained_vectors={path!r}: none of the vocabulary's {words:,} words is in it "
            "(another language, or another tokenization?)"
        )
    ids = torch.tensor(sorted(found))
    with torch.no_grad():
        embed.weight[ids] = torch.from_numpy(np.stack([found[i] for i in ids.tolist()])).to(embed.weight)
    coverage = len(found) / max(words, 1)
    log.info(
        f"pretrained vectors cover {coverage:.1%} of the {words:,} words ({fmt}, {path}); "
        "the others keep their random initialization"
    )
    return coverage
