"""The one image loader: odd-but-valid images load upright as RGB, broken ones get one sentence."""

import io
import struct
import zlib

import numpy as np
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from ssaviz.errors import ImageError
from ssaviz.images import MAX_PIXELS, load_image, model_input_size

MODES = ["1", "L", "P", "RGB", "RGBA", "LA", "PA", "I", "I;16", "F", "CMYK", "YCbCr", "LAB", "HSV", "RGBa"]
FORMATS = {"PNG": {"1", "L", "P", "RGB", "RGBA", "LA", "I", "I;16"}, "JPEG": {"L", "RGB", "CMYK"},
           "WEBP": {"RGB", "RGBA"}, "GIF": {"L", "P"}, "BMP": {"1", "L", "P", "RGB"},
           "TIFF": {"1", "L", "P", "RGB", "RGBA", "I", "I;16", "F", "CMYK", "LAB"}}


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels and carries almost no data (a decompression bomb's header)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_rgba_is_composited_on_white():
    arr = np.zeros((4, 4, 4), np.uint8)
    arr[:2, :, :] = (255, 0, 0, 255)  # top half opaque red, bottom half transparent
    out = np.asarray(load_image(encode(Image.fromarray(arr, "RGBA"), "PNG")))
    assert (out[0, 0] == (255, 0, 0)).all() and (out[3, 3] == (255, 255, 255)).all()


def test_sixteen_bit_grey_keeps_its_range():
    arr = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    out = np.asarray(load_image(encode(Image.frombytes("I;16", (2, 2), arr.tobytes()), "PNG")))
    assert out.shape == (2, 2, 3)
    assert out[0, 0, 0] == 0 and out[0, 1, 0] == 255 and 126 <= out[1, 0, 0] <= 129


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (60, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, 20))  # red strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: rotate 90° clockwise to display
    out = load_image(encode(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.size == (20, 60)
    top = np.asarray(out)[:5].mean(axis=(0, 1))
    assert top[0] > 200 and top[2] < 60  # the red strip is now on top


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("P", (8, 8), i) for i in (1, 2, 3)]
    for f, colour in zip(frames, ([255, 0, 0], [0, 255, 0], [0, 0, 255])):
        f.putpalette([0, 0, 0] + colour * 255)
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], loop=0)
    assert tuple(np.asarray(load_image(data))[0, 0]) == (255, 0, 0)


@pytest.mark.parametrize("fmt,modes", list(FORMATS.items()))
def test_every_mode_and_format_loads_as_rgb(fmt, modes):
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 255, (9, 13, 3), dtype=np.uint8))
    for mode in modes:
        img = base.convert(mode) if mode not in ("I;16", "F", "I") else Image.fromarray(
            rng.integers(0, 4000, (9, 13)).astype({"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]))
        out = load_image(encode(img, fmt))
        assert out.mode == "RGB" and out.size == (13, 9), (fmt, mode)


def test_tiny_and_thin_images():
    assert load_image(encode(Image.new("RGB", (1, 1), "red"), "PNG")).size == (1, 1)
    assert load_image(encode(Image.new("L", (3000, 2)), "PNG")).size == (3000, 2)
    assert model_input_size(1, 3000, 96) == (96, 192)  # aspect capped at 2:1
    assert model_input_size(600, 400, 64) == (96, 64)


@pytest.mark.parametrize("data,message", [
    (b"", "the file is empty"),
    (b"just some text, not a picture", "not an image"),
    (b"%PDF-1.7\n", "not an image"),
    (b"\xff\xd8\xff\xe0" + b"\0" * 20, "damaged"),
    (b"GIF89a\x01\x00", "damaged"),
])
def test_broken_files_get_one_sentence(data, message):
    with pytest.raises(ImageError, match=message) as info:
        load_image(data)
    assert "\n" not in str(info.value)


def test_truncated_image_is_refused():
    data = encode(Image.fromarray(np.random.default_rng(1).integers(0, 255, (200, 200, 3), dtype=np.uint8)), "JPEG")
    with pytest.raises(ImageError, match="damaged or truncated"):
        load_image(data[: len(data) // 2])


def test_decompression_bomb_is_refused_from_its_header():
    rss = psutil.Process().memory_info().rss
    with pytest.raises(ImageError, match="million pixel"):
        load_image(png_header_only(100_000, 100_000))  # 10 gigapixels: 30 GB if decoded
    with pytest.raises(ImageError, match="over the 40 million pixel limit"):
        load_image(png_header_only(8000, 6000))
    assert psutil.Process().memory_info().rss - rss < 100 * 2**20
    assert MAX_PIXELS == 40_000_000


def test_file_over_the_upload_limit(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(encode(Image.new("RGB", (64, 64)), "PNG") + b"\0" * 5000)
    with pytest.raises(ImageError, match="over the 0 MB limit|over the"):
        load_image(path, max_bytes=1000)
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "missing.jpg")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_random_bytes_never_raise_anything_else(data):
    try:
        img = load_image(data)
    except ImageError as error:
        assert str(error) and "\n" not in str(error)
    else:
        assert img.mode == "RGB"


SIGNATURES = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"II*\x00", b"RIFF\0\0\0\0WEBP"]


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(SIGNATURES), st.binary(max_size=512))
def test_image_headers_followed_by_garbage(signature, tail):
    try:
        load_image(signature + tail)
    except ImageError as error:
        assert "\n" not in str(error)


@settings(max_examples=80, deadline=None)
@given(mode=st.sampled_from(MODES), fmt=st.sampled_from(list(FORMATS)),
       w=st.integers(1, 24), h=st.integers(1, 24), seed=st.integers(0, 2**16), cut=st.floats(0.2, 1.0))
def test_random_small_images_of_every_mode(mode, fmt, w, h, seed, cut):
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).convert(
        "RGB" if mode in ("I;16", "F", "I") else mode)
    try:
        data = encode(img, fmt)
        Image.open(io.BytesIO(data)).load()
    except (OSError, ValueError, KeyError):
        return  # PIL cannot write (or read back) this mode in this format: no valid file to test
    data = data[: max(1, int(len(data) * cut))] if cut < 1 else data
    try:
        out = load_image(data)
    except ImageError as error:
        assert cut < 1 or error is None, f"valid {mode} {fmt} refused: {error}"
    else:
        assert out.mode == "RGB" and min(out.size) >= 1
