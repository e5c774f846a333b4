"""The CIFAR CNN: output shapes for several sizes and widths."""

import pytest
import torch

from bigmodel.models.cnn import CNN


@pytest.mark.parametrize("size,widths,channels", [(32, (64, 128, 256), 3), (16, (8, 16), 1), (64, (8,), 3)])
def test_forward_shape(size, widths, channels):
    model = CNN(num_classes=7, in_channels=channels, stem_width=8, widths=widths)
    out = model(torch.randn(5, channels, size, size))
    assert out.shape == (5, 7) and out.dtype == torch.float32


def test_channels_last_gives_the_same_logits():
    torch.manual_seed(0)
    model = CNN(num_classes=10, stem_width=8, widths=(16, 32)).eval()
    x = torch.randn(4, 3, 32, 32)
    ref = model(x)
    model = model.to(memory_format=torch.channels_last)
    torch.testing.assert_close(model(x.contiguous(memory_format=torch.channels_last)), ref, rtol=1e-4, atol=1e-5)
