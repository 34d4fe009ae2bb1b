"""One `Call` per RPC: the request built from a caller's arguments and the parser of its response.

The sync and the asyncio client share these, so both send identical requests and return
identical results; they differ only in how they wait.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
from google.protobuf.message import Message

from clients import results
from clients.errors import InputError
from clients.images import ImagesInput, to_proto_images
from clients.results import (
    Alignment,
    Answer,
    Caption,
    Classification,
    Detections,
    Explanation,
    GeneratedImage,
    ModelInfo,
    Warp,
)
from protos.ninefold.v1 import vision_pb2

R = TypeVar("R")
T = TypeVar("T")

UINT32_MAX = 2**32 - 1


@dataclass(frozen=True)
class Call(Generic[R]):
    """An RPC ready to send: `method` names the Vision stub's method (same on sync and aio stubs)."""

    method: str
    request: Message
    parse: Callable[[Any], R]


def classify(
    images: ImagesInput, model: str = "", version: int = 0, top_k: int = 0, crops: int = 0
) -> Call[Answer[Classification]]:
    """top_k: how many labels per image, best first (0 = the server's default, 5). crops: 1 (0), 5 or 10
    test-time crops per image, their softmax averaged by the server."""
    request = vision_pb2.ClassifyRequest(
        model=_model_ref(model, version),
        images=to_proto_images(images),
        top_k=_count("top_k", top_k),
        crops=_count("crops", crops),
    )
    return Call("Classify", request, _answer(results.classification))


def detect(
    images: ImagesInput,
    model: str = "",
    version: int = 0,
    score_threshold: float = 0.0,
    max_detections: int = 0,
) -> Call[Answer[Detections]]:
    """score_threshold in [0, 1] (0 = the server's default, 0.5); max_detections 0 = all."""
    if not 0.0 <= score_threshold <= 1.0:
        raise InputError(f"score_threshold must be in [0, 1], got {score_threshold}")
    request = vision_pb2.DetectRequest(
        model=_model_ref(model, version),
        images=to_proto_images(images),
        score_threshold=score_threshold,
        max_detections=_count("max_detections", max_detections),
    )
    return Call("Detect", request, _answer(results.detections))


def caption(
    images: ImagesInput, model: str = "", version: int = 0, beam_size: int = 0, max_length: int = 0
) -> Call[Answer[Caption]]:
    """beam_size 0 or 1 = greedy; max_length 0 = the model's trained maximum (tokens)."""
    request = vision_pb2.CaptionRequest(
        model=_model_ref(model, version),
        images=to_proto_images(images),
        beam_size=_count("beam_size", beam_size),
        max_length=_count("max_length", max_length),
    )
    return Call("Caption", request, _answer(results.caption))


def generate(
    count: int = 1,
    seed: int = 0,
    latents: Sequence[Sequence[float]] | np.ndarray | None = None,
    model: str = "",
    version: int = 0,
) -> Call[Answer[GeneratedImage]]:
    """`count` images drawn from `seed` (same seed, same images), or one image per latent vector
    (each exactly the model's latent size) when `latents` is given."""
    if seed < 0 or seed >= 2**64:
        raise InputError(f"seed must be in [0, 2**64), got {seed}")
    request = vision_pb2.GenerateRequest(
        model=_model_ref(model, version),
        count=_count("count", count),
        seed=seed,
        latents=[] if latents is None else [vision_pb2.Latent(values=np.ravel(z).tolist()) for z in latents],
    )
    return Call("Generate", request, _answer(results.generated_image, field="images"))


def warp(images: ImagesInput, model: str = "", version: int = 0) -> Call[Answer[Warp]]:
    request = vision_pb2.WarpRequest(model=_model_ref(model, version), images=to_proto_images(images))
    return Call("Warp", request, _answer(results.warp))


def align(images: ImagesInput, sentences: Sequence[str], model: str = "", version: int = 0) -> Call[Alignment]:
    """Every image against every sentence: per image the sentences ranked with each word's best region,
    per sentence the images ranked. A single string is one sentence."""
    texts = [sentences] if isinstance(sentences, str) else list(sentences)
    if not texts:
        raise InputError("align needs at least one sentence")
    request = vision_pb2.AlignRequest(model=_model_ref(model, version), images=to_proto_images(images), sentences=texts)
    return Call("Align", request, lambda response: results.alignment(response, texts))


def explain(
    images: ImagesInput,
    model: str = "",
    version: int = 0,
    layer: str | int = "",
    top_k: int = 0,
    explained_class: str | int | None = None,
) -> Call[Answer[Explanation]]:
    """layer: a name ("conv1") or 1-based index ("" = the last); top_k: channels per image (0 = the server's 9);
    explained_class: a label (str) or class index (int) whose score the channels are ranked by their
    contribution to; None: the strongest channels."""
    request = vision_pb2.ExplainRequest(
        model=_model_ref(model, version), images=to_proto_images(images), layer=str(layer), top_k=_count("top_k", top_k)
    )
    if isinstance(explained_class, str):
        request.class_label = explained_class
    elif explained_class is not None:
        request.class_index = _count("explained_class", explained_class)
    return Call("Explain", request, _answer(results.explanation))


def list_models(task: str = "") -> Call[tuple[ModelInfo, ...]]:
    """Every model the server knows (ready or not), or only those serving `task`."""
    return Call(
        "ListModels",
        vision_pb2.ListModelsRequest(task=task),
        lambda response: tuple(results.model_info(info) for info in response.models),
    )


def _answer(parse_one: Callable[[Any], T], field: str = "results") -> Callable[[Any], Answer[T]]:
    def parse(response: Any) -> Answer[T]:
        items: Iterable[Any] = getattr(response, field)
        return Answer(model=results.model_id(response.model), results=tuple(parse_one(item) for item in items))

    return parse


def _model_ref(name: str, version: int) -> vision_pb2.ModelRef:
    if version < 0:
        raise InputError(f"version must be >= 0 (0 = newest), got {version}")
    return vision_pb2.ModelRef(name=name, version=version)


def _count(name: str, value: int) -> int:
    if not 0 <= value <= UINT32_MAX:
        raise InputError(f"{name} must be a non-negative integer, got {value}")
    return value
