"""Typed, immutable results of the task API, built from the response protos.

Every task call returns an `Answer`: the model that answered and one result per input image
(per generated image for `generate`), in request order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from clients.errors import ClientError
from protos.ninefold.v1 import vision_pb2

T = TypeVar("T")

Box = tuple[float, float, float, float]
"""x1, y1 (top-left), x2, y2 (bottom-right) in the original image's pixels; floats, not clipped."""

Theta = tuple[tuple[float, ...], ...]
"""A warp's transform parameters by rows: affine 2x3, projective 3x3, tps one (x, y) row per control point."""

#: Numbers per row of theta, by transform; a server before transforms existed sends "" for affine.
_THETA_ROW = {"affine": 3, "": 3, "projective": 3, "tps": 2}
#: How many numbers theta holds, by transform: (test, what to say when it fails).
_THETA_SIZE: dict[str, tuple[Callable[[int], bool], str]] = {
    "affine": (lambda n: n == 6, "6 (2x3)"),
    "": (lambda n: n == 6, "6 (2x3)"),
    "projective": (lambda n: n == 9, "9 (3x3)"),
    "tps": (lambda n: n >= 18 and n % 2 == 0, "2 per control point (K x 2, K >= 9)"),
}
"""2x3 affine matrix (rows), `torch.nn.functional.affine_grid` convention: maps output
coordinates in [-1, 1] to the sampled input coordinates."""


@dataclass(frozen=True)
class ModelId:
    """The model and version that answered (a request names neither: the task's default, newest)."""

    name: str
    version: int

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"


@dataclass(frozen=True)
class Answer(Generic[T]):
    """One call's outcome: `results[i]` belongs to input image i (or is generated image i)."""

    model: ModelId
    results: tuple[T, ...]


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    score: float
    """Softmax probability in [0, 1]."""


@dataclass(frozen=True)
class Classification:
    predictions: tuple[Prediction, ...]
    """Best first; top-k of the request."""


@dataclass(frozen=True)
class Detection:
    label: str
    index: int
    score: float
    box: Box


@dataclass(frozen=True)
class Detections:
    detections: tuple[Detection, ...]
    """Best first; only those at or above the request's score threshold."""


@dataclass(frozen=True)
class Caption:
    text: str
    log_probability: float
    """Sum of the caption's token log-probabilities (<= 0)."""


@dataclass(frozen=True)
class GeneratedImage:
    png: bytes
    height: int
    width: int


@dataclass(frozen=True)
class Warp:
    png: bytes
    """The warped image at the model's input resolution."""
    theta: Theta
    label: str
    """The classifier head's best label on the warped image ("" when the model has no head)."""
    score: float
    transform: str = "affine"
    """affine, projective or tps (thin-plate spline): how to read theta (see vision.proto's Warp)."""


@dataclass(frozen=True)
class AlignedWord:
    word: str
    region: int
    """Index into the image's `regions` (0 = the whole image)."""
    box: Box
    """That region in the image's pixels."""
    score: float
    """The word's dot product with the region."""


@dataclass(frozen=True)
class SentenceMatch:
    sentence: int
    """Index into the request's sentences."""
    text: str
    score: float
    """Image-sentence score: the sum of its words' scores."""
    words: tuple[AlignedWord, ...]
    """The words the model knows, in order, each with its best region."""


@dataclass(frozen=True)
class ImageAlignment:
    sentences: tuple[SentenceMatch, ...]
    """Every sentence of the request, best first."""
    regions: tuple[Box, ...]


@dataclass(frozen=True)
class ImageMatch:
    image: int
    """Index into the request's images."""
    score: float


@dataclass(frozen=True)
class SentenceRanking:
    text: str
    images: tuple[ImageMatch, ...]
    """Every image of the request, best first."""
    ignored_words: tuple[str, ...]
    """Words the model does not know (left out of the score)."""


@dataclass(frozen=True)
class Alignment:
    """An Align call's answer: per image the sentences ranked, per sentence the images ranked."""

    model: ModelId
    images: tuple[ImageAlignment, ...]
    sentences: tuple[SentenceRanking, ...]


@dataclass(frozen=True)
class ChannelProjection:
    channel: int
    activation: float
    """The channel's strongest activation on the image: the one projected."""
    png: bytes
    """The DeconvNet projection at the model's input size; grey = 0, scaled by its largest magnitude."""
    receptive_field: Box
    """The input pixels that activation sees, in the model's input pixels (clipped to the image)."""
    contribution: float
    """Class mode: the channel's contribution to the class's logit (activation x gradient, summed); else 0."""


@dataclass(frozen=True)
class Explanation:
    layer: str
    channels: tuple[ChannelProjection, ...]
    """Strongest first (class mode: most contributing first); top-k of the request."""
    explained_class: Prediction | None
    """Class mode: the class explained, with its softmax probability on the image; None otherwise."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: int
    task: str
    """classify, detect, caption, generate, warp, align, explain, caption_decoder, align_sentence, or empty (a
    plain tensor model)."""
    family: str
    ready: bool
    state_reason: str
    """Why the model is not ready (its load error); empty when ready."""
    is_default: bool
    max_batch_size: int
    instances: int
    labels: tuple[str, ...]


def model_id(ref: vision_pb2.ModelRef) -> ModelId:
    return ModelId(name=ref.name, version=ref.version)


def classification(result: vision_pb2.Classification) -> Classification:
    return Classification(predictions=tuple(_prediction(p) for p in result.predictions))


def _prediction(prediction: vision_pb2.Prediction) -> Prediction:
    return Prediction(label=prediction.label, index=prediction.index, score=prediction.score)


def detections(result: vision_pb2.Detections) -> Detections:
    return Detections(
        detections=tuple(
            Detection(label=d.label, index=d.index, score=d.score, box=_box(d.box)) for d in result.detections
        )
    )


def explanation(result: vision_pb2.Explanation) -> Explanation:
    return Explanation(
        layer=result.layer,
        channels=tuple(
            ChannelProjection(
                channel=c.channel,
                activation=c.activation,
                png=c.png,
                receptive_field=_box(c.receptive_field),
                contribution=c.contribution,
            )
            for c in result.channels
        ),
        explained_class=_prediction(result.explained_class) if result.HasField("explained_class") else None,
    )


def _box(box: vision_pb2.Box) -> Box:
    return (box.x1, box.y1, box.x2, box.y2)


def caption(result: vision_pb2.Caption) -> Caption:
    return Caption(text=result.text, log_probability=result.log_probability)


def generated_image(result: vision_pb2.GeneratedImage) -> GeneratedImage:
    return GeneratedImage(png=result.png, height=result.height, width=result.width)


def warp(result: vision_pb2.Warp) -> Warp:
    transform, numbers = result.transform, tuple(result.theta)
    if transform not in _THETA_ROW:
        raise ClientError(f"the server sent an unknown transform {transform!r}")
    row = _THETA_ROW[transform]
    fits, expected = _THETA_SIZE[transform]
    if not fits(len(numbers)):
        raise ClientError(
            f"the server sent {len(numbers)} theta numbers for the {transform or 'affine'} transform, "
            f"expected {expected}"
        )
    theta = tuple(numbers[start : start + row] for start in range(0, len(numbers), row))
    return Warp(png=result.png, theta=theta, label=result.label, score=result.score, transform=transform or "affine")


def alignment(response: vision_pb2.AlignResponse, texts: Sequence[str]) -> Alignment:
    """The answer to an Align request whose sentences were `texts`."""
    images = []
    for image in response.images:
        regions = tuple((b.x1, b.y1, b.x2, b.y2) for b in image.regions)
        if any(w.region >= len(regions) for m in image.sentences for w in m.words):
            raise ClientError("the server sent a word's region outside the image's regions")
        matches = tuple(
            SentenceMatch(
                sentence=m.sentence,
                text=texts[m.sentence],
                score=m.score,
                words=tuple(AlignedWord(w.word, w.region, regions[w.region], w.score) for w in m.words),
            )
            for m in image.sentences
        )
        images.append(ImageAlignment(sentences=matches, regions=regions))
    rankings = tuple(
        SentenceRanking(
            text=text,
            images=tuple(ImageMatch(image=m.image, score=m.score) for m in ranking.images),
            ignored_words=tuple(ranking.ignored_words),
        )
        for text, ranking in zip(texts, response.sentences, strict=True)
    )
    return Alignment(model=model_id(response.model), images=tuple(images), sentences=rankings)


def model_info(info: vision_pb2.ModelInfo) -> ModelInfo:
    return ModelInfo(
        name=info.name,
        version=info.version,
        task=info.task,
        family=info.family,
        ready=info.ready,
        state_reason=info.state_reason,
        is_default=info.is_default,
        max_batch_size=info.max_batch_size,
        instances=info.instances,
        labels=tuple(info.labels),
    )
