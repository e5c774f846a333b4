"""Images sent to the server: decoded as the image folder decodes its files (`bigmodel.data.image_folder`:
JPEG through torchvision, everything else through Pillow, then `fit`), after their width and height are
read from the header, so an image too large to decode safely (a few bytes can declare gigapixels) is
refused before decoding.

A JPEG's header is walked strictly: only the segments a JPEG may hold before its frame header, each
starting where the last one ended. A file with anything else there (bytes between segments, an unknown
or out-of-place marker) is refused instead of guessed at, because a decoder that skips such bytes can
find a different frame header, and so a different size, than the one checked."""

import io
import struct

import torch

from bigmodel.data.image_folder import PIL_FORMATS, PNG_SIGNATURE, fit

JPEG_SOF = {*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0)}  # frame headers
JPEG_BEFORE_SOF = {*range(0xE0, 0xF0), 0xFE, 0xDB, 0xC4, 0xDD, 0xCC}  # APPn, COM, DQT, DHT, DRI, DAC


class ImageRefused(ValueError):
    """An image that cannot be decoded, or is larger than allowed; `too_large` tells which."""

    def __init__(self, message: str, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header without decoding; None for other formats (Pillow reads
    their headers). A PNG or JPEG whose header is cut short or malformed is refused."""
    if data.startswith(PNG_SIGNATURE):
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ImageRefused("cannot be decoded as an image (a damaged PNG header)")
        return struct.unpack(">II", data[16:24])
    if data.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    return None


def _jpeg_size(data: bytes) -> tuple[int, int]:
    i = 2
    while i < len(data) and data[i] == 0xFF:
        while i + 1 < len(data) and data[i + 1] == 0xFF:  # fill bytes before a marker
            i += 1
        if i + 4 > len(data):
            break
        marker, length = data[i + 1], struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in JPEG_SOF and length >= 8 and i + 9 <= len(data):
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        if marker not in JPEG_BEFORE_SOF or length < 2:
            break
        i += 2 + length
    raise ImageRefused("cannot be decoded as an image (a damaged or malformed JPEG header)")


def _decode_pil(data: bytes, max_pixels: int) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.functional import pil_to_tensor

    try:
        with Image.open(io.BytesIO(data), formats=PIL_FORMATS) as im:  # reads the header only
            _check_size(*im.size, max_pixels)
            return pil_to_tensor(im.convert("RGB"))
    except Image.DecompressionBombError:  # Pillow's own limit, far above max_pixels, hit while opening
        raise ImageRefused(f"declares more than {max_pixels} pixels (max_image_pixels)", too_large=True) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        if isinstance(e, ImageRefused):
            raise
        raise ImageRefused(f"cannot be decoded as an image ({type(e).__name__})") from None


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageRefused(
            f"is {width}x{height} pixels; at most {max_pixels} pixels (max_image_pixels)", too_large=True
        )


def declared_pixels(data: bytes) -> int | None:
    """Width x height as a PNG or JPEG header declares it (None: another format, or a header that does
    not parse), to judge the decoding work before doing it."""
    try:
        dims = header_size(data)
    except ImageRefused:
        return None
    return None if dims is None else dims[0] * dims[1]


def decode_image(data: bytes, size: int, max_pixels: int) -> torch.Tensor:
    """An encoded image (JPEG, PNG, or another format of PIL_FORMATS) as (size, size, 3) uint8."""
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_image as tv_decode

    dims = header_size(data)
    if dims is not None:
        _check_size(*dims, max_pixels)
    if dims is None or data.startswith(PNG_SIGNATURE):
        return fit(_decode_pil(data, max_pixels), size)
    try:
        img = tv_decode(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError:  # a variant torchvision does not decode, or a damaged file: Pillow decides
        img = _decode_pil(data, max_pixels)
    return fit(img, size)
