"""Image data: sampler sharding/resume, deterministic augmentation, CIFAR files, ImageFolder archives."""

import tarfile

import pytest
import torch
from torchvision.io import encode_jpeg, write_file

from bigmodel.data.cifar10 import cifar10
from bigmodel.data.errors import DataError
from bigmodel.data.image_folder import image_folder
from bigmodel.data.images import Augment, ImageBatches, augment_batch
from bigmodel.data.loading import ResumableSampler
from conftest import tiny_image_data, write_fake_cifar10


def test_sampler_shards_and_resumes():
    whole = list(ResumableSampler(10, shuffle=True, seed=3, epoch=1))
    assert sorted(whole) == list(range(10))
    assert whole != list(ResumableSampler(10, shuffle=True, seed=3, epoch=2))
    ranks = [list(ResumableSampler(10, shuffle=True, seed=3, epoch=1, rank=r, world_size=2)) for r in range(2)]
    assert sorted(ranks[0] + ranks[1]) == sorted(whole) and len(ranks[0]) == 5
    assert list(ResumableSampler(10, shuffle=True, seed=3, epoch=1, skip=4)) == whole[4:]
    padded = [list(ResumableSampler(5, shuffle=False, seed=0, rank=r, world_size=2)) for r in range(2)]
    assert padded == [[0, 2, 4], [1, 3, 0]]


def test_sampler_lengths_limits_and_order():
    assert list(ResumableSampler(4, shuffle=False, seed=0)) == [0, 1, 2, 3]
    assert list(ResumableSampler(9, shuffle=True, seed=3)) == list(ResumableSampler(9, shuffle=True, seed=3, epoch=0))
    assert (
        list(ResumableSampler(7, shuffle=True, seed=7, epoch=5))
        == torch.randperm(7, generator=torch.Generator().manual_seed(7 + 5)).tolist()
    )  # the order depends on seed + epoch only
    s = ResumableSampler(10, shuffle=False, seed=0, rank=1, world_size=3, skip=1)
    assert (len(s), list(s)) == (3, [4, 7, 0])  # 4 per rank (padded), one skipped
    assert len(ResumableSampler(10, shuffle=False, seed=0, skip=12)) == 0
    limited = ResumableSampler(10, shuffle=True, seed=1, limit=4)
    full = list(ResumableSampler(10, shuffle=True, seed=1))
    assert list(limited) == full[:4] and len(limited) == 4  # the first 4 of the epoch's order
    assert len(ResumableSampler(10, shuffle=True, seed=1, limit=40)) == 10


def test_make_loader_batches_resumes_and_passes_its_options():
    from bigmodel.data.loading import default_workers, make_loader

    data = torch.utils.data.TensorDataset(torch.arange(10))
    loader = make_loader(
        data,
        batch_size=3,
        shuffle=False,
        seed=0,
        skip_batches=1,
        drop_last=True,
        collate_fn=lambda items: [int(i) for (i,) in items],
    )
    assert list(loader) == [[3, 4, 5], [6, 7, 8]]  # batches after the first; the last partial one dropped
    assert loader.num_workers == 0 and loader.prefetch_factor is None and not loader.pin_memory
    two = make_loader(data, batch_size=4, shuffle=True, seed=2, epoch=1, rank=1, world_size=2)
    order = list(ResumableSampler(10, shuffle=True, seed=2, epoch=1))
    assert [b[0].tolist() for b in two] == [order[1::2][:4], order[1::2][4:]]
    workers = make_loader(data, batch_size=4, shuffle=False, seed=0, num_workers=1)
    assert workers.prefetch_factor == 4 and not workers.persistent_workers
    assert [b[0].tolist() for b in workers] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert 0 <= default_workers() <= 8
    first = [b[0].tolist() for b in make_loader(data, batch_size=10, shuffle=True, seed=4)]
    assert first == [[int(i) for i in ResumableSampler(10, shuffle=True, seed=4, epoch=0)]]  # epoch 0 by default


def test_make_loader_leaves_the_global_rng_alone_and_pins_only_with_cuda():
    from bigmodel.data.loading import make_loader

    data = torch.utils.data.TensorDataset(torch.arange(6))
    torch.manual_seed(0)
    before = torch.get_rng_state()
    for _ in make_loader(data, batch_size=2, shuffle=True, seed=1):
        pass
    assert torch.equal(torch.get_rng_state(), before)  # a resumed run's RNG stream is not shifted
    pinned = make_loader(data, batch_size=2, shuffle=False, seed=0, pin_memory=True).pin_memory
    assert pinned == torch.cuda.is_available()


def test_default_workers_leaves_one_core(monkeypatch):
    from bigmodel.data import loading

    for cores, workers in ((None, 0), (1, 0), (2, 1), (5, 4), (64, 8)):
        monkeypatch.setattr(loading.os, "cpu_count", lambda cores=cores: cores)
        assert loading.default_workers() == workers, cores


def test_each_rank_draws_its_own_augmentation():
    images = torch.arange(3 * 8 * 8, dtype=torch.uint8).view(1, 8, 8, 3).repeat(4, 1, 1, 1)  # 4 equal images
    labels = torch.zeros(4, dtype=torch.long)

    def first_batch(rank: int) -> torch.Tensor:
        sampler = ResumableSampler(4, shuffle=False, seed=0, rank=rank, world_size=2)
        batches = ImageBatches(
            images,
            labels,
            batch_size=2,
            sampler=sampler,
            mean=torch.zeros(3),
            std=torch.ones(3),
            augment=Augment(crop_padding=3),
            seed=0,
            device=None,
        )
        return next(iter(batches))[0]

    assert torch.equal(first_batch(0), first_batch(0))  # reproducible per rank
    assert not torch.equal(first_batch(0), first_batch(1))  # same pixels in, different crops/flips out


def test_augmentation_is_a_crop_and_flip_and_reproducible():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float).view(2, 3, 6, 6)
    a = augment_batch(x, Augment(crop_padding=2), torch.Generator().manual_seed(0))
    b = augment_batch(x, Augment(crop_padding=2), torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape


def test_flips_happen_to_about_half_the_images():
    x = torch.arange(64 * 2 * 4 * 5, dtype=torch.float).view(64, 2, 4, 5)  # no image equals its mirror
    out = augment_batch(x, Augment(crop_padding=0, hflip=True), torch.Generator().manual_seed(1))
    flipped = [torch.equal(out[i], x[i].flip(2)) for i in range(64)]
    kept = [torch.equal(out[i], x[i]) for i in range(64)]
    assert all(f != k for f, k in zip(flipped, kept))  # each image is itself or its mirror, nothing else
    assert 16 <= sum(flipped) <= 48  # a fair coin per image: 64 flips land in [16, 48] but for ~1e-4
    assert not augment_batch(x, Augment(crop_padding=0, hflip=False), torch.Generator()).ne(x).any()


def test_crops_shift_pixels_by_up_to_the_padding():
    p, (h, w) = 2, (5, 6)
    x = torch.arange(32 * h * w, dtype=torch.float).view(32, 1, h, w) + 1  # every pixel distinct and > 0
    out = augment_batch(x, Augment(crop_padding=p, pad_mode="constant", hflip=False), torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    shifts = []
    for i in range(32):
        found = [
            (dy, dx)
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            if torch.equal(out[i, 0], padded[i, 0, dy : dy + h, dx : dx + w])
        ]
        assert len(found) == 1, i  # each output is one window of the padded image
        shifts.append(found[0])
    assert len(set(shifts)) >= 10  # 25 offsets are possible: crops really move, and not all alike
    assert {dy for dy, _ in shifts} == set(range(2 * p + 1)) and {dx for _, dx in shifts} == set(range(2 * p + 1))


def test_image_batches_resume_mid_epoch():
    dm = tiny_image_data(n=40, batch_size=8)
    dm.setup()
    full = list(dm.loader("train", epoch=2))
    rest = list(dm.loader("train", epoch=2, skip_batches=3))
    assert len(full) == 5 and len(rest) == 2
    for (x1, y1), (x2, y2) in zip(full[3:], rest):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_cifar10_reads_torchvision_files(tmp_path):
    write_fake_cifar10(tmp_path, n_train=50, n_test=20)
    dm = cifar10(str(tmp_path), download=False, val_size=10, batch_size=16)
    dm.setup()
    x, y = dm.splits["train"]
    assert x.shape == (40, 32, 32, 3) and x.dtype == torch.uint8 and len(dm.splits["val"][1]) == 10
    assert dm.model_args() == {"num_classes": 10, "in_channels": 3}
    xb, yb = next(iter(dm.loader("train")))
    assert xb.shape == (16, 3, 32, 32) and xb.dtype == torch.float32


def test_cifar10_missing_offline_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="CIFAR-10 not found .*cifar-10-python.tar.gz"):
        cifar10(str(tmp_path / "nothing"), download=False).setup()


def write_image_folder(root, splits=("train", "test"), classes=("cat", "dog"), n=4, size=12):
    for split in splits:
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                img = torch.full((3, size, size), 40 + 150 * c, dtype=torch.uint8)
                write_file(str(root / split / name / f"{i}.jpg"), encode_jpeg(img))


def test_image_folder_from_targz_with_seeded_val(tmp_path):
    write_image_folder(tmp_path / "src" / "pets", n=10)
    archive = tmp_path / "pets.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "pets", arcname="pets")
    dm = image_folder(str(archive), cache_dir=str(tmp_path / "cache"), image_size=8, val_fraction=0.2)
    dm.setup()
    assert dm.class_names == ["cat", "dog"]
    assert dm.splits["train"][0].shape == (16, 8, 8, 3) and len(dm.splits["val"][1]) == 4
    assert dm.splits["train"][0][dm.splits["train"][1] == 1].float().mean() > 150  # dogs are bright
    again = image_folder(str(archive), cache_dir=str(tmp_path / "cache"), image_size=8, val_fraction=0.2)
    again.setup()  # from the decoded cache
    assert torch.equal(again.splits["val"][1], dm.splits["val"][1])


def test_image_folder_errors_name_the_path(tmp_path):
    with pytest.raises(DataError, match="expected a folder with train"):
        image_folder(str(tmp_path), cache_dir=str(tmp_path / "c")).setup()
    write_image_folder(tmp_path / "noval", splits=("train",))
    with pytest.raises(DataError, match="no test/"):
        image_folder(str(tmp_path / "noval"), cache_dir=str(tmp_path / "c")).setup()


def test_image_folder_cache_follows_added_classes_and_images(tmp_path):
    write_image_folder(tmp_path / "pets", n=3)
    cache = tmp_path / "cache"
    first = image_folder(str(tmp_path / "pets"), cache_dir=str(cache), image_size=8, val_fraction=0)
    first.setup()
    assert first.class_names == ["cat", "dog"] and len(first.splits["train"][1]) == 6
    write_image_folder(tmp_path / "pets", classes=("newt",), n=2)  # a new class in train/ and test/
    img = torch.full((3, 12, 12), 90, dtype=torch.uint8)
    write_file(str(tmp_path / "pets" / "train" / "cat" / "extra.jpg"), encode_jpeg(img))  # and one more cat
    again = image_folder(str(tmp_path / "pets"), cache_dir=str(cache), image_size=8, val_fraction=0)
    again.setup()
    assert again.class_names == ["cat", "dog", "newt"]
    y = again.splits["train"][1]
    assert len(y) == 9 and (y == 0).sum() == 4 and (y == 2).sum() == 2
    assert (again.splits["test"][1] == 2).sum() == 2
    assert not list(cache.glob(".*.tmp"))  # the cache is written atomically: no temp files left behind
