"""Tokenizers: text -> tokens for the classifiers' vocabulary, and text <-> ids for language models.

Text classification (`Tokenizer`, `tokenize`): `whitespace` for pre-tokenized text, `words` for raw
text (words and punctuation; every CJK character is a token of its own), `chars` (every non-space
character), `jieba` (Chinese word segmentation, the optional `zh` extra). The choice is saved with
the vocabulary, so `bigmodel predict` splits text exactly as training did. `with_ngrams` adds the
n-grams of adjacent tokens as tokens of their own (`data.ngrams`; character bigrams for Chinese).

Language models: characters, or GPT-2 BPE through tiktoken (optional). Both turn text into ids below
65536 (token caches hold uint16) and back, and save themselves as a small dict that travels in the
checkpoint, so `bigmodel generate` reads text exactly as training did.
"""

import logging
import re
from enum import Enum
from typing import Any

import numpy as np

from bigmodel.data.errors import DataError

# CJK ideographs (BERT's basic tokenizer rule: the CJK Unified Ideographs blocks, extensions A-H and the
# compatibility ideographs) and the CJK Symbols and Punctuation block (less its ideographic space
# U+3000, which is white space). Kana and Hangul are not in it: they stay words, as in BERT.
_CJK = (
    "\u3001-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
    "\U00020000-\U0002ebef\U0002f800-\U0002fa1f\U00030000-\U000323af"
)
# one CJK character | a word (letters/digits/_ but no CJK, with an inner apostrophe) | one punctuation mark.
# Without CJK characters in the text this is exactly `\w+(?:'\w+)?|[^\w\s]`, the English rule.
_WORDS = re.compile(f"[{_CJK}]|[^\\W{_CJK}]+(?:'[^\\W{_CJK}]+)?|[^\\w\\s]")


class Tokenizer(Enum):
    """How a classifier's text is split into vocabulary tokens (`data.tokenizer`)."""

    whitespace = "whitespace"  # the text is already tokenized (SST, TREC): split on white space
    words = "words"  # raw text: "it's good." -> it's good . ; "很好 ok" -> 很 好 ok
    chars = "chars"  # every non-space character: "很好 ok" -> 很 好 o k
    jieba = "jieba"  # Chinese word segmentation (pip install 'bigmodel[zh]'): "质量很好" -> 质量 很 好


def tokenize(text: str, tokenizer: Tokenizer | str = Tokenizer.whitespace, lowercase: bool = True) -> list[str]:
    tokenizer = Tokenizer(tokenizer)
    if lowercase:
        text = text.lower()
    if tokenizer == Tokenizer.whitespace:
        return text.split()
    if tokenizer == Tokenizer.words:
        return _WORDS.findall(text)
    if tokenizer == Tokenizer.chars:
        return [c for c in text if not c.isspace()]
    return [t for t in _jieba().lcut(text) if not t.isspace()]


def with_ngrams(tokens: list[str], ngrams: int = 1) -> list[str]:
    """`tokens`, then the n-grams of 2..`ngrams` adjacent tokens (space-joined), each order in text order:
    ["很", "好", "用"], 2 -> ["很", "好", "用", "很 好", "好 用"]. The n-grams follow the whole text rather
    than sit between its tokens, so a convolution or an LSTM reads the tokens and the n-grams as two
    sequences of neighbours, and a bag-of-tokens model sees them all."""
    out = list(tokens)
    for n in range(2, ngrams + 1):
        out += [" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return out


def _jieba():
    try:
        import jieba
    except ImportError:
        raise DataError(
            "data.tokenizer=jieba needs the jieba package: pip install 'bigmodel[zh]' "
            "(or pip install jieba), or use data.tokenizer=chars"
        ) from None
    jieba.setLogLevel(logging.WARNING)  # no "Building prefix dict ..." lines on every start
    return jieba


def unknown_warning(ids: list[list[int]], unk_idx: int, tokenizer: Tokenizer, split: str = "validation") -> str | None:
    """A warning when more than a third of the tokens of `ids` are `<unk>`, with the option to try."""
    total = sum(len(x) for x in ids)
    unknown = sum(x.count(unk_idx) for x in ids)
    if not total or unknown * 3 <= total:
        return None
    hint = {
        Tokenizer.whitespace: "data.tokenizer=words for raw (untokenized) text, or data.tokenizer=chars "
        "for Chinese/Japanese text",
        Tokenizer.words: "data.tokenizer=chars (or jieba) for text written without spaces between words, "
        "or a smaller data.min_freq",
        Tokenizer.chars: "a smaller data.min_freq or data.max_size=null",
        Tokenizer.jieba: "data.tokenizer=chars, or a smaller data.min_freq",
    }[tokenizer]
    return f"{unknown / total:.0%} of the {split} tokens are <unk> (not in the training vocabulary): try {hint}"


class CharTokenizer:
    """LM: one token per character of a fixed vocabulary (the sorted characters of the corpus)."""

    def __init__(self, chars: str) -> None:
        self.chars = chars
        self.vocab_size = len(chars)
        self.index = {c: i for i, c in enumerate(chars)}
        codes = np.array([ord(c) for c in chars], dtype=np.int64)
        self._order = np.argsort(codes)  # for a vectorized code point -> id lookup
        self._sorted = codes[self._order]

    def encode(self, text: str) -> list[int]:
        unknown = sorted(set(text) - self.index.keys())
        if unknown:
            raise DataError(
                f"characters {''.join(unknown)!r} are not in this model's vocabulary of {self.vocab_size} characters"
            )
        return [self.index[c] for c in text]

    def encode_array(self, text: str) -> np.ndarray:
        """encode() for a whole chunk at once, vectorized (the vocabulary is known to cover it)."""
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        return self._order[np.searchsorted(self._sorted, codes)].astype(np.uint16)

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def start_ids(self) -> list[int]:
        """What to condition on when there is no prompt: a newline if the vocabulary has one."""
        return [self.index.get("\n", 0)]

    def state_dict(self) -> dict:
        return {"kind": "char", "chars": self.chars}


class BPETokenizer:
    """GPT-2 style byte-pair encoding through tiktoken (the optional `bpe` extra), loaded lazily."""

    def __init__(self, encoding: str = "gpt2", vocab_size: int | None = None) -> None:
        self.encoding = encoding
        self._enc: Any = None  # a tiktoken Encoding, made on first use
        self.vocab_size = vocab_size or self.enc.n_vocab

    @property
    def enc(self):
        if self._enc is None:
            try:
                import tiktoken
            except ImportError:
                raise DataError(
                    "data.tokenizer=bpe needs tiktoken: pip install 'bigmodel[bpe]' "
                    "(or pip install tiktoken), or use data.tokenizer=char"
                ) from None
            try:
                self._enc = tiktoken.get_encoding(self.encoding)
            except Exception as e:  # offline: its vocabulary files are downloaded on first use
                raise DataError(
                    f"tiktoken could not load the {self.encoding!r} BPE vocabulary ({type(e).__name__}); "
                    "it is downloaded on first use: run once with internet access, or copy a tiktoken "
                    "cache folder here and point TIKTOKEN_CACHE_DIR at it"
                ) from None
            if self._enc.n_vocab > 65536:
                raise DataError(
                    f"encoding {self.encoding!r} has {self._enc.n_vocab} tokens; "
                    "token caches hold uint16 ids (at most 65536)"
                )
        return self._enc

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def encode_array(self, text: str) -> np.ndarray:
        return np.array(self.encode(text), dtype=np.uint16)

    def decode(self, ids: list[int]) -> str:
        return self.enc.decode(ids)

    def start_ids(self) -> list[int]:
        return [self.enc.eot_token]

    def state_dict(self) -> dict:
        return {"kind": "bpe", "encoding": self.encoding, "vocab_size": self.vocab_size}


def tokenizer_from_state(state: dict) -> CharTokenizer | BPETokenizer:
    """The tokenizer saved in a checkpoint's "data" entry (see LMData.state_dict)."""
    if state["kind"] == "char":
        return CharTokenizer(state["chars"])
    return BPETokenizer(state["encoding"], state.get("vocab_size"))
