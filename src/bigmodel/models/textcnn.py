"""Kim (2014)'s convolutional sentence classifier: parallel 1-D convolutions over word vectors,
max-over-time pooling, dropout, a linear head.

`forward(tokens (B, T), lengths (B,)) -> logits (B, num_classes)`. Each text is zero-padded by
width - 1 positions on both sides (a "wide" convolution, as in Kim's own code), so a text shorter than
the widest filter still has windows, and the max is taken over the windows that touch a real token
only: neither the amount of padding nor the padding ids change a text's logits.

Max-over-time passes gradient to one window per feature map, so the backward pass (_MaxOverTime)
reads only those windows (B x maps of them) instead of differentiating the convolution at every
position: the gradients of the plain graph, at a fraction of the cost on long texts (the full
backward of a convolution costs twice its forward).
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bigmodel.models.rnn import WordDropout, length_mask, small_embedding_init
from bigmodel.ranges import Fraction, NonNegativeInt, PositiveInt


def window_max(
    xt: torch.Tensor, lengths: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, masked: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """The max of one wide convolution over the windows that touch a real token, and where it is:
    (B, C) each, for xt (B, E, T). masked=False skips the mask (only right when nothing is padding)."""
    w = weight.shape[2]
    out = F.conv1d(xt, weight, bias, padding=w - 1)  # (B, C, T + w - 1): window j reads tokens j-w+1..j
    if masked:  # windows that touch no real token never win
        out = out.masked_fill(~length_mask(lengths + w - 1, out.shape[2])[:, None, :], float("-inf"))
    return out.max(2)


class _MaxOverTime(torch.autograd.Function):
    """For each convolution (weight (C, E, w), bias (C,)): the max of its wide output over the windows
    that touch a real token, (B, C); concatenated. x (B, T, E) must be zero at padding."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lengths: torch.Tensor, pad: int, *params: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        xt = x.transpose(1, 2).contiguous()  # (B, E, T)
        has_padding = bool((lengths < t).any())
        feats, firsts = [], []
        for weight, bias in zip(params[::2], params[1::2]):
            w = weight.shape[2]
            best, where = window_max(xt, lengths, weight, bias, has_padding)
            feats.append(best)
            firsts.append(where + pad - (w - 1))  # the window's first row in x padded by `pad` at both ends
        ctx.pad = pad
        ctx.save_for_backward(x, *firsts, *params[::2])
        return torch.cat(feats, dim=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, *saved = ctx.saved_tensors
        firsts, weights = saved[: len(saved) // 2], saved[len(saved) // 2 :]
        (b, t, e), pad = x.shape, ctx.pad
        rows = F.pad(x, (0, 0, pad, pad)).view(-1, e)  # every text's padded word vectors, one after the other
        start = (torch.arange(b, device=x.device) * (t + 2 * pad))[:, None]  # (B, 1): each text's first row
        drows = torch.zeros_like(rows) if ctx.needs_input_grad[0] else None
        grads, col = [], 0
        for weight, first in zip(weights, firsts):
            c, _, w = weight.shape
            g = grad[:, col : col + c].t().contiguous()  # (C, B)
            col += c
            index = ((first + start).t()[..., None] + torch.arange(w, device=x.device)).reshape(-1)  # (C * B * w,)
            windows = rows.index_select(0, index).view(c, b, w * e)  # map-major; a window's rows in order
            dweight = torch.bmm(g[:, None, :], windows).view(c, w, e).transpose(1, 2)  # (C, E, w)
            if drows is not None:
                drows.index_add_(0, index, (g[..., None] * weight.transpose(1, 2).reshape(c, 1, w * e)).view(-1, e))
            grads += [dweight, g.sum(1)]
        dx = drows.view(b, t + 2 * pad, e)[:, pad : pad + t] if drows is not None else None
        return dx, None, None, *grads


class TextCNN(nn.Module):
    """filter_widths / n_filters: one convolution of n_filters feature maps per width (Kim: 3, 4, 5 and
    100). pretrained_vectors / freeze_embeddings: as for LSTMClassifier (word vectors of embed_dim)."""

    def __init__(
        self,
        vocab_size: PositiveInt,
        num_classes: PositiveInt,
        pad_idx: NonNegativeInt = 0,
        embed_dim: PositiveInt = 128,
        filter_widths: Sequence[PositiveInt] = (3, 4, 5),
        n_filters: PositiveInt = 100,
        dropout: Fraction = 0.5,
        embed_dropout: Fraction = 0.0,
        word_dropout: Fraction = 0.0,
        pretrained_vectors: str | None = None,
        freeze_embeddings: bool = False,
    ) -> None:
        super().__init__()
        self.filter_widths = [int(w) for w in filter_widths]
        if not self.filter_widths:
            raise ValueError("filter_widths must name at least one width")
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_idx)
        small_embedding_init(self.embed)
        self.pretrained_vectors = pretrained_vectors  # the wiring fills `embed` from it (see data/vectors.py)
        self.embed.weight.requires_grad_(not freeze_embeddings)
        self.word_dropout, self.embed_dropout = WordDropout(word_dropout), nn.Dropout(embed_dropout)
        # the weights of wide convolutions (padding w - 1); _MaxOverTime runs them
        self.convs = nn.ModuleList(nn.Conv1d(embed_dim, n_filters, w, padding=w - 1) for w in self.filter_widths)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(n_filters * len(self.filter_widths), num_classes)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if tokens.shape[1] == 0:  # a batch of empty texts reads one padding position
            tokens = F.pad(tokens, (0, 1), value=self.embed.padding_idx or 0)
        lengths = lengths.clamp(min=1).to(tokens.device)
        keep = length_mask(lengths, tokens.shape[1])  # (B, T)
        # zero vectors at padding, whatever its ids: a window reaching past the text reads zeros, as
        # the wide convolution's own padding does at both ends
        x = self.embed_dropout(self.word_dropout(self.embed(tokens))) * keep[..., None]  # (B, T, E)
        if torch.compiler.is_exporting():  # the same forward, as plain ops (always masked: no data-dependent branch)
            xt = x.transpose(1, 2)
            convs: list[nn.Conv1d] = list(self.convs)  # type: ignore[arg-type]
            feats = torch.cat([window_max(xt, lengths, c.weight, c.bias)[0] for c in convs], dim=1)  # type: ignore[arg-type]
        else:
            params = [p for conv in self.convs for p in (conv.weight, conv.bias)]
            feats = _MaxOverTime.apply(x, lengths, max(self.filter_widths) - 1, *params)  # (B, C * widths)
        # ReLU after the max: the same as before it (it is monotone), on C numbers instead of C x T
        return self.head(self.dropout(feats.relu()))  # (B, num_classes)
