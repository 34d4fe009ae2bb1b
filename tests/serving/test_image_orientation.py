"""EXIF orientation (serving/orientation.py): a photo stored lying down is decoded upright, as
Pillow's ImageOps.exif_transpose shows it, on the simplejpeg path and the Pillow path alike."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from serving.images import EncodedImage, ImageLimits, decode_resized, open_image
from serving.orientation import ORIENTATION_TAG, jpeg_orientation

LIMITS = ImageLimits()
SIZE = (20, 30)  # (H, W) the model wants; not square, so a missed turn cannot pass


def photo() -> np.ndarray:
    """48 x 64 (H x W) blocks of colour, no two alike and no symmetry: any turn or mirror moves them."""
    colours = np.array(
        [[[230, 20, 20], [20, 230, 20]], [[20, 20, 230], [230, 230, 20]], [[20, 230, 230], [240, 240, 240]]]
    )
    return np.kron(colours, np.ones((16, 32, 1))).astype(np.uint8)


def with_orientation(pixels: np.ndarray, orientation: int, fmt: str) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    buffer = io.BytesIO()
    options = {"quality": 95} if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}
    Image.fromarray(pixels).save(buffer, format=fmt, exif=exif.tobytes(), **options)
    return buffer.getvalue()


def upright(data: bytes, size: tuple[int, int]) -> np.ndarray:
    """The reference: Pillow turns the image by its tag, then resizes it."""
    turned = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    return np.asarray(turned.resize((size[1], size[0]), Image.Resampling.BILINEAR)).astype(np.int16)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_decoded_as_displayed(orientation: int, fmt: str) -> None:
    data = with_orientation(photo(), orientation, fmt)
    opened = open_image(EncodedImage(data), 0, LIMITS)
    assert (opened.height, opened.width) == ((64, 48) if orientation >= 5 else (48, 64))  # boxes scale by these
    ours = decode_resized(opened, SIZE).astype(np.int16)
    reference = upright(data, SIZE)
    assert ours.shape == reference.shape == (*SIZE, 3)
    # JPEG decoders differ by a few levels and at block edges; a wrong turn moves whole blocks (~200 levels).
    assert np.abs(ours - reference).mean() < 6
    if orientation != 1:
        unturned = upright(with_orientation(photo(), 1, fmt), SIZE)
        if unturned.shape == reference.shape:
            assert np.abs(unturned - reference).mean() > 40  # the test can tell a turn from none


def test_jpeg_tag_is_read_past_other_header_segments() -> None:
    pixels = photo()
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = 6
    Image.fromarray(pixels).save(buffer, format="JPEG", exif=exif.tobytes(), dpi=(300, 300), icc_profile=b"x" * 300)
    assert jpeg_orientation(buffer.getvalue()) == 6
    assert jpeg_orientation(with_orientation(pixels, 1, "JPEG")) == 1


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_corrupt_or_missing_exif_leaves_the_image_as_stored() -> None:
    plain = io.BytesIO()
    Image.fromarray(photo()).save(plain, format="JPEG")
    assert jpeg_orientation(plain.getvalue()) == 1
    data = plain.getvalue()
    corrupt = data[:2] + b"\xff\xe1\x00\x10Exif\x00\x00MM\x00*\xff\xff\xff\xff" + data[2:]
    assert jpeg_orientation(corrupt) == 1
    opened = open_image(EncodedImage(corrupt), 0, LIMITS)
    assert (opened.height, opened.width, opened.orientation) == (48, 64, 1)
    assert decode_resized(opened, SIZE).shape == (*SIZE, 3)
