"""A small decoder-only Transformer (GPT): token ids (B, T) -> next-token logits (B, T, V).

Pre-LayerNorm blocks of causal self-attention and a GELU MLP; attention goes through
`F.scaled_dot_product_attention(is_causal=True)`, which picks FlashAttention / memory-efficient
kernels on a GPU. The output projection shares its weight with the token embedding.

Sampling reuses the keys and values of positions already read (a `KVCache`), so each new token
costs one position rather than the whole context. Positions are learned and absolute: when the
text outgrows block_size, the newest half block is kept and read again in one pass (with or
without the cache, the same rule, so both give the same tokens).
"""

import math
from collections.abc import Iterator
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import nn

from bigmodel.config import ConfigError
from bigmodel.models.sampling import next_token
from bigmodel.ranges import Fraction, MultipleOf, PositiveFloat, PositiveInt, Range


class LayerCache:
    """One layer's keys and values of the positions read so far: (B, nh, capacity, hs), filled to `length`."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.length = capacity, 0
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nh, t, hs) after the cached positions; returns all of them (B, nh, length, hs)."""
        b, nh, t, hs = k.shape
        if self.k is None or self.v is None:  # allocated once, in the dtype the model computes in (autocast too)
            self.k, self.v = k.new_empty(b, nh, self.capacity, hs), v.new_empty(b, nh, self.capacity, hs)
        keys, values, end = self.k, self.v, self.length + t
        keys[:, :, self.length : end], values[:, :, self.length : end] = k, v
        self.length = end
        return keys[:, :, :end], values[:, :, :end]


KVCache = list[LayerCache]  # one per block


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position t only sees positions <= t."""

    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool) -> None:
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"model.n_embd={n_embd} must be a multiple of model.n_head={n_head}")
        self.n_head, self.dropout = n_head, dropout
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=bias)  # q, k, v for all heads in one matmul
        self.proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.proj.residual = True  # type: ignore[assignment]  # scaled init (see GPT._init_weights)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)  # 3 x (B, T, C)
        # (B, T, C) -> (B, nh, T, hs): heads become a batch dimension
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        if cache is None:  # training: the whole block at once
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
            )  # (B, nh, T, hs)
        else:
            y = self.cached_attention(q, k, v, cache)
        y = y.transpose(1, 2).contiguous().view(b, t, c)  # heads side by side again: (B, T, C)
        return self.resid_dropout(self.proj(y))

    @staticmethod
    def cached_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """The t new queries attend to the cached positions and to new positions up to their own."""
        past, t = cache.length, q.shape[2]
        k, v = cache.append(k, v)  # (B, nh, past + t, hs)
        if t == 1:  # one new token sees everything cached: no mask
            return F.scaled_dot_product_attention(q, k, v)
        if past == 0:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        mask = torch.ones(t, past + t, dtype=torch.bool, device=q.device).tril(diagonal=past)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class MLP(nn.Module):
    """Position-wise feed-forward: C -> 4C -> GELU -> C (GPT-2 uses GELU's tanh approximation)."""

    def __init__(self, n_embd: int, dropout: float, bias: bool, gelu: str = "none") -> None:
        super().__init__()
        self.up = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.act = nn.GELU(approximate=gelu)
        self.down = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.down.residual = True  # type: ignore[assignment]
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(self.act(self.up(x))))


class Block(nn.Module):
    """x + attn(LN(x)), then x + mlp(LN(x)): the residual stream itself is never normalized."""

    def __init__(
        self, n_embd: int, n_head: int, dropout: float, bias: bool, gelu: str = "none", norm_eps: float = 1e-5
    ) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd, eps=norm_eps, bias=bias)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, bias)
        self.ln2 = nn.LayerNorm(n_embd, eps=norm_eps, bias=bias)
        self.mlp = MLP(n_embd, dropout, bias, gelu)

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Decoder-only language model. `vocab_size` comes from the data (its tokenizer).

    `gelu` is "none" (exact GELU) or "tanh" (its tanh approximation, as GPT-2); `norm_eps` is the
    LayerNorm epsilon. `init_from="gpt2"` with `pretrained_path=DIR` takes the sizes (layers, heads,
    width) and the weights of the Hugging Face GPT-2 checkpoint in DIR (see bigmodel.models.gpt2);
    `saved_args` then holds the arguments that rebuild this architecture without DIR."""

    def __init__(
        self,
        vocab_size: PositiveInt,
        block_size: PositiveInt = 256,
        n_layer: PositiveInt = 6,
        n_head: PositiveInt = 6,
        n_embd: Annotated[int, Range(ge=1), MultipleOf("n_head")] = 384,
        dropout: Fraction = 0.0,
        bias: bool = True,
        gelu: Literal["none", "tanh"] = "none",
        norm_eps: PositiveFloat = 1e-5,
        init_from: str | None = None,
        pretrained_path: str | None = None,
    ) -> None:
        super().__init__()
        self.saved_args: dict = {}
        if init_from is not None:
            from bigmodel.checkpoint import load_model_state
            from bigmodel.models import gpt2

            arch = gpt2.architecture(init_from, pretrained_path, vocab_size, block_size)
            n_layer, n_head, n_embd, bias, gelu, norm_eps = (
                arch[k] for k in ("n_layer", "n_head", "n_embd", "bias", "gelu", "norm_eps")
            )
            self.saved_args = {
                "init_from": None,
                "pretrained_path": None,
                "n_layer": n_layer,
                "n_head": n_head,
                "n_embd": n_embd,
                "bias": bias,
                "gelu": gelu,
                "norm_eps": norm_eps,
            }
        self.vocab_size, self.block_size = vocab_size, block_size
        self.n_layer, self.n_head, self.n_embd = n_layer, n_head, n_embd
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        if gelu not in ("none", "tanh"):
            raise ConfigError(f"model.gelu={gelu!r} is not valid; use 'none' (exact) or 'tanh' (GPT-2's)")
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout, bias, gelu, norm_eps) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, eps=norm_eps, bias=bias)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # tied: one (V, C) matrix reads and writes tokens
        self.apply(self._init_weights)
        if init_from is not None and pretrained_path is not None:  # architecture() named a missing path
            state = gpt2.convert(gpt2.read_weights(pretrained_path), block_size)
            load_model_state(self, state, str(pretrained_path))  # names what does not fit, in one line

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            std = 0.02
            if getattr(module, "residual", False):
                std /= math.sqrt(2 * self.n_layer)  # each block adds two projections to the residual stream
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(bias := getattr(module, "bias", None), torch.Tensor):
                nn.init.zeros_(bias)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; the position table is left out by default (it does no matmul work)."""
        n = sum(p.numel() for p in self.parameters())  # the tied matrix counts once
        return n - self.pos_emb.weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token: 6N for the matmuls over weights (forward 2N, backward 4N)
        plus 12 * L * H * Q * T for attention scores and their weighted sum (Q = head size)."""
        t = seq_len or self.block_size
        return 6 * self.num_params() + 12 * self.n_layer * self.n_head * (self.n_embd // self.n_head) * t

    def forward(self, idx: torch.Tensor, last_only: bool = False, cache: KVCache | None = None) -> torch.Tensor:
        """Logits (B, T, V) for idx (B, T); with a cache, idx continues the positions it holds."""
        b, t = idx.shape
        past = cache[0].length if cache is not None else 0
        if past + t > self.block_size:
            raise ValueError(f"sequence of {past + t} tokens is longer than model.block_size={self.block_size}")
        pos = torch.arange(past, past + t, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))  # (B, T, C)
        if cache is None:
            for block in self.blocks:
                x = block(x)
        else:
            for block, layer_cache in zip(self.blocks, cache):
                x = block(x, layer_cache)
        x = self.ln_f(x)
        if last_only:  # sampling needs only the next token: skip the head on the other positions
            x = x[:, -1:, :]
        return self.lm_head(x)  # (B, T, V), or (B, 1, V)

    def new_cache(self) -> KVCache:
        return [LayerCache(self.block_size) for _ in self.blocks]

    @torch.no_grad()
    def stream(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        *,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        use_cache: bool = True,
    ) -> Iterator[torch.Tensor]:
        """Yields the next token (B, 1) max_new_tokens times, continuing idx (B, T).

        See bigmodel.models.sampling.next_token for temperature (0 = always the most likely token),
        top_k, top_p and repetition_penalty; `generator` makes sampling reproducible without touching
        the global RNG. `use_cache=False` re-reads the whole context for every token (for comparison).
        """
        keep = max(1, self.block_size // 2)  # tokens kept when the text outgrows block_size
        start = max(0, idx.shape[1] - self.block_size)  # the model reads idx[:, start:]
        cache, read = None, start  # idx[:, start:read] is in the cache
        for _ in range(max_new_tokens):
            if idx.shape[1] - start > self.block_size:  # full: keep the newest half block, read it again
                start = read = idx.shape[1] - keep
                cache = None
            if not use_cache:
                logits = self(idx[:, start:], last_only=True)
            else:
                if cache is None:
                    cache = self.new_cache()
                logits = self(idx[:, read:], last_only=True, cache=cache)
                read = idx.shape[1]
            nxt = next_token(
                logits[:, -1, :],
                idx,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                repetition_penalty=repetition_penalty,
                generator=generator,
            )  # (B, 1)
            idx = torch.cat([idx, nxt], dim=1)
            yield nxt

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        **options,
    ) -> torch.Tensor:
        """idx (B, T) followed by max_new_tokens sampled tokens: (B, T + max_new_tokens);
        `options` are stream()'s keyword options (top_p, repetition_penalty, use_cache)."""
        new = list(self.stream(idx, max_new_tokens, temperature, top_k, generator, **options))
        return torch.cat([idx, *new], dim=1)
