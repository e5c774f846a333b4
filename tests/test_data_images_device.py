"""Image batches built on the device (data.on_device=true, run here on the CPU) and in channels-last layout."""

import pytest
import torch
import torch.nn.functional as F

from bigmodel.data.images import Augment, ImageBatches, ImageData, augment_batch, draw


def distinct_images(n: int = 48, size: int = 6) -> ImageData:
    """Images whose pixels all differ (within and across images), so a crop/flip can be identified."""

    def load():
        x = torch.arange(n * size * size * 3).view(n, size, size, 3) % 251  # uint8, distinct per image and pixel
        y = torch.arange(n) % 4
        return {"train": (x.to(torch.uint8), y), "val": (x[:8].to(torch.uint8), y[:8])}, ["a", "b", "c", "d"]

    return ImageData(
        load,
        batch_size=8,
        eval_batch_size=8,
        augment=Augment(crop_padding=2),
        mean=[0.0] * 3,
        std=[1 / 255] * 3,
        on_device=True,
        seed=5,
    )  # normalized = the raw pixel


def batches(dm: ImageData, **kw) -> list[tuple[torch.Tensor, torch.Tensor]]:
    dm.setup()
    return list(dm.loader("train", device=torch.device("cpu"), **kw))


def old_augment(x: torch.Tensor, aug: Augment, g: torch.Generator) -> torch.Tensor:
    """The padded-copy reference: pad, gather the window, then mirror (B, C, H, W)."""
    b, _, h, w = x.shape
    p = aug.crop_padding
    padded = F.pad(x, (p, p, p, p), mode=aug.pad_mode)
    dy, dx = torch.randint(0, 2 * p + 1, (b,), generator=g), torch.randint(0, 2 * p + 1, (b,), generator=g)
    out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])
    flip = torch.rand(b, generator=g) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


@pytest.mark.parametrize("mode", ["reflect", "constant"])
def test_one_gather_equals_pad_crop_flip(mode):
    x = torch.randn(16, 3, 5, 7)
    aug = Augment(crop_padding=3, pad_mode=mode)
    ours = augment_batch(x, aug, torch.Generator().manual_seed(2))
    assert torch.equal(ours, old_augment(x, aug, torch.Generator().manual_seed(2)))  # same draws, same pixels


def test_on_device_resume_gives_the_uninterrupted_batches():
    full = batches(distinct_images(), epoch=3)
    rest = batches(distinct_images(), epoch=3, skip_batches=4)
    assert len(full) == 6 and len(rest) == 2
    for (x1, y1), (x2, y2) in zip(full[4:], rest):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_on_device_is_reproducible_and_keyed_on_seed_and_epoch():
    a, b = batches(distinct_images(), epoch=1), batches(distinct_images(), epoch=1)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    other_epoch = batches(distinct_images(), epoch=2)
    assert not torch.equal(torch.cat([x for x, _ in a]), torch.cat([x for x, _ in other_epoch]))
    other_seed = distinct_images()
    other_seed.seed = 6
    assert not torch.equal(torch.cat([x for x, _ in a]), torch.cat([x for x, _ in batches(other_seed, epoch=1)]))


def test_on_device_draws_once_per_epoch_not_per_batch(monkeypatch):
    def per_batch(*_):
        raise AssertionError("a per-batch CPU draw on the on-device path")

    monkeypatch.setattr(ImageBatches, "_batch_draws", per_batch)
    assert len(batches(distinct_images())) == 6
    dm = distinct_images()
    dm.on_device = False
    with pytest.raises(AssertionError, match="per-batch"):
        batches(dm)  # the host path draws per batch (and this check can fail)


def test_on_device_crops_stay_within_the_padding_and_flip_about_half():
    dm = distinct_images(n=256, size=6)
    dm.setup()
    images = dm.splits["train"][0]
    padded = F.pad(images.permute(0, 3, 1, 2).float(), (2, 2, 2, 2), mode="reflect")
    order = list(dm.loader("train").sampler)
    got = torch.cat([x for x, _ in batches(dm)])
    flips, offsets = 0, set()
    for k, i in enumerate(order):
        windows = {(dy, dx): padded[i, :, dy : dy + 6, dx : dx + 6] for dy in range(5) for dx in range(5)}
        found = [
            (dy, dx, f)
            for (dy, dx), win in windows.items()
            for f in (0, 1)
            if torch.equal(got[k], win.flip(2) if f else win)
        ]
        assert len(found) == 1, k  # each output is one window of its own padded image, maybe mirrored
        flips += found[0][2]
        offsets.add(found[0][:2])
    assert 96 <= flips <= 160  # a fair coin for 256 images: outside [96, 160] with probability ~6e-5
    assert len(offsets) == 25  # every offset in [0, 2p]^2 occurs


def test_draw_and_generator_follow_the_device():
    d = draw(Augment(crop_padding=1, hflip=False), 100, torch.Generator().manual_seed(0))
    assert d.shape == (3, 100) and d[:2].min() >= 0 and d[:2].max() <= 2 and not d[2].any()


@pytest.mark.parametrize("on_device", [True, False])
def test_channels_last_batches_need_no_second_copy(on_device):
    plain, last = distinct_images(), distinct_images()
    plain.on_device = last.on_device = on_device
    last.channels_last = True
    for (x1, y1), (x2, y2) in zip(batches(plain), batches(last)):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)  # same values, other layout
        assert x1.is_contiguous() and x2.is_contiguous(memory_format=torch.channels_last)
        assert x2.contiguous(memory_format=torch.channels_last).data_ptr() == x2.data_ptr()  # a no-op
    x, _ = next(iter(last.loader("val")))  # evaluation batches too
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_training_on_device_batches_stops_and_resumes_exactly(tmp_path):
    from bigmodel.callbacks import ModelCheckpoint
    from helpers import StopAt, make_trainer

    def trainer(folder, **callbacks):
        t = make_trainer(max_steps=12, callbacks={"model_checkpoint": ModelCheckpoint(str(folder)), **callbacks})
        t.datamodule.on_device = t.datamodule.channels_last = True  # on the CPU here: the same code path
        return t

    straight = trainer(tmp_path / "a")
    straight.fit()
    trainer(tmp_path / "b", stop=StopAt(5)).fit()  # mid-epoch: 8 batches an epoch
    resumed = trainer(tmp_path / "c")
    resumed.fit(ckpt_path=str(tmp_path / "b" / "last.pt"))
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
