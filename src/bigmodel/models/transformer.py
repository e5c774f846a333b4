"""A Transformer encoder text classifier: pre-norm blocks, a key-padding mask, mean or CLS pooling.

`forward(tokens (B, T), lengths (B,)) -> logits (B, num_classes)`. Padding keys are masked out of
attention and out of the pooling, so a text's logits do not depend on its batch's padding.
"""

import math
from enum import Enum
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from bigmodel.models.rnn import WordDropout, length_mask, small_embedding_init
from bigmodel.ranges import Fraction, MultipleOf, NonNegativeInt, PositiveInt, Range


class Positions(Enum):
    learned = "learned"  # a trained vector per position, up to max_length
    sinusoidal = "sinusoidal"  # the fixed sin/cos code of "Attention is all you need"


class Pooling(Enum):
    mean = "mean"  # average of the final states of the real tokens
    cls = "cls"  # the final state of a learned token prepended to every text
    max = "max"  # element-wise max of the final states of the real tokens


def sinusoids(n: int, dim: int) -> torch.Tensor:
    """(n, dim) fixed position codes."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    out = torch.zeros(n, dim)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return out


class SelfAttention(nn.Module):
    def __init__(self, dim: int, n_head: int, dropout: float) -> None:
        super().__init__()
        if dim % n_head:
            raise ValueError(f"hidden_size={dim} must be divisible by n_head={n_head}")
        self.n_head, self.dropout = n_head, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4)  # (B, nh, T, hs)
        # keep[:, None, None, :]: every query (padding too) attends to the real tokens only
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=keep[:, None, None, :], dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-norm: x + attn(norm(x)), then x + mlp(norm(x)); trains without warm-up tricks."""

    def __init__(self, dim: int, n_head: int, ffn_size: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, n_head, dropout)
        self.mlp = nn.Sequential(nn.Linear(dim, ffn_size), nn.GELU(), nn.Linear(ffn_size, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), keep))
        return x + self.drop(self.mlp(self.norm2(x)))


class TransformerClassifier(nn.Module):
    """pretrained_vectors / freeze_embeddings: as for LSTMClassifier (word vectors of hidden_size)."""

    def __init__(
        self,
        vocab_size: PositiveInt,
        num_classes: PositiveInt,
        pad_idx: NonNegativeInt = 0,
        hidden_size: Annotated[int, Range(ge=1), MultipleOf("n_head")] = 128,
        n_layer: PositiveInt = 2,
        n_head: PositiveInt = 4,
        ffn_size: PositiveInt | None = None,
        dropout: Fraction = 0.1,
        embed_dropout: Fraction = 0.0,
        word_dropout: Fraction = 0.0,
        max_length: PositiveInt = 512,
        positions: Positions | str = Positions.learned,
        pooling: Pooling | str = Pooling.mean,
        pretrained_vectors: str | None = None,
        freeze_embeddings: bool = False,
    ) -> None:
        super().__init__()
        self.positions, self.pooling, self.max_length = Positions(positions), Pooling(pooling), max_length
        self.embed = nn.Embedding(vocab_size, hidden_size, padding_idx=pad_idx)
        small_embedding_init(self.embed)
        self.pretrained_vectors = pretrained_vectors  # the wiring fills `embed` from it (see data/vectors.py)
        self.embed.weight.requires_grad_(not freeze_embeddings)
        n_pos = max_length + (self.pooling == Pooling.cls)
        if self.positions == Positions.learned:
            self.pos = nn.Parameter(torch.randn(n_pos, hidden_size) * 0.02)
        else:
            # scaled to the word vectors' size (std 0.1, see small_embedding_init): at full size (RMS 0.7)
            # the fixed code drowns the words and training stalls for epochs
            self.register_buffer("pos", sinusoids(n_pos, hidden_size) * 0.1 * math.sqrt(2), persistent=False)
        self.cls = nn.Parameter(torch.randn(1, 1, hidden_size) * 0.02) if self.pooling == Pooling.cls else None
        self.word_dropout, self.embed_dropout = WordDropout(word_dropout), nn.Dropout(embed_dropout)
        self.blocks = nn.ModuleList(
            Block(hidden_size, n_head, ffn_size or 4 * hidden_size, dropout) for _ in range(n_layer)
        )
        self.norm = nn.LayerNorm(hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, num_classes)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # a text longer than the position table is read up to max_length tokens (as data.max_length
        # would cut it), so an unusually long text at predict time is classified, not an error
        tokens = tokens[:, : self.max_length]
        b, t = tokens.shape
        lengths = lengths.clamp(min=1, max=self.max_length).to(tokens.device)
        keep = length_mask(lengths, t)  # (B, T)
        x = self.word_dropout(self.embed(tokens))  # (B, T, D)
        if self.cls is not None:
            x = torch.cat([self.cls.expand(b, 1, -1), x], dim=1)  # (B, 1 + T, D)
            keep = torch.cat([keep.new_ones(b, 1), keep], dim=1)
        x = self.embed_dropout(x + self.pos[: x.shape[1]])
        for block in self.blocks:
            x = block(x, keep)
        x = self.norm(x)
        if self.pooling == Pooling.cls:
            pooled = x[:, 0]
        elif self.pooling == Pooling.max:
            pooled = x.masked_fill(~keep[..., None], float("-inf")).amax(1)
        else:
            pooled = (x * keep[..., None]).sum(1) / lengths[:, None]
        return self.head(self.dropout(pooled))  # (B, num_classes)
