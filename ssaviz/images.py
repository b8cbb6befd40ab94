"""The one image loader used by the app, the CLI and the package.

Every accepted file comes out as an upright 8-bit RGB image; every refused one
raises ImageError with one sentence a user can act on. Limits are checked
before decoding: a decompression bomb is refused from its header.
"""

import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 40_000_000
Image.init()  # register every decoder so the allow-list below can name them
FORMATS = tuple(f for f in ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF") if f in Image.OPEN)
SUPPORTED = "JPEG, PNG, WebP, GIF, BMP or TIFF"

# Our own pixel limit is lower and checked first; PIL's bomb check stays as a backstop.
Image.MAX_IMAGE_PIXELS = max(MAX_PIXELS, Image.MAX_IMAGE_PIXELS or 0)


_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


def _looks_like_image(data: bytes) -> bool:
    return data.startswith(_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def _read_bytes(source, max_bytes: int) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"{path.name or path}: no such file")
        size = path.stat().st_size
        if size > max_bytes:
            raise ImageError(f"the file is {size / 2**20:.1f} MB, over the {max_bytes / 2**20:.0f} MB limit")
        data = path.read_bytes()
    elif hasattr(source, "read"):
        data = source.read(max_bytes + 1)
    else:
        raise ImageError(f"cannot read an image from a {type(source).__name__}")
    if not data:
        raise ImageError("the file is empty")
    if len(data) > max_bytes:
        raise ImageError(f"the file is over the {max_bytes / 2**20:.0f} MB limit")
    return data


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # 16-bit and float images: map the type's range (or the data's) to 8 bits.
        arr = np.asarray(img, dtype=np.float64)
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
        if img.mode.startswith("I;16") or (arr.min() >= 0 and 255 < arr.max() <= 65535):
            arr = arr / 65535.0 * 255.0
        elif arr.min() < 0 or arr.max() > 255:
            lo, hi = arr.min(), arr.max()
            arr = (arr - lo) / (hi - lo or 1.0) * 255.0
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(source: str | os.PathLike | bytes | BinaryIO | Image.Image | np.ndarray,
               max_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode ``source`` into an upright RGB image, or raise ImageError with one sentence."""
    if isinstance(source, Image.Image):
        img = source
    elif isinstance(source, np.ndarray):
        try:
            img = Image.fromarray(source)
        except (TypeError, ValueError) as error:
            raise ImageError(f"cannot make an image from this array ({error})") from None
    else:
        data = _read_bytes(source, max_bytes)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(data), formats=FORMATS)
        except UnidentifiedImageError:
            if _looks_like_image(data):
                raise ImageError("the image is damaged: its header cannot be read") from None
            raise ImageError(f"this file is not an image this app can read ({SUPPORTED})") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageError(f"the image is over the {max_pixels / 1e6:.0f} million pixel limit") from None
        except Exception:
            raise ImageError("the image is damaged: its header cannot be read") from None
    w, h = img.size
    if w < 1 or h < 1:
        raise ImageError("the image has no pixels")
    if w * h > max_pixels:
        raise ImageError(f"the image is {w}x{h} pixels, over the {max_pixels / 1e6:.0f} million pixel limit")
    try:
        img.seek(0)  # animated images: the first frame
    except (EOFError, AttributeError, ValueError):
        pass
    try:
        img.load()
        try:
            img = ImageOps.exif_transpose(img)
        except Exception:  # a broken EXIF block should not cost the picture
            pass
        rgb = _to_rgb(img)
        rgb.load()
    except ImageError:
        raise
    except Exception:
        raise ImageError("the image is damaged or truncated and cannot be decoded") from None
    if rgb.size[0] * rgb.size[1] > max_pixels:
        raise ImageError(f"the image is over the {max_pixels / 1e6:.0f} million pixel limit")
    return rgb


def model_input_size(width: int, height: int, input_size: int, max_aspect: float = 2.0) -> tuple[int, int]:
    """(w, h) fed to the network: shorter side = input_size, the whole image, aspect kept up to 2:1.

    The whole image goes in (no crop), so every map covers the full photo and
    lines up with it once upsampled.
    """
    scale = input_size / min(width, height)
    w, h = width * scale, height * scale
    cap = input_size * max_aspect
    return int(round(min(w, cap))), int(round(min(h, cap)))


def to_tensor(image: Image.Image, input_size: int, mean, std, size: tuple[int, int] | None = None):
    """Normalised (1, 3, h, w) float tensor of the whole image."""
    import torch

    w, h = size or model_input_size(*image.size, input_size)
    resized = image.resize((w, h), Image.BILINEAR, reducing_gap=3.0) if (w, h) != image.size else image
    arr = np.asarray(resized, dtype=np.float32) / 255.0
    arr = (arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(arr.transpose(2, 0, 1).copy()).unsqueeze(0)


def display_copy(image: Image.Image, long_side: int = 640) -> Image.Image:
    """A copy at most ``long_side`` on its long side, for overlays shown on screen."""
    w, h = image.size
    scale = long_side / max(w, h)
    if scale >= 1:
        return image
    return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR, reducing_gap=3.0)
