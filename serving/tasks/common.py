"""What every task needs: the model seam, task parameters from config.pbtxt, batch image preparation."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from contract.names import PREPROCESSING_PARAMETER
from contract.preprocessing import Placement, PreprocessingError, input_size, placement
from serving.decoding_budget import DECODING
from serving.deferred import DeferredRows, RowWriter
from serving.errors import ResourceExhausted, Unavailable
from serving.images import (
    ImageInput,
    ImageLimits,
    OpenedImage,
    Preprocessing,
    decode_resized,
    decode_size,
    decoding_bytes,
    normalise_into,
    open_image,
)
from serving.tasks.offload import IMAGE_WORKERS, INLINE_PIXEL_BUDGET, run_image_jobs


class TensorModel(Protocol):
    """The one thing a task needs from a served model: batched inference through its batcher.

    `inputs` and the result map tensor names to arrays whose axis 0 is this request's rows.
    """

    async def infer(
        self, inputs: Mapping[str, np.ndarray | DeferredRows], deadline: float | None
    ) -> Mapping[str, np.ndarray]: ...


@dataclass(frozen=True)
class ImageSize:
    height: int
    width: int


@dataclass(frozen=True)
class ImageBatch:
    """A request's images ready for a model: `tensor` float32 (N, 3, H, W), C-contiguous, or the same
    rows still to be decoded on the model's instance thread (DeferredRows; the model takes either),
    the original size of each image and where it went in the input (for mapping results back to it)."""

    tensor: np.ndarray | DeferredRows
    original_sizes: tuple[ImageSize, ...]
    placements: tuple[Placement, ...]


def _needs_pixel_work(image: OpenedImage, preprocessing: Preprocessing) -> bool:
    """False only for a raw image already at a square model's size: no decode, no resize."""
    at_size = (image.height, image.width) == preprocessing.size and preprocessing.mode == "square"
    return not (isinstance(image.source, np.ndarray) and at_size)


async def prepare_images(images: Sequence[ImageInput], preprocessing: Preprocessing, limits: ImageLimits) -> ImageBatch:
    """Check every image's header against `limits`, then decode, resize and normalise the request's
    images into one batch. A request with few pixels is not decoded here: its rows are deferred to
    the model's instance thread, which decodes the whole batch's images straight into the batch
    buffer (one hop per batch instead of work on the event loop; docs/PERFORMANCE.md). Heavier
    requests decode now, in at most IMAGE_WORKERS parallel pieces, within the server's decoding
    budget (serving.decoding_budget; fewer pieces when more would not fit). Each image is freed as
    soon as it is in the batch. Errors name the image's index (a deferred image's decoding error
    fails its request when the batch is assembled); ResourceExhausted for a request over the pixel
    limit or the budget."""
    opened = _open_all(images, limits)
    where = tuple(placement((image.height, image.width), preprocessing) for image in opened)
    size = input_size(where, preprocessing)
    pixels = sum(image.pixels for image in opened if _needs_pixel_work(image, preprocessing))
    sizes = tuple(ImageSize(height=image.height, width=image.width) for image in opened)
    if pixels <= INLINE_PIXEL_BUDGET:

        def writer(image: OpenedImage) -> RowWriter:
            return lambda row: normalise_into(
                row, decode_resized(image, decode_size(image, preprocessing)), preprocessing
            )

        rows = DeferredRows((3, *size), np.dtype(np.float32), tuple(writer(image) for image in opened))
        return ImageBatch(tensor=rows, original_sizes=sizes, placements=where)
    tensor = np.empty((len(opened), 3, *size), dtype=np.float32)

    def piece(part: Sequence[OpenedImage]) -> Callable[[], None]:
        def run() -> None:
            for image in part:
                _write_row(tensor[image.index], image, preprocessing)

        return run

    costs = [decoding_bytes(image, decode_size(image, preprocessing)) for image in opened]
    with DECODING.reserve(costs, IMAGE_WORKERS, limits.max_decoding_bytes) as pieces:
        await run_image_jobs([piece(opened[start::pieces]) for start in range(pieces)], pixels)
    return ImageBatch(tensor=tensor, original_sizes=sizes, placements=where)


def _write_row(row: np.ndarray, image: OpenedImage, preprocessing: Preprocessing) -> None:
    """Decode one image and write its model input into `row`; the decoded pixels go when it returns."""
    normalise_into(row, decode_resized(image, decode_size(image, preprocessing)), preprocessing)


def _open_all(images: Sequence[ImageInput], limits: ImageLimits) -> list[OpenedImage]:
    """Every image opened (header only), stopping at the first that takes the request over its pixel
    budget: ResourceExhausted then."""
    opened: list[OpenedImage] = []
    total = 0
    for index, image in enumerate(images):
        opened.append(open_image(image, index, limits))
        total += opened[-1].pixels
        if total > limits.max_request_pixels:
            raise ResourceExhausted(
                f"images 0 to {index} of the request hold {total} pixels together; the limit is "
                f"{limits.max_request_pixels} per request: send fewer or smaller images"
            )
    return opened


def json_parameter(parameters: Mapping[str, str], key: str, model: str) -> object:
    """The JSON value of config parameter `key`; Unavailable naming the model when missing or broken."""
    if key not in parameters:
        raise Unavailable(f"model {model} has no '{key}' parameter in its config.pbtxt; re-export it")
    try:
        return json.loads(parameters[key])
    except json.JSONDecodeError:
        raise Unavailable(f"model {model}: parameter '{key}' is not valid JSON; re-export it") from None


def preprocessing_from(parameters: Mapping[str, str], model: str) -> Preprocessing:
    """Parse the `preprocessing` parameter (docs/MODEL_REPOSITORY.md) of an image-input model."""
    if PREPROCESSING_PARAMETER not in parameters:
        raise Unavailable(f"model {model} has no 'preprocessing' parameter in its config.pbtxt; re-export it")
    try:
        return Preprocessing.from_json(parameters[PREPROCESSING_PARAMETER])
    except PreprocessingError as error:
        raise Unavailable(f"model {model}: {error}; re-export it") from None
