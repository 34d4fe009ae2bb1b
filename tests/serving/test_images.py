"""Image decode limits, error messages, resize and normalisation (serving/images.py)."""

from __future__ import annotations

import asyncio
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from serving.deferred import DeferredRows
from serving.errors import InvalidArgument, ResourceExhausted
from serving.images import (
    EncodedImage,
    ImageInput,
    ImageLimits,
    Preprocessing,
    RawImage,
    decode_resized,
    denormalise,
    encode_png,
    from_range,
    normalise,
    open_image,
)
from serving.tasks.common import prepare_images

LIMITS = ImageLimits(max_pixels=1_000_000, max_encoded_bytes=1_000_000)
PREPROCESSING = Preprocessing(size=(8, 12), mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.1))


def encoded(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    return buffer.getvalue()


def gradient(height: int, width: int) -> np.ndarray:
    rows = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    cols = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    return ((rows + cols) / 2 * np.array([1.0, 0.5, 0.25], np.float32)).astype(np.uint8)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but whose pixel data is a few bytes (a bomb)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(
        b"IEND", b""
    )


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_lossless_formats_decode_exactly(fmt: str) -> None:
    picture = gradient(8, 12)
    opened = open_image(EncodedImage(encoded(picture, fmt)), 0, LIMITS)
    assert (opened.width, opened.height) == (12, 8)
    np.testing.assert_array_equal(decode_resized(opened, (8, 12)), picture)


def test_a_16_bit_grey_png_keeps_its_tones() -> None:
    deep = (np.arange(8 * 12, dtype=np.uint16).reshape(8, 12) * 600).astype(np.uint16)  # 0 .. 57000
    opened = open_image(EncodedImage(encoded(deep, "PNG")), 0, LIMITS)
    pixels = decode_resized(opened, (8, 12))
    assert pixels.shape == (8, 12, 3)
    np.testing.assert_array_equal(pixels[..., 0], (deep >> 8).astype(np.uint8))
    assert (pixels == 255).mean() < 0.01  # not clipped to white


def test_jpeg_is_detected_from_bytes_and_resized() -> None:
    opened = open_image(EncodedImage(encoded(gradient(400, 300), "JPEG")), 0, LIMITS)
    pixels = decode_resized(opened, (40, 30))
    assert pixels.shape == (40, 30, 3) and pixels.dtype == np.uint8
    expected = np.asarray(Image.fromarray(gradient(400, 300)).resize((30, 40), Image.Resampling.BILINEAR))
    assert np.abs(pixels.astype(int) - expected.astype(int)).mean() < 3


def test_header_bomb_is_refused_before_decoding() -> None:
    with pytest.raises(ResourceExhausted, match=r"image 3: 9000x9000 = 81000000 pixels exceeds"):
        open_image(EncodedImage(png_header_only(9000, 9000)), 3, LIMITS)
    with pytest.raises(ResourceExhausted, match=r"image 4: .* limit of 1000000 pixels .*decompression bomb"):
        open_image(EncodedImage(png_header_only(20000, 20000)), 4, LIMITS)


def test_bomb_just_over_the_configured_limit() -> None:
    with pytest.raises(ResourceExhausted, match="image 0: 1001x1000"):
        open_image(EncodedImage(png_header_only(1001, 1000)), 0, LIMITS)


def test_too_many_bytes() -> None:
    with pytest.raises(ResourceExhausted, match="image 1: 1000001 bytes exceeds"):
        open_image(EncodedImage(b"\xff" * 1_000_001), 1, LIMITS)


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"GIF89a" + b"\0" * 32])
def test_bad_bytes_name_the_image(data: bytes) -> None:
    with pytest.raises(InvalidArgument, match="image 2: "):
        open_image(EncodedImage(data), 2, LIMITS)


def test_truncated_jpeg_fails_at_decode_with_the_index() -> None:
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    data = encoded(noise, "JPEG")
    opened = open_image(EncodedImage(data[: len(data) * 3 // 4]), 5, LIMITS)
    with pytest.raises(InvalidArgument, match="image 5: corrupt or truncated JPEG"):
        decode_resized(opened, (8, 8))


def test_raw_rgb_at_model_size_is_not_copied() -> None:
    picture = gradient(8, 12)
    opened = open_image(RawImage(picture.tobytes(), 8, 12, 3), 0, LIMITS)
    pixels = decode_resized(opened, (8, 12))
    np.testing.assert_array_equal(pixels, picture)
    assert not pixels.flags.owndata


@pytest.mark.parametrize("channels", [1, 4])
def test_raw_gray_and_rgba_become_rgb(channels: int) -> None:
    picture = np.random.default_rng(0).integers(0, 256, (6, 5, channels), dtype=np.uint8)
    pixels = decode_resized(open_image(RawImage(picture.tobytes(), 6, 5, channels), 0, LIMITS), (6, 5))
    expected = np.repeat(picture, 3, axis=2) if channels == 1 else picture[:, :, :3]
    np.testing.assert_array_equal(pixels, expected)
    resized = decode_resized(open_image(RawImage(picture.tobytes(), 6, 5, channels), 0, LIMITS), (3, 4))
    assert resized.shape == (3, 4, 3)


def test_raw_shape_mismatch() -> None:
    with pytest.raises(InvalidArgument, match=r"image 1: raw image of 4x4x3 needs 48 bytes, got 47"):
        open_image(RawImage(b"\0" * 47, 4, 4, 3), 1, LIMITS)
    with pytest.raises(InvalidArgument, match="image 0: raw image has 2 channels; use 1, 3 or 4"):
        open_image(RawImage(b"\0" * 32, 4, 4, 2), 0, LIMITS)
    with pytest.raises(InvalidArgument, match="height and width must be positive"):
        open_image(RawImage(b"", 0, 4, 3), 0, LIMITS)
    with pytest.raises(ResourceExhausted, match="image 0: 2000x1000"):
        open_image(RawImage(b"", 1000, 2000, 3), 0, LIMITS)


def test_normalise_matches_the_formula_and_is_contiguous_nchw() -> None:
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (8, 12, 3), dtype=np.uint8) for _ in range(3)]
    batch = normalise(images, PREPROCESSING)
    assert batch.shape == (3, 3, 8, 12) and batch.dtype == np.float32 and batch.flags.c_contiguous
    mean = np.array(PREPROCESSING.mean)[:, None, None]
    std = np.array(PREPROCESSING.std)[:, None, None]
    for image, normalised in zip(images, batch, strict=True):
        expected = (image.transpose(2, 0, 1) / 255.0 - mean) / std
        np.testing.assert_allclose(normalised, expected, rtol=1e-5, atol=1e-5)


def test_denormalise_inverts_normalise() -> None:
    images = [gradient(8, 12), 255 - gradient(8, 12)]
    restored = denormalise(normalise(images, PREPROCESSING), PREPROCESSING)
    np.testing.assert_array_equal(restored, np.stack(images))


def test_from_range_maps_and_clips() -> None:
    batch = np.array([-1.0, 0.0, 1.0, 3.0], np.float32).reshape(1, 1, 2, 2).repeat(3, axis=1)
    pixels = from_range(batch, -1.0, 1.0)
    assert pixels.shape == (1, 2, 2, 3)
    np.testing.assert_array_equal(pixels[0, :, :, 0], [[0, 128], [255, 255]])


def test_png_round_trip() -> None:
    picture = gradient(8, 12)
    decoded = np.asarray(Image.open(io.BytesIO(encode_png(picture))))
    np.testing.assert_array_equal(decoded, picture)


def test_prepare_images_in_parallel_pieces_matches_serial_decoding() -> None:
    rng = np.random.default_rng(2)
    pictures = [rng.integers(0, 256, (150 + 10 * i, 140, 3), dtype=np.uint8) for i in range(5)]  # over the budget
    inputs: list[ImageInput] = [
        EncodedImage(encoded(p, "PNG")) if i % 2 else RawImage(p.tobytes(), *p.shape) for i, p in enumerate(pictures)
    ]
    batch = asyncio.run(prepare_images(inputs, PREPROCESSING, LIMITS))
    serial = [decode_resized(open_image(x, i, LIMITS), PREPROCESSING.size) for i, x in enumerate(inputs)]
    np.testing.assert_array_equal(batch.tensor, normalise(serial, PREPROCESSING))
    assert [(s.height, s.width) for s in batch.original_sizes] == [p.shape[:2] for p in pictures]
    truncated = encoded(pictures[3], "JPEG")
    inputs[3] = EncodedImage(truncated[: len(truncated) * 3 // 4])  # passes the header check, fails to decode
    with pytest.raises(InvalidArgument, match="image 3: corrupt or truncated JPEG"):
        asyncio.run(prepare_images(inputs, PREPROCESSING, LIMITS))


def test_a_small_request_is_decoded_later_straight_into_the_batch() -> None:
    pictures = [gradient(24, 32), gradient(16, 16)]
    inputs: list[ImageInput] = [EncodedImage(encoded(pictures[0], "PNG")), EncodedImage(encoded(pictures[1], "JPEG"))]
    batch = asyncio.run(prepare_images(inputs, PREPROCESSING, LIMITS))
    assert isinstance(batch.tensor, DeferredRows)  # written by the model's instance thread
    assert batch.tensor.shape == (2, 3, *PREPROCESSING.size)
    serial = [decode_resized(open_image(x, i, LIMITS), PREPROCESSING.size) for i, x in enumerate(inputs)]
    np.testing.assert_array_equal(batch.tensor.materialise(), normalise(serial, PREPROCESSING))
    assert [(s.height, s.width) for s in batch.original_sizes] == [(24, 32), (16, 16)]


def test_a_small_truncated_jpeg_fails_when_its_row_is_written() -> None:
    noise = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    data = encoded(noise, "JPEG")
    batch = asyncio.run(prepare_images([EncodedImage(data[: len(data) * 3 // 4])], PREPROCESSING, LIMITS))
    assert isinstance(batch.tensor, DeferredRows)
    with pytest.raises(InvalidArgument, match="image 0: corrupt or truncated JPEG"):
        batch.tensor.materialise()


@pytest.mark.parametrize("mode", ["L", "RGB", "CMYK"])
def test_every_jpeg_colour_space_decodes_to_rgb(mode: str) -> None:
    buffer = io.BytesIO()
    Image.fromarray(gradient(20, 30)).convert(mode).save(buffer, format="JPEG", quality=95)
    opened = open_image(EncodedImage(buffer.getvalue()), 0, LIMITS)
    pixels = decode_resized(opened, (20, 30))
    expected = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    assert pixels.shape == (20, 30, 3) and pixels.dtype == np.uint8
    assert np.abs(pixels.astype(int) - expected.astype(int)).max() <= 2  # libjpeg-turbo either way
