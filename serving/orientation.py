"""EXIF orientation: cameras store a portrait photo as landscape pixels plus a tag saying how to turn it.

The tag is read from the bytes without decoding (a JPEG's APP1 segment, or the Exif block Pillow
found in a PNG or WebP header) and applied to the decoded, already resized array: turning and
flipping commute with the axis-aligned resize, so turning a 64x64 result costs nothing next to
turning the photo. Values and their meaning are the EXIF standard's, as Pillow's `ImageOps.exif_transpose`.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

#: EXIF tag 0x0112; 1 = stored as displayed, 2..8 = mirrored and/or turned.
ORIENTATION_TAG = 0x0112
UPRIGHT = 1
_VALID = range(1, 9)
_APP1, _COMMENT = 0xE1, 0xFE
#: Application segments (APP0..APP15) and comments: Exif lives among them, before the tables and the frame.
_LEADING_MARKERS = frozenset(range(0xE0, 0xF0)) | {_COMMENT}
_EXIF_HEADER = b"Exif\x00\x00"


def jpeg_orientation(data: bytes) -> int:
    """The EXIF orientation of JPEG bytes, from the leading header segments only; UPRIGHT when none.

    Stops at the first segment that is no APPn or comment (quantisation tables, frame): Exif comes
    before them, so a JPEG without it costs a couple of steps.
    """
    position = 2  # after the start-of-image marker
    while position + 4 <= len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        if marker not in _LEADING_MARKERS:
            break
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if marker == _APP1 and data.startswith(_EXIF_HEADER, position + 4):
            return exif_orientation(data[position + 4 : position + 2 + length])
        position += 2 + length
    return UPRIGHT


def pillow_orientation(image: Image.Image) -> int:
    """The EXIF orientation Pillow read with the header (PNG eXIf, WebP EXIF, JPEG APP1); no decoding."""
    exif = image.info.get("exif")
    return exif_orientation(exif) if isinstance(exif, bytes) else UPRIGHT


def exif_orientation(exif: bytes) -> int:
    """The orientation tag of an Exif block (TIFF, with or without the `Exif\\0\\0` prefix)."""
    tags = Image.Exif()
    try:
        tags.load(exif)
        value = tags.get(ORIENTATION_TAG, UPRIGHT)
    except Exception:  # a corrupt Exif block is ignored like a missing one: the pixels are still fine
        return UPRIGHT
    return value if value in _VALID else UPRIGHT


def swaps_axes(orientation: int) -> bool:
    """Orientations 5..8 turn by 90 degrees: the displayed height is the stored width."""
    return orientation >= 5


def orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """A stored (H, W, C) array as displayed (a view, no copy)."""
    if orientation == 2:
        return array[:, ::-1]
    if orientation == 3:
        return array[::-1, ::-1]
    if orientation == 4:
        return array[::-1]
    if orientation == 5:
        return array.transpose(1, 0, 2)
    if orientation == 6:
        return np.rot90(array, -1)
    if orientation == 7:
        return array.transpose(1, 0, 2)[::-1, ::-1]
    if orientation == 8:
        return np.rot90(array, 1)
    return array
