"""bigmodel.serve.images: uploaded images decode to the pixels training saw, an image too large to
decode is refused from its header alone, and damaged or crafted files are refused, never crash."""

import io
import struct
import zlib

import pytest
import torch
from PIL import Image

from bigmodel.data.errors import DataError
from bigmodel.data.image_folder import _decode
from bigmodel.serve.app import inline
from bigmodel.serve.images import ImageRefused, declared_pixels, decode_image, header_size


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


def png_with_bad_checksum() -> bytes:
    """A PNG whose chunks are intact (right CRCs) but whose compressed pixels fail zlib's own checksum:
    the libpng under torchvision's decoder crashed the whole process on this one."""
    good = encoded((12, 9), "PNG")
    start = good.index(b"IDAT") - 4
    length = struct.unpack(">I", good[start : start + 4])[0]
    body = bytearray(good[start + 8 : start + 8 + length])
    body[-1] ^= 0xFF  # the last byte of the adler-32 checksum
    chunk = good[start : start + 4] + b"IDAT" + bytes(body) + struct.pack(">I", zlib.crc32(b"IDAT" + bytes(body)))
    return good[:start] + chunk + good[start + 12 + length :]


def test_a_png_with_a_damaged_stream_is_refused_in_serving_and_training(tmp_path):
    data = png_with_bad_checksum()
    with pytest.raises(ImageRefused, match="cannot be decoded"):
        decode_image(data, 32, 10_000)
    (tmp_path / "bad.png").write_bytes(data)
    with pytest.raises(DataError, match="bad.png: cannot read it as an image"):
        _decode(tmp_path / "bad.png", 32)


def test_a_jpeg_header_that_hides_its_real_size_is_refused():
    """A decoder skips bytes between segments; a size check that followed them as a segment could read a
    fake 1x1 frame header while the decoder finds the real one. Such a header is refused outright."""
    real = encoded((60, 50), "JPEG")
    fake_sof = b"\xff\xc0\x00\x11\x08\x00\x01\x00\x01\x03\x01\x11\x00\x02\x11\x01\x03\x11\x01"
    crafted = b"\xff\xd8\xff\x00\x00\x06" + b"\xff\xe1" + struct.pack(">H", 2 + len(fake_sof)) + fake_sof + real[2:]
    assert Image.open(io.BytesIO(crafted)).size == (60, 50)  # what a decoder finds
    for data in (crafted, real[:2] + b"junk" + real[2:], real[:2] + b"\xff\x01" + real[2:]):
        with pytest.raises(ImageRefused, match="malformed JPEG header"):
            header_size(data)
        with pytest.raises(ImageRefused):
            decode_image(data, 32, 10_000)
        assert declared_pixels(data) is None
    assert header_size(real[:2] + b"\xff\xff" + real[2:]) == (60, 50)  # fill bytes before a marker are fine


@pytest.mark.parametrize(
    "data",
    [
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",  # Pillow would run Ghostscript on it
        encoded((8, 8), "TIFF"),
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR",  # a PNG header cut short
    ],
)
def test_formats_outside_the_list_and_cut_headers_are_refused(data):
    with pytest.raises(ImageRefused, match="cannot be decoded"):
        decode_image(data, 32, 10_000)


def test_large_images_are_judged_by_the_pixels_their_headers_declare():
    assert inline([encoded((32, 32), "JPEG")] * 8)
    assert not inline([png_declaring(4096, 4096)])  # a few bytes, 16 M pixels: decoded off the event loop
    assert not inline([encoded((8, 8), "BMP")])  # a header this code does not read
    assert not inline([b"x" * 70_000])
