"""bigmodel.serve.images: uploaded images decode to the pixels training saw, and an image too large to
decode is refused from its header alone."""

import io
import struct
import zlib

import pytest
import torch
from PIL import Image

from bigmodel.data.image_folder import _decode
from bigmodel.serve.images import ImageRefused, decode_image, header_size


def encoded(size=(23, 17), fmt="PNG", **options) -> bytes:
    torch.manual_seed(0)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), dtype=torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt, **options)
    return buf.getvalue()


@pytest.mark.parametrize(
    "fmt, options",
    [
        ("PNG", {}),
        ("JPEG", {}),
        ("JPEG", {"progressive": True}),
        ("JPEG", {"exif": Image.Exif().tobytes(), "quality": 50}),
    ],
)
def test_header_size_reads_png_and_jpeg_headers_as_pillow_does(fmt, options):
    data = encoded((23, 17), fmt, **options)
    assert header_size(data) == Image.open(io.BytesIO(data)).size == (23, 17)


def test_other_formats_have_no_header_size_and_decode_through_pillow():
    data = encoded((5, 7), "BMP")
    assert header_size(data) is None
    assert decode_image(data, 8, 10_000).shape == (8, 8, 3)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP"])
def test_decoded_like_the_image_folder_decodes_its_files(tmp_path, fmt):
    data = encoded((40, 30), fmt)
    (tmp_path / "x.img").write_bytes(data)
    assert torch.equal(decode_image(data, 16, 10_000), _decode(tmp_path / "x.img", 16))


def png_declaring(width: int, height: int) -> bytes:
    """A few bytes of PNG whose header declares width x height (decoding it would need gigabytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, body: struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_an_image_too_large_is_refused_from_its_header():
    with pytest.raises(ImageRefused, match="100000x100000 pixels") as refused:
        decode_image(png_declaring(100_000, 100_000), 32, 4096 * 4096)
    assert refused.value.too_large
    with pytest.raises(ImageRefused, match="41x30 pixels"):
        decode_image(encoded((41, 30), "BMP"), 32, 1000)  # the Pillow path checks too


@pytest.mark.parametrize("data", [b"", b"hello", encoded(fmt="PNG")[:60], encoded(fmt="JPEG")[:200]])
def test_damaged_data_is_refused_not_raised(data):
    with pytest.raises(ImageRefused, match="cannot be decoded") as refused:
        decode_image(data, 32, 10_000)
    assert not refused.value.too_large
