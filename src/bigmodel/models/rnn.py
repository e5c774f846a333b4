"""A bidirectional multi-layer LSTM text classifier over packed (variable-length) sequences.

`forward(tokens (B, T), lengths (B,)) -> logits (B, num_classes)`. Sequences are packed, so the
LSTM never reads padding and a text's logits do not depend on how much padding its batch has.

`torch.export` cannot trace packing (its sizes depend on the lengths' values) nor an `nn.LSTM` over
a sequence of unknown length (it unrolls the time loop), so while exporting the LSTM runs as one
custom op, `bigmodel::packed_lstm`: the same packed computation in eager, one opaque node in the
graph (ONNX maps it to its LSTM op with `sequence_lens`, see bigmodel/onnx_ops.py).
"""

from enum import Enum

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from bigmodel.ranges import Fraction, NonNegativeInt, PositiveInt


class Pooling(Enum):
    last = "last"  # the final hidden state of each direction (forward at the last token, backward at the first)
    max = "max"  # element-wise max over the outputs at every real token
    mean = "mean"  # average of the outputs over the real tokens


class WordDropout(nn.Module):
    """Drops whole word vectors (B, T, D) with probability p while training: the model cannot lean on
    any single word, which matters when there are few examples and many rare words."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.empty(x.shape[:2] + (1,), device=x.device, dtype=x.dtype).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


def small_embedding_init(embed: nn.Embedding, std: float = 0.1) -> None:
    """N(0, std) word vectors, padding zero. PyTorch's N(0, 1) is so large that Adam's steps (about lr
    per update) barely move a word seen a few times: it stays noise, and the model overfits to it."""
    nn.init.normal_(embed.weight, std=std)
    if embed.padding_idx is not None:
        with torch.no_grad():
            embed.weight[embed.padding_idx].zero_()


@torch.library.custom_op("bigmodel::packed_lstm", mutates_args=())
def packed_lstm(
    x: torch.Tensor, lengths: torch.Tensor, weights: list[torch.Tensor], num_layers: int, bidirectional: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """An eval-mode nn.LSTM (batch_first, biases) over the packed texts of x (B, T, E), lengths >= 1:
    (outputs (B, T, dirs * H), zeros after each text's end; final hidden states (layers * dirs, B, H)).
    `weights`: the LSTM's parameters in `all_weights` order."""
    packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    dirs, hidden = (2 if bidirectional else 1), weights[1].shape[1]
    h0 = x.new_zeros(num_layers * dirs, x.shape[0], hidden)
    out, h, _ = torch.lstm(
        packed.data, packed.batch_sizes, (h0, h0), weights, True, num_layers, 0.0, False, bidirectional
    )
    out, _ = pad_packed_sequence(packed._replace(data=out), batch_first=True, total_length=x.shape[1])
    return out, h[:, packed.unsorted_indices].contiguous()


@packed_lstm.register_fake
def _(x, lengths, weights, num_layers, bidirectional):
    dirs, hidden = (2 if bidirectional else 1), weights[1].shape[1]
    return x.new_empty(x.shape[0], x.shape[1], dirs * hidden), x.new_empty(num_layers * dirs, x.shape[0], hidden)


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B, max_len) bool, True at real tokens."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


class LSTMClassifier(nn.Module):
    """pretrained_vectors: a word-vector file that train.py copies into `embed` for the data's
    vocabulary (the model has no vocabulary; a checkpoint already holds the vectors, so the file is
    not read again at eval or predict time). freeze_embeddings: the word vectors do not train."""

    def __init__(
        self,
        vocab_size: PositiveInt,
        num_classes: PositiveInt,
        pad_idx: NonNegativeInt = 0,
        embed_dim: PositiveInt = 128,
        hidden_size: PositiveInt = 128,
        n_layer: PositiveInt = 1,
        bidirectional: bool = True,
        dropout: Fraction = 0.5,
        embed_dropout: Fraction = 0.0,
        word_dropout: Fraction = 0.0,
        pooling: Pooling | str = Pooling.max,
        pretrained_vectors: str | None = None,
        freeze_embeddings: bool = False,
    ) -> None:
        super().__init__()
        self.pooling = Pooling(pooling)
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_idx)
        small_embedding_init(self.embed)
        self.pretrained_vectors = pretrained_vectors  # the wiring fills `embed` from it (see data/vectors.py)
        self.embed.weight.requires_grad_(not freeze_embeddings)
        self.word_dropout = WordDropout(word_dropout)
        self.embed_dropout = nn.Dropout(embed_dropout)
        # dropout between stacked LSTM layers (PyTorch applies it to every layer's output but the last)
        self.lstm = nn.LSTM(
            embed_dim,
            hidden_size,
            n_layer,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if n_layer > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size * (2 if bidirectional else 1), num_classes)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        lengths = lengths.clamp(min=1)  # an empty text reads one padding token instead of crashing
        x = self.embed_dropout(self.word_dropout(self.embed(tokens)))  # (B, T, E)
        if torch.compiler.is_exporting():  # the same computation as one graph node (see the top)
            weights = [p for layer in self.lstm.all_weights for p in layer]
            out, h = packed_lstm(x, lengths, weights, self.lstm.num_layers, self.lstm.bidirectional)
        else:
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, (h, _) = self.lstm(packed)  # h: (n_layer * directions, B, H), in the batch's order
        if self.pooling == Pooling.last:
            dirs = 2 if self.lstm.bidirectional else 1
            feats = torch.cat(list(h[-dirs:]), dim=-1)  # last layer, each direction: (B, dirs * H)
        else:
            if not torch.compiler.is_exporting():  # (B, max(lengths), dirs * H), zeros after the end
                out, _ = pad_packed_sequence(out, batch_first=True)
            mask = length_mask(lengths.to(out.device), out.shape[1])[..., None]
            if self.pooling == Pooling.max:
                feats = out.masked_fill(~mask, float("-inf")).amax(1)
            else:
                feats = (out * mask).sum(1) / lengths.to(out.device)[:, None]
        return self.head(self.dropout(feats))  # (B, num_classes)
