"""Images in and out of the task layer: decode with limits, resize, normalise per batch, PNG encode.

Two phases so that limits are enforced before any pixel is decoded (decompression bombs):
`open_image` reads only the header (simplejpeg for JPEG, Pillow for the rest: the size without
decoding) and checks the byte and pixel limits; `decode_resized` then decodes and resizes to the
model's input size, and frees the decoded original before it returns. `decoding_bytes` estimates,
from the header, the memory that decoding takes at its peak (serving.decoding_budget holds the
server-wide sum under a limit).
`normalise` (or `normalise_into`, image by image) writes decoded images into one contiguous float32
NCHW array, as the model's `Preprocessing` (contract.preprocessing, the config's parameter) says:
`decode_size` is what to decode at (the model's size for ``square``, the image's own otherwise: the
shorter-side and letterbox modes resize exactly as torchvision does, after decoding).

Every error names the image by its index in the request and says what to change.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from contract.preprocessing import Preprocessing, preprocess_into
from serving.errors import InvalidArgument, ResourceExhausted
from serving.orientation import UPRIGHT, jpeg_orientation, orient, pillow_orientation, swaps_axes

#: Formats a request may carry; anything else is refused before a decoder runs.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP")
_RAW_CHANNELS = (1, 3, 4)
_JPEG_START = b"\xff\xd8\xff"
#: JPEG colour spaces libjpeg-turbo converts to RGB itself (CMYK/YCCK go through Pillow).
_TURBO_COLORSPACES = ("YCbCr", "Gray", "RGB")


@dataclass(frozen=True)
class ImageLimits:
    """Limits on images, all checked from the headers before decoding. `max_pixels` bounds width * height
    of one image, `max_request_pixels` their sum over a request, `max_decoding_bytes` the memory the
    server's decoding holds at once, summed over every request (serving.decoding_budget)."""

    max_pixels: int = 40_000_000
    max_encoded_bytes: int = 32 * 1024 * 1024
    max_request_pixels: int = 160_000_000
    max_decoding_bytes: int = 1024 * 1024 * 1024


@dataclass(frozen=True)
class EncodedImage:
    """JPEG, PNG or WebP bytes; the format is detected from the bytes."""

    data: bytes


@dataclass(frozen=True)
class RawImage:
    """A uint8 tensor, height x width x channels, row-major; channels 1 (gray), 3 (RGB) or 4 (RGBA)."""

    pixels: bytes
    height: int
    width: int
    channels: int


ImageInput = EncodedImage | RawImage


@dataclass(frozen=True)
class OpenedImage:
    """An image whose header passed the limits; `source` is JPEG bytes (decoded by simplejpeg), a lazy
    Pillow image, or a raw uint8 array. `width` and `height` are as displayed: an EXIF `orientation`
    other than 1 (serving/orientation.py) is applied when decoding."""

    index: int
    width: int
    height: int
    source: bytes | Image.Image | np.ndarray
    orientation: int = UPRIGHT

    @property
    def pixels(self) -> int:
        return self.width * self.height


def open_image(image: ImageInput, index: int, limits: ImageLimits) -> OpenedImage:
    """Validate one image cheaply (header only) against `limits`.

    Raises InvalidArgument for bytes that are no accepted image or a raw shape that does not match
    its data, ResourceExhausted for an image over the byte or pixel limits.
    """
    if isinstance(image, RawImage):
        return _open_raw(image, index, limits)
    return _open_encoded(image.data, index, limits)


def _open_raw(image: RawImage, index: int, limits: ImageLimits) -> OpenedImage:
    if image.channels not in _RAW_CHANNELS:
        raise InvalidArgument(f"image {index}: raw image has {image.channels} channels; use 1, 3 or 4")
    if image.height <= 0 or image.width <= 0:
        raise InvalidArgument(
            f"image {index}: raw image is {image.height}x{image.width}; height and width must be positive"
        )
    _check_pixels(image.width, image.height, index, limits)
    expected = image.height * image.width * image.channels
    if len(image.pixels) != expected:
        raise InvalidArgument(
            f"image {index}: raw image of {image.height}x{image.width}x{image.channels} needs "
            f"{expected} bytes, got {len(image.pixels)}"
        )
    array = np.frombuffer(image.pixels, dtype=np.uint8).reshape(image.height, image.width, image.channels)
    return OpenedImage(index=index, width=image.width, height=image.height, source=array)


def _open_encoded(data: bytes, index: int, limits: ImageLimits) -> OpenedImage:
    if not data:
        raise InvalidArgument(f"image {index}: empty; send JPEG, PNG or WebP bytes or a raw tensor")
    if len(data) > limits.max_encoded_bytes:
        raise ResourceExhausted(
            f"image {index}: {len(data)} bytes exceeds the limit of {limits.max_encoded_bytes} bytes per image"
        )
    if data.startswith(_JPEG_START):
        opened = _open_jpeg(data, index, limits)
        if opened is not None:
            return opened
    try:
        source = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError:
        raise ResourceExhausted(
            f"image {index}: its header claims far more than the limit of {limits.max_pixels} pixels "
            "per image (a decompression bomb); send a smaller image"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise InvalidArgument(
            f"image {index}: not a readable JPEG, PNG or WebP image (starts with {data[:8].hex()})"
        ) from None
    width, height = source.size
    _check_pixels(width, height, index, limits)
    return _displayed(index, width, height, source, pillow_orientation(source))


def _open_jpeg(data: bytes, index: int, limits: ImageLimits) -> OpenedImage | None:
    """A JPEG's header read by libjpeg-turbo (a tenth of Pillow's time; docs/PERFORMANCE.md); None = let
    Pillow handle it (a colour space libjpeg-turbo cannot turn into RGB)."""
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        raise InvalidArgument(
            f"image {index}: not a readable JPEG, PNG or WebP image (starts with {data[:8].hex()})"
        ) from None
    if colorspace not in _TURBO_COLORSPACES:
        return None
    _check_pixels(width, height, index, limits)
    return _displayed(index, width, height, data, jpeg_orientation(data))


def _displayed(index: int, width: int, height: int, source: bytes | Image.Image, orientation: int) -> OpenedImage:
    """The stored image with its EXIF orientation, sized as displayed (a portrait photo stored lying down)."""
    if swaps_axes(orientation):
        width, height = height, width
    return OpenedImage(index=index, width=width, height=height, source=source, orientation=orientation)


def _check_pixels(width: int, height: int, index: int, limits: ImageLimits) -> None:
    if width * height > limits.max_pixels:
        raise ResourceExhausted(
            f"image {index}: {width}x{height} = {width * height} pixels exceeds the limit of "
            f"{limits.max_pixels} pixels per image; send a smaller image"
        )


def decode_resized(image: OpenedImage, size: tuple[int, int]) -> np.ndarray:
    """Decode `image` to RGB uint8 (H, W, 3) at `size` = (H, W), bilinear, aspect not kept.

    A raw RGB image already at `size` comes back as a zero-copy view of the request bytes.
    JPEGs are decoded at a reduced DCT scale when that still covers `size` (libjpeg-turbo through
    simplejpeg, which releases the GIL; Pillow's draft mode for the others).
    """
    if image.orientation != UPRIGHT:  # EXIF: decode as stored, at the size that turning makes `size`
        if swaps_axes(image.orientation):
            stored = replace(image, width=image.height, height=image.width, orientation=UPRIGHT)
            return orient(decode_resized(stored, (size[1], size[0])), image.orientation)
        return orient(decode_resized(replace(image, orientation=UPRIGHT), size), image.orientation)
    height, width = size
    if isinstance(image.source, np.ndarray):
        return _resize_raw(image.source, size)
    if isinstance(image.source, bytes):
        try:
            pixels = simplejpeg.decode_jpeg(image.source, colorspace="RGB", min_height=height, min_width=width)
        except ValueError as error:
            raise InvalidArgument(f"image {image.index}: corrupt or truncated JPEG data ({error})") from None
        return _resize_raw(pixels, size)
    source = image.source
    try:
        if source.format == "JPEG" and _jpeg_scale(image, size) > 1:
            source.draft("RGB", (width, height))
        source.load()
        vars(source).pop("_decoder", None)  # Pillow's WebP decoder: libwebp's two full-size canvases
        return np.asarray(_resized_rgb(source, (width, height)))
    except (OSError, ValueError, SyntaxError) as error:
        raise InvalidArgument(f"image {image.index}: corrupt or truncated {source.format} data ({error})") from None
    finally:
        source.close()  # the decoded original (up to hundreds of MB) goes now, not with the request


#: Bytes per pixel Pillow keeps for a decoded image of these modes (every other mode: 4, RGB included).
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
#: Bytes per pixel a format's decoder holds besides Pillow's image while it loads: libwebp's two RGBA
#: canvases and the frame's copy (a 39 Mpx lossless WebP peaks at 15 bytes a pixel, measured).
_DECODER_BYTES = {"WEBP": 12}
_RGB_BYTES = 4
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")
#: Modes resized as they are and turned into RGB at the model's size: no full-size RGB copy. (Palette
#: images cannot be: Pillow resizes them with nearest neighbour only; RGBA and LA resize premultiplied.)
_RESIZED_BEFORE_RGB = ("RGB", "L", "I", *_SIXTEEN_BIT)


def _resized_rgb(source: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`source` resized to `size` (W, H) as RGB. Grey and 16-bit images are resized in their own mode first,
    so the only full-size copy is the decoded image itself; other modes become RGB at full size, and the
    decoded original is dropped before resizing."""
    if source.mode in _RESIZED_BEFORE_RGB:
        gap = None if source.mode in _SIXTEEN_BIT else 3.0  # Pillow cannot reduce() 16-bit images
        small = source if source.size == size else source.resize(size, Image.Resampling.BILINEAR, reducing_gap=gap)
        return small if small.mode == "RGB" else _to_rgb(small)
    rgb = _to_rgb(source)
    source.close()
    return rgb if rgb.size == size else rgb.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)


def decoding_bytes(image: OpenedImage, size: tuple[int, int]) -> int:
    """An upper estimate of the memory `decode_resized(image, size)` holds at its peak, from the header:
    the pixels as the decoder produces them (a JPEG at its reduced DCT scale) plus the full-size copy a
    conversion or resize makes of them. Raw images add their resized copy (the request holds the rest)."""
    if isinstance(image.source, np.ndarray):
        return 0 if (image.height, image.width) == size else image.pixels * _RGB_BYTES
    if isinstance(image.source, bytes):  # libjpeg-turbo's RGB, then Pillow's copy of it to resize
        return _jpeg_pixels(image, size) * (3 + _RGB_BYTES)
    mode = image.source.mode
    pixels = _jpeg_pixels(image, size) if image.source.format == "JPEG" else image.pixels
    copy = 0 if mode in _RESIZED_BEFORE_RGB else _RGB_BYTES
    return pixels * (_MODE_BYTES.get(mode, 4) + max(copy, _DECODER_BYTES.get(image.source.format or "", 0)))


def _jpeg_scale(image: OpenedImage, size: tuple[int, int]) -> int:
    """The DCT scale (1, 2, 4 or 8) a JPEG is decoded at for `size` (H, W): the largest that still covers it."""
    fits = min(image.height // size[0], image.width // size[1])
    return next(scale for scale in (8, 4, 2, 1) if scale <= max(fits, 1))


def _jpeg_pixels(image: OpenedImage, size: tuple[int, int]) -> int:
    scale = _jpeg_scale(image, size)
    return -(-image.width // scale) * -(-image.height // scale)


def _to_rgb(source: Image.Image) -> Image.Image:
    """RGB of any Pillow mode. 16-bit greys (PNG, modes "I;16*" and "I") keep their high byte:
    Pillow's own convert() clips them at 255, which turns most of a 16-bit picture white."""
    if source.mode.startswith("I"):
        grey = (np.asarray(source).astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    return source.convert("RGB")


def _resize_raw(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    channels = array.shape[2]
    if channels == 4:
        array = array[:, :, :3]
    if array.shape[:2] == (height, width):
        return np.repeat(array, 3, axis=2) if channels == 1 else array
    picture = Image.fromarray(np.ascontiguousarray(array[:, :, 0] if channels == 1 else array))
    resized = picture.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=3.0)
    if channels == 1:
        return np.repeat(np.asarray(resized)[:, :, None], 3, axis=2)
    return np.asarray(resized)


def normalise(images: Sequence[np.ndarray], preprocessing: Preprocessing) -> np.ndarray:
    """Stack uint8 RGB images (H, W, 3) into one C-contiguous float32 array (N, 3, H, W)."""
    height, width = preprocessing.size
    batch = np.empty((len(images), 3, height, width), dtype=np.float32)
    for slot, image in zip(batch, images, strict=True):
        normalise_into(slot, image, preprocessing)
    return batch


def normalise_into(slot: np.ndarray, image: np.ndarray, preprocessing: Preprocessing) -> None:
    """Write the model input of a uint8 (H, W, 3) image (decoded at `decode_size`) into a float32
    (3, H, W) `slot`: resized and cropped or placed as the mode says, then `(image / 255 - mean) / std`."""
    preprocess_into(slot, image, preprocessing)


def decode_size(image: OpenedImage, preprocessing: Preprocessing) -> tuple[int, int]:
    """(H, W) to decode `image` at: the model's size for ``square`` (resized while decoding, JPEGs at a
    reduced DCT scale), the image's own for the modes that resize as torchvision does."""
    return preprocessing.size if preprocessing.mode == "square" else (image.height, image.width)


def denormalise(batch: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """Invert `normalise`: float32 (N, 3, H, W) in the model's normalised space -> uint8 (N, H, W, 3)."""
    std = np.asarray(preprocessing.std, dtype=np.float32)[:, None, None]
    mean = np.asarray(preprocessing.mean, dtype=np.float32)[:, None, None]
    return _to_uint8(batch * (255.0 * std) + 255.0 * mean)


def from_range(batch: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map float32 (N, 3, H, W) with values in [low, high] to uint8 (N, H, W, 3), clipping outliers."""
    return _to_uint8((batch - low) * (255.0 / (high - low)))


def _to_uint8(batch: np.ndarray) -> np.ndarray:
    """Round and clip float (N, 3, H, W) in [0, 255] to a C-contiguous uint8 (N, H, W, 3)."""
    rounded = np.clip(np.rint(batch), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(rounded.transpose(0, 2, 3, 1))


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of one uint8 RGB image (H, W, 3). Fast compression: outputs are small and short-lived."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
