"""Turn what a caller holds (a file path, encoded bytes, a uint8 array) into `vision_pb2.Image`s.

The client never decodes images: files and bytes travel encoded (the server detects JPEG, PNG
or WebP from the bytes), arrays travel as `RawImage` (height x width x channels, uint8), so the
client needs neither Pillow nor the model's preprocessing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TypeAlias

import numpy as np

from clients.errors import InputError
from protos.ninefold.v1 import vision_pb2

ImageInput: TypeAlias = str | os.PathLike[str] | bytes | bytearray | memoryview | np.ndarray
"""One image: a path to an image file, its encoded bytes, or a uint8 array (H, W), (H, W, C) with
C in 1, 3, 4 (gray, RGB, RGBA)."""

ImagesInput: TypeAlias = ImageInput | Iterable[ImageInput]
"""One image, several images (any iterable of them), or a uint8 array (N, H, W, C) of N images."""

_CHANNELS = (1, 3, 4)


def to_proto_images(images: ImagesInput) -> list[vision_pb2.Image]:
    """Every image of `images`, in order, as proto messages; raises InputError naming the bad one."""
    items: list[ImageInput]
    if isinstance(images, np.ndarray):
        items = [images] if images.ndim < 4 else list(images)  # (N, H, W, C): N images
    elif isinstance(images, str | os.PathLike | bytes | bytearray | memoryview) or not isinstance(images, Iterable):
        items = [images]  # one image, or something unsupported that _to_proto_image names
    else:
        items = list(images)
    if not items:
        raise InputError("no images given: pass at least one path, bytes object or uint8 array")
    return [_to_proto_image(item, position, len(items)) for position, item in enumerate(items)]


def raw_image(array: np.ndarray) -> vision_pb2.RawImage:
    """A uint8 (H, W) or (H, W, C) array as RawImage; raises InputError on any other dtype/shape."""
    if array.dtype != np.uint8:
        raise InputError(f"array images must be uint8, got {array.dtype} (scale to 0..255 and cast)")
    if array.ndim == 2:
        array = array[:, :, np.newaxis]
    if array.ndim != 3 or array.shape[2] not in _CHANNELS:
        raise InputError(
            f"array images must be (height, width) or (height, width, channels) with channels 1, 3 or 4; "
            f"got shape {tuple(array.shape)}"
        )
    height, width, channels = array.shape
    if height == 0 or width == 0:
        raise InputError(f"array image is empty: shape {tuple(array.shape)}")
    return vision_pb2.RawImage(
        pixels=np.ascontiguousarray(array).tobytes(), height=height, width=width, channels=channels
    )


def _to_proto_image(image: ImageInput, position: int, count: int) -> vision_pb2.Image:
    where = f"image {position + 1} of {count}" if count > 1 else "image"
    if isinstance(image, str | os.PathLike):
        where += f" {os.fspath(image)!r}"
    try:
        if isinstance(image, np.ndarray):
            return vision_pb2.Image(raw=raw_image(image))
        if isinstance(image, bytes | bytearray | memoryview):
            encoded = bytes(image)
        elif isinstance(image, str | os.PathLike):
            encoded = _read_file(Path(image))
        else:
            raise InputError(
                f"unsupported image type {type(image).__name__}: pass a path, bytes or a uint8 numpy array"
            )
    except InputError as error:
        raise InputError(f"{where}: {error}") from None
    if not encoded:
        raise InputError(f"{where}: no bytes (empty file or bytes object)")
    return vision_pb2.Image(encoded=encoded)


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise InputError(f"cannot read the file: {error.strerror or error}") from None
