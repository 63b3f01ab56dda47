"""A person's own picture, read safely and made into a 32 x 32 image the autoencoder can encode.

Bytes from a file or an upload are refused, with a message that says why and what to do, when they are larger than
``MAX_BYTES``, are not a PNG or JPEG, or would decode into more than ``MAX_PIXELS`` pixels (a decompression bomb:
a small file that unpacks into gigabytes). Pillow's own bomb check is made an error at this limit, and the size in
the header is checked before any pixel is decoded. The picture is centre-cropped to a square and resized to 32 x 32
with Pillow's antialiasing (LANCZOS) filter.

Example: ``python -c "from latent_ops.pictures import read_picture; print(read_picture(open('x.png','rb').read()))"``
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from autoencoder.cli import UserError

MAX_BYTES = 10 * 2**20  # 10 MiB: a phone photo fits; more is refused before it is read
MAX_PIXELS = 40_000_000  # 40 megapixels: decoded, 120 MB of RGB at most
FORMATS = ("PNG", "JPEG")
SIDE = 32  # CIFAR-10's images


class PictureError(UserError, ValueError):
    """A file that cannot be used as a picture; the message names what is wrong and what to do."""


def read_picture(data: bytes, name: str = "the file") -> Image.Image:
    """The RGB picture in ``data`` (PNG or JPEG bytes), every limit checked; a PictureError otherwise."""
    if len(data) > MAX_BYTES:
        raise PictureError(f"{name} is {len(data) / 2**20:.1f} MiB; pictures up to {MAX_BYTES // 2**20} MiB are "
                           f"read: save a smaller copy (any size works, it is cropped and resized to 32 x 32)")
    if not data:
        raise PictureError(f"{name} is empty; choose a PNG or JPEG picture")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            picture = Image.open(io.BytesIO(data), formats=FORMATS)
            width, height = picture.size
            if width * height > MAX_PIXELS:
                raise PictureError(f"{name} says it is {width} x {height} pixels, more than the "
                                   f"{MAX_PIXELS // 10**6} megapixels read here (a decompression bomb, or a very "
                                   f"large picture): save a smaller copy")
            picture.load()
    except PictureError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PictureError(f"{name} would decode into too many pixels (a decompression bomb); choose another "
                           f"picture") from None
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        kind = "is not a PNG or JPEG picture" if isinstance(error, Image.UnidentifiedImageError) else \
            f"is a damaged picture ({' '.join(str(error).split()[:10])})"
        raise PictureError(f"{name} {kind}; choose a PNG or JPEG picture") from None
    return picture.convert("RGB")


def centre_square(picture: Image.Image) -> Image.Image:
    """The largest square at the centre of ``picture``."""
    width, height = picture.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return picture.crop((left, top, left + side, top + side))


def small_picture(picture: Image.Image, side: int = SIDE) -> np.ndarray:
    """``picture`` centre-cropped and resized to (side, side, 3) uint8."""
    return np.asarray(centre_square(picture).resize((side, side), Image.LANCZOS), dtype=np.uint8)


def png_bytes(pixels: np.ndarray, scale: int = 1) -> bytes:
    """(H, W, 3) uint8 as PNG bytes, each pixel a ``scale`` x ``scale`` block."""
    if scale > 1:
        pixels = np.repeat(np.repeat(pixels, scale, axis=0), scale, axis=1)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()
