"""Images sent to the server: decoded as the image folder decodes its files (torchvision's decoders, then
`bigmodel.data.image_folder.fit`), after their width and height are read from the header, so an image
too large to decode safely (a few bytes of PNG can declare gigapixels) is refused before decoding."""

import io
import struct

import torch

from bigmodel.data.image_folder import fit

PNG = b"\x89PNG\r\n\x1a\n"
JPEG_SOF = {*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0)}  # frame headers
JPEG_BARE = {0x01, 0xD8, *range(0xD0, 0xD8)}  # markers with no length field


class ImageRefused(ValueError):
    """An image that cannot be decoded, or is larger than allowed; `too_large` tells which."""

    def __init__(self, message: str, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header without decoding; None for other formats or a header
    this does not follow (Pillow reads those)."""
    if data.startswith(PNG) and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    if not data.startswith(b"\xff\xd8"):
        return None
    i = 2
    while i + 9 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker in JPEG_SOF:
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        elif marker in JPEG_BARE:
            i += 2
        else:
            i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    return None


def _decode_pil(data: bytes, max_pixels: int) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.functional import pil_to_tensor

    try:
        with Image.open(io.BytesIO(data)) as im:  # reads the header only
            _check_size(*im.size, max_pixels)
            return pil_to_tensor(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        if isinstance(e, ImageRefused):
            raise
        raise ImageRefused(f"cannot be decoded as an image ({type(e).__name__})") from None


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageRefused(
            f"is {width}x{height} pixels; at most {max_pixels} pixels (max_image_pixels)", too_large=True
        )


def decode_image(data: bytes, size: int, max_pixels: int) -> torch.Tensor:
    """An encoded image (PNG, JPEG, or what Pillow reads) as (size, size, 3) uint8."""
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_image as tv_decode

    dims = header_size(data)
    if dims is None:
        return fit(_decode_pil(data, max_pixels), size)
    _check_size(*dims, max_pixels)
    try:
        img = tv_decode(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError:  # a variant torchvision does not decode, or a damaged file: Pillow decides
        img = _decode_pil(data, max_pixels)
    return fit(img, size)
