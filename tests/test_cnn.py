"""The CIFAR CNN: output shapes for several sizes and widths, channels-last, flip averaging."""

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


def test_flip_average_averages_an_image_and_its_mirror_in_eval_mode_only():
    torch.manual_seed(0)
    model = CNN(num_classes=10, stem_width=8, widths=(16, 32), flip_average=True).eval()
    x = torch.randn(4, 3, 32, 32)
    plain = model.logits(x)
    assert not torch.allclose(plain, model.logits(x.flip(-1)))  # the CNN itself is not mirror-symmetric
    torch.testing.assert_close(model(x), 0.5 * (plain + model.logits(x.flip(-1))))
    torch.testing.assert_close(model(x.flip(-1)), model(x))  # so the averaged model is
    model.train()
    torch.manual_seed(1)
    train_out = model(x)
    model.flip_average = False
    torch.manual_seed(1)
    torch.testing.assert_close(train_out, model(x))  # training sees each image once, as given
