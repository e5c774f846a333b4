"""A fastText-style bag-of-tokens classifier (Joulin et al. 2017): the mean of the text's token
vectors, dropout, a linear head. With `data.ngrams=2` (or 3) the bag holds the text's n-grams too,
which is what makes it strong on short reviews: word order enters only through the n-grams.

`forward(tokens (B, T), lengths (B,)) -> logits (B, num_classes)`. The mean is over the real tokens
only, so neither the amount of padding nor the padding ids change a text's logits.
"""

import torch
from torch import nn

from bigmodel.models.rnn import WordDropout, length_mask, small_embedding_init
from bigmodel.ranges import Fraction, NonNegativeInt, PositiveInt


class FastText(nn.Module):
    """hidden_size: 0 = the linear model of fastText; > 0 = one ReLU layer of that width before the head.
    pretrained_vectors / freeze_embeddings: as for LSTMClassifier (vectors of embed_dim)."""

    def __init__(
        self,
        vocab_size: PositiveInt,
        num_classes: PositiveInt,
        pad_idx: NonNegativeInt = 0,
        embed_dim: PositiveInt = 100,
        hidden_size: NonNegativeInt = 0,
        dropout: Fraction = 0.0,
        word_dropout: Fraction = 0.0,
        pretrained_vectors: str | None = None,
        freeze_embeddings: bool = False,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_idx)
        small_embedding_init(self.embed)
        self.pretrained_vectors = pretrained_vectors  # the wiring fills `embed` from it (see data/vectors.py)
        self.embed.weight.requires_grad_(not freeze_embeddings)
        self.word_dropout = WordDropout(word_dropout)  # drops whole tokens (and n-grams) from the bag
        self.hidden = nn.Sequential(nn.Linear(embed_dim, hidden_size), nn.ReLU()) if hidden_size else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size or embed_dim, num_classes)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        lengths = lengths.clamp(min=1).to(tokens.device)
        keep = length_mask(lengths, tokens.shape[1])[..., None]  # (B, T, 1)
        x = self.word_dropout(self.embed(tokens)) * keep  # (B, T, E), zero at padding whatever its ids
        bag = x.sum(1) / lengths[:, None]  # (B, E): the mean over the real tokens
        return self.head(self.dropout(self.hidden(bag)))  # (B, num_classes)
