"""Tokenizers for language-model data: characters, or GPT-2 BPE through tiktoken (optional).

Both turn text into ids below 65536 (token caches hold uint16) and back, and save themselves as a
small dict that travels in the checkpoint, so `bigmodel generate` reads text exactly as training did.
"""

import numpy as np

from bigmodel.data.errors import DataError


class CharTokenizer:
    """One token per character of a fixed vocabulary (the sorted characters of the corpus)."""

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
            raise DataError(f"characters {''.join(unknown)!r} are not in this model's vocabulary "
                            f"of {self.vocab_size} characters")
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
        self._enc = None
        self.vocab_size = vocab_size or self.enc.n_vocab

    @property
    def enc(self):
        if self._enc is None:
            try:
                import tiktoken
            except ImportError:
                raise DataError("data.tokenizer=bpe needs tiktoken: pip install 'bigmodel[bpe]' "
                                "(or pip install tiktoken), or use data.tokenizer=char") from None
            try:
                self._enc = tiktoken.get_encoding(self.encoding)
            except Exception as e:  # offline: its vocabulary files are downloaded on first use
                raise DataError(
                    f"tiktoken could not load the {self.encoding!r} BPE vocabulary ({type(e).__name__}); "
                    "it is downloaded on first use: run once with internet access, or copy a tiktoken "
                    "cache folder here and point TIKTOKEN_CACHE_DIR at it") from None
            if self._enc.n_vocab > 65536:
                raise DataError(f"encoding {self.encoding!r} has {self._enc.n_vocab} tokens; "
                                "token caches hold uint16 ids (at most 65536)")
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
