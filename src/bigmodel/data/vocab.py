"""The vocabulary built from a training split (tokenization is in tokenizers.py).

The vocabulary is fitted on training text only (so validation and test words the model never saw
map to `<unk>`, as they would for a real user) and saved with the checkpoint as plain Python
types, so `bigmodel predict` encodes text exactly as training did.
"""

from collections import Counter
from collections.abc import Iterable
from typing import Any

from bigmodel.data.errors import DataError
from bigmodel.data.tokenizers import Tokenizer, tokenize, with_ngrams  # noqa: F401 (Tokenizer: imported from here too)

PAD, UNK = "<pad>", "<unk>"


class Vocab:
    """Token <-> id. Id 0 is `<pad>`, id 1 is `<unk>`; the rest by descending training frequency."""

    def __init__(
        self,
        tokens: list[str],
        *,
        tokenizer: Tokenizer | str = Tokenizer.whitespace,
        lowercase: bool = True,
        max_length: int | None = None,
        ngrams: int = 1,
    ) -> None:
        if tokens[:2] != [PAD, UNK]:
            raise ValueError(f"a vocabulary starts with {PAD!r}, {UNK!r}; got {tokens[:2]}")
        self.itos = list(tokens)
        self.stoi = {t: i for i, t in enumerate(self.itos)}
        self.tokenizer, self.lowercase, self.max_length = Tokenizer(tokenizer), lowercase, max_length
        self.ngrams = ngrams  # > 1: the n-grams of adjacent tokens are tokens too (tokenizers.with_ngrams)
        self.pad_idx, self.unk_idx = 0, 1

    @classmethod
    def build(
        cls,
        texts: Iterable[str],
        *,
        min_freq: int = 1,
        max_size: int | None = None,
        tokenizer: Tokenizer | str = Tokenizer.whitespace,
        lowercase: bool = True,
        max_length: int | None = None,
        ngrams: int = 1,
    ) -> "Vocab":
        """Tokens (and n-grams, when ngrams > 1) seen at least `min_freq` times, the `max_size` most
        frequent (ties broken alphabetically, so the same text always gives the same ids)."""
        tokenizer = Tokenizer(tokenizer)
        counts = Counter(tok for text in texts for tok in with_ngrams(tokenize(text, tokenizer, lowercase), ngrams))
        kept = sorted(
            (t for t, c in counts.items() if c >= min_freq and t not in (PAD, UNK)), key=lambda t: (-counts[t], t)
        )
        if max_size is not None:
            kept = kept[:max_size]
        return cls([PAD, UNK, *kept], tokenizer=tokenizer, lowercase=lowercase, max_length=max_length, ngrams=ngrams)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`: its first `max_length` tokens, then their n-grams (when ngrams > 1);
        never empty (an empty text is one `<unk>`)."""
        tokens = tokenize(text, self.tokenizer, self.lowercase)
        if self.max_length is not None:
            tokens = tokens[: self.max_length]
        ids = [self.stoi.get(t, self.unk_idx) for t in with_ngrams(tokens, self.ngrams)]
        return ids or [self.unk_idx]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.itos[i] for i in ids]

    def state_dict(self) -> dict[str, Any]:
        return {
            "tokens": list(self.itos),
            "tokenizer": self.tokenizer.value,
            "lowercase": self.lowercase,
            "max_length": self.max_length,
            "ngrams": self.ngrams,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "Vocab":
        """The vocabulary a checkpoint or an exported folder saved; a damaged one is one line (DataError)."""
        missing = [k for k in ("tokens", "tokenizer", "lowercase", "max_length") if k not in (state or {})]
        if not isinstance(state, dict) or missing or not isinstance(state["tokens"], list):
            raise DataError(
                f"the saved vocabulary is damaged (missing {missing or 'its list of tokens'}); re-train or re-export"
            )
        try:
            return cls(
                state["tokens"],
                tokenizer=state["tokenizer"],
                lowercase=state["lowercase"],
                max_length=state["max_length"],
                ngrams=state.get("ngrams", 1),  # older checkpoints: 1
            )
        except (TypeError, ValueError) as e:
            raise DataError(f"the saved vocabulary is damaged ({type(e).__name__}: {e})") from None
