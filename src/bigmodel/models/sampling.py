"""Choosing the next token from a language model's logits: repetition penalty, temperature, top-k,
top-p (nucleus), then a draw from the softmax (or the most likely token when temperature is 0).

Each step is a small function on (B, V) float logits, so each can be tested on crafted logits.
"""

import torch
import torch.nn.functional as F


def penalize_repeats(logits: torch.Tensor, previous: torch.Tensor, penalty: float) -> torch.Tensor:
    """Make every token already in `previous` (B, T) less likely (penalty > 1) or more (< 1): a positive
    logit is divided by `penalty`, a negative one multiplied, so both move towards "less likely"."""
    if penalty == 1.0 or previous.numel() == 0:
        return logits
    seen = logits.gather(1, previous)  # (B, T): a token seen twice is penalized once
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    limit = torch.finfo(seen.dtype).max  # a penalty near 0 (or huge) would overflow to +-inf, then NaN
    return logits.scatter(1, previous, seen.clamp(-limit, limit))


def keep_top_k(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """Only the k largest logits of each row survive (ties with the k-th survive too)."""
    if k is None or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # (B, 1) the k-th largest
    return logits.masked_fill(logits < kth, float("-inf"))


def keep_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus: keep the most likely tokens until their probabilities add up to at least p; a token
    survives when the tokens more likely than it hold less than p. The most likely one always survives."""
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = F.softmax(sorted_logits, dim=-1)
    before = probs.cumsum(dim=-1) - probs  # probability mass strictly ahead of each token
    sorted_logits = sorted_logits.masked_fill(before >= p, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)


def next_token(
    logits: torch.Tensor,
    previous: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(B, 1) next tokens from (B, V) logits; `previous` (B, T) is the text so far (for the penalty)."""
    logits = penalize_repeats(logits.float(), previous, repetition_penalty)
    if temperature < torch.finfo(logits.dtype).tiny:  # 0 (or 0 in float32): greedy; top-k/p cannot change it
        return logits.argmax(-1, keepdim=True)
    # Shifted so that the largest logit is 0 (the softmax is the same): a tiny temperature then sends the
    # others to -inf, not every logit to +-inf (whose softmax is NaN).
    logits = (logits - logits.amax(-1, keepdim=True)) / temperature
    logits = keep_top_p(keep_top_k(logits, top_k), top_p)
    return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
