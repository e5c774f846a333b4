"""Kim (2014)'s convolutional sentence classifier: parallel 1-D convolutions over word vectors,
max-over-time pooling, dropout, a linear head.

`forward(tokens (B, T), lengths (B,)) -> logits (B, num_classes)`. Each text is zero-padded by
width - 1 positions on both sides (a "wide" convolution, as in Kim's own code), so a text shorter than
the widest filter still has windows, and the max is taken over the windows that touch a real token
only: neither the amount of padding nor the padding ids change a text's logits.

Training takes the max's gradient path only: max-over-time passes gradient to one window per
feature map, so the convolutions run forward without autograd, and the winning windows (B x maps of
them) are recomputed with it. The gradients are those of the plain graph, at about a third of the
cost on long texts (the backward of a convolution over every position costs twice its forward).
"""

import torch
import torch.nn.functional as F
from torch import nn

from bigmodel.models.rnn import WordDropout, length_mask, small_embedding_init
from bigmodel.ranges import Fraction, NonNegativeInt, PositiveInt


class TextCNN(nn.Module):
    """filter_widths / n_filters: one convolution of n_filters feature maps per width (Kim: 3, 4, 5 and
    100). pretrained_vectors / freeze_embeddings: as for LSTMClassifier (word vectors of embed_dim)."""

    def __init__(self, vocab_size: PositiveInt, num_classes: PositiveInt, pad_idx: NonNegativeInt = 0,
                 embed_dim: PositiveInt = 128, filter_widths: list[PositiveInt] = (3, 4, 5),
                 n_filters: PositiveInt = 100, dropout: Fraction = 0.5, embed_dropout: Fraction = 0.0,
                 word_dropout: Fraction = 0.0, pretrained_vectors: str | None = None,
                 freeze_embeddings: bool = False) -> None:
        super().__init__()
        self.filter_widths = [int(w) for w in filter_widths]
        if not self.filter_widths:
            raise ValueError("filter_widths must name at least one width")
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_idx)
        small_embedding_init(self.embed)
        self.pretrained_vectors = pretrained_vectors  # the wiring fills `embed` from it (see data/vectors.py)
        self.embed.weight.requires_grad_(not freeze_embeddings)
        self.word_dropout, self.embed_dropout = WordDropout(word_dropout), nn.Dropout(embed_dropout)
        self.convs = nn.ModuleList(nn.Conv1d(embed_dim, n_filters, w, padding=w - 1) for w in self.filter_widths)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(n_filters * len(self.filter_widths), num_classes)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if tokens.shape[1] == 0:  # a batch of empty texts reads one padding position
            tokens = F.pad(tokens, (0, 1), value=self.embed.padding_idx or 0)
        b, t = tokens.shape
        lengths = lengths.clamp(min=1).to(tokens.device)
        keep = length_mask(lengths, t)  # (B, T)
        # zero vectors at padding, whatever its ids: a window reaching past the text reads zeros, as
        # the wide convolution's own padding does at both ends
        x = self.embed_dropout(self.word_dropout(self.embed(tokens))) * keep[..., None]  # (B, T, E)
        xt = x.transpose(1, 2).contiguous()  # (B, E, T)
        pad = max(self.filter_widths) - 1
        rows = F.pad(x, (0, 0, pad, pad)).view(b * (t + 2 * pad), -1) if torch.is_grad_enabled() else None
        feats = []
        for conv, w in zip(self.convs, self.filter_widths):
            with torch.no_grad():
                out = conv(xt)  # (B, C, T + w - 1): window j covers tokens j - w + 1 .. j
                if bool((lengths < t).any()):  # mask the windows that touch no real token
                    out.masked_fill_(~length_mask(lengths + w - 1, out.shape[2])[:, None, :], float("-inf"))
                best, where = out.max(2)  # (B, C) each
            if rows is not None:  # the winning windows again, with autograd (see the top of the file)
                first = where + pad - (w - 1) + (torch.arange(b, device=x.device) * (t + 2 * pad))[:, None]
                best = self._window_values(rows, conv, first)
            feats.append(best.relu())  # max over time, then ReLU: the same as ReLU then max, on C numbers
        return self.head(self.dropout(torch.cat(feats, dim=1)))  # (B, num_classes)

    @staticmethod
    def _window_values(rows: torch.Tensor, conv: nn.Conv1d, first: torch.Tensor) -> torch.Tensor:
        """conv's output at the windows starting at row first[b, c] of `rows` (the padded word vectors
        of every text one after the other, (N, E)) for map c of text b: (B, C)."""
        (b, c), (_, e, w) = first.shape, conv.weight.shape
        index = first.t()[..., None] + torch.arange(w, device=rows.device)  # (C, B, w): map-major for bmm
        windows = rows.index_select(0, index.reshape(-1)).view(c, b, w * e)
        weight = conv.weight.transpose(1, 2).reshape(c, w * e, 1)  # a window's rows in order
        return torch.bmm(windows, weight).view(c, b).t() + conv.bias  # (B, C)
