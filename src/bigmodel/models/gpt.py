"""A small decoder-only Transformer (GPT): token ids (B, T) -> next-token logits (B, T, V).

Pre-LayerNorm blocks of causal self-attention and a GELU MLP; attention goes through
`F.scaled_dot_product_attention(is_causal=True)`, which picks FlashAttention / memory-efficient
kernels on a GPU. The output projection shares its weight with the token embedding.
"""

import math
from collections.abc import Iterator
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from bigmodel.ranges import Fraction, MultipleOf, PositiveInt, Range


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position t only sees positions <= t."""

    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool) -> None:
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"model.n_embd={n_embd} must be a multiple of model.n_head={n_head}")
        self.n_head, self.dropout = n_head, dropout
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=bias)  # q, k, v for all heads in one matmul
        self.proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.proj.residual = True  # scaled init (see GPT._init_weights)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)  # 3 x (B, T, C)
        # (B, T, C) -> (B, nh, T, hs): heads become a batch dimension
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(b, t, c)  # heads side by side again: (B, T, C)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward: C -> 4C -> GELU -> C."""

    def __init__(self, n_embd: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.up = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.act = nn.GELU()
        self.down = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.down.residual = True
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(self.act(self.up(x))))


class Block(nn.Module):
    """x + attn(LN(x)), then x + mlp(LN(x)): the residual stream itself is never normalized."""

    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, bias)
        self.ln2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = MLP(n_embd, dropout, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Decoder-only language model. `vocab_size` comes from the data (its tokenizer)."""

    def __init__(self, vocab_size: PositiveInt, block_size: PositiveInt = 256, n_layer: PositiveInt = 6,
                 n_head: PositiveInt = 6, n_embd: Annotated[int, Range(ge=1), MultipleOf("n_head")] = 384,
                 dropout: Fraction = 0.0, bias: bool = True) -> None:
        super().__init__()
        self.vocab_size, self.block_size = vocab_size, block_size
        self.n_layer, self.n_head, self.n_embd = n_layer, n_head, n_embd
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout, bias) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, bias=bias)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # tied: one (V, C) matrix reads and writes tokens
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            std = 0.02
            if getattr(module, "residual", False):
                std /= math.sqrt(2 * self.n_layer)  # each block adds two projections to the residual stream
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; the position table is left out by default (it does no matmul work)."""
        n = sum(p.numel() for p in self.parameters())  # the tied matrix counts once
        return n - self.pos_emb.weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token: 6N for the matmuls over weights (forward 2N, backward 4N)
        plus 12 * L * H * Q * T for attention scores and their weighted sum (Q = head size)."""
        t = seq_len or self.block_size
        return 6 * self.num_params() + 12 * self.n_layer * self.n_head * (self.n_embd // self.n_head) * t

    def forward(self, idx: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        b, t = idx.shape
        if t > self.block_size:
            raise ValueError(f"sequence of {t} tokens is longer than model.block_size={self.block_size}")
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        if last_only:  # sampling needs only the next token: skip the head on the other positions
            x = x[:, -1:, :]
        return self.lm_head(x)  # (B, T, V), or (B, 1, V)

    @torch.no_grad()
    def stream(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
               top_k: int | None = None, generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
        """Yields the next token (B, 1) max_new_tokens times, continuing idx (B, T).

        temperature divides the logits (0 = always the most likely token); top_k keeps only the k
        most likely tokens; `generator` makes sampling reproducible without touching the global RNG.
        """
        for _ in range(max_new_tokens):
            context = idx[:, -self.block_size :]  # the model sees at most block_size tokens
            logits = self(context, last_only=True)[:, -1, :].float()  # (B, V)
            if temperature <= 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None and 0 < top_k < logits.shape[-1]:
                    kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1) the k-th largest
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = F.softmax(logits, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
            idx = torch.cat([idx, nxt], dim=1)
            yield nxt

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """idx (B, T) followed by max_new_tokens sampled tokens: (B, T + max_new_tokens)."""
        new = list(self.stream(idx, max_new_tokens, temperature, top_k, generator))
        return torch.cat([idx, *new], dim=1)
