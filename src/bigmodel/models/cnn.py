"""A fast VGG-style CNN for small images (CIFAR-10): a stem, then conv-pool-BN-GELU blocks."""

from collections.abc import Sequence

import torch
from torch import nn

from bigmodel.ranges import Fraction, PositiveFloat, PositiveInt


class ConvBlock(nn.Module):
    """conv3x3 -> max-pool /2 -> BN -> GELU -> conv3x3 -> BN -> GELU: halves H and W."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(out_channels)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))  # pool before BN: 4x less BN work
        return self.act(self.norm2(self.conv2(x)))


class CNN(nn.Module):
    """Image classifier: (B, C, H, W) -> (B, num_classes) logits."""

    def __init__(
        self,
        num_classes: PositiveInt = 10,
        in_channels: PositiveInt = 3,
        stem_width: PositiveInt = 32,
        widths: Sequence[PositiveInt] = (64, 128, 256),
        dropout: Fraction = 0.0,
        logit_scale: PositiveFloat = 1.0,
        flip_average: bool = False,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem_width, 3, padding=1, bias=False), nn.BatchNorm2d(stem_width), nn.GELU()
        )
        chans = [stem_width, *widths]
        self.blocks = nn.Sequential(*(ConvBlock(a, b) for a, b in zip(chans[:-1], chans[1:])))
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(chans[-1], num_classes, bias=False)
        self.logit_scale = logit_scale  # < 1 softens early logits; helps short schedules
        # In eval mode, average the logits of each image and its mirror image (test-time augmentation
        # for a model trained with random flips). Evaluation, export and serving all see the same model,
        # at twice the inference cost.
        self.flip_average = flip_average

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.blocks(self.stem(x))).flatten(1)  # (B, widths[-1])
        return self.head(self.dropout(x)) * self.logit_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flip_average and not self.training:  # one call on both: cheaper than two for small batches
            return self.logits(torch.cat([x, x.flip(-1)])).unflatten(0, (2, -1)).mean(0)
        return self.logits(x)
