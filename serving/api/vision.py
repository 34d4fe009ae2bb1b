"""The task API (ninefold.v1.Vision) over gRPC: from_grpc -> task -> to_grpc, nothing more.

Each RPC resolves its model (named, or the task's default), checks the model serves that task
(FAILED_PRECONDITION otherwise) and the request's limits, converts the protobuf into task inputs,
awaits the task (serving.tasks) and converts its results back. Domain errors become status codes
in serving.api.status. Each request is counted once, here, on the model it names, success or
failure, with its whole duration (decoding to response): the task's own `infer` calls are not
counted, so a caption whose decoding fails after a good encoder pass is a failed captioner request.
The caption decoder counts its steps as its own requests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

import grpc
import numpy as np

from protos.ninefold.v1 import vision_pb2 as pb
from protos.ninefold.v1 import vision_pb2_grpc
from serving.api import ServingContext
from serving.deferred import DeferredRows
from serving.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, ServingError, cancellation_reason
from serving.images import EncodedImage, ImageInput, ImageLimits, RawImage
from serving.models import ModelManager, ServedModel
from serving.repository import DECODER_TASK
from serving.tasks.caption import Caption, Captioner, CaptionOptions
from serving.tasks.classify import Classification, Classifier
from serving.tasks.detect import DEFAULT_SCORE_THRESHOLD, DetectionOptions, Detections, Detector
from serving.tasks.factory import TaskFactory
from serving.tasks.generate import GeneratedImage, Generator, latents_from_seed, latents_from_values
from serving.tasks.warp import Warper, WarpResult

T = TypeVar("T")
R = TypeVar("R")


class _Uncounted:
    """The TensorModel a request's task runs through: the model's `infer`, not counted there,
    because `VisionServicer._run` counts the whole request once."""

    __slots__ = ("model",)

    def __init__(self, model: ServedModel) -> None:
        self.model = model

    async def infer(
        self, inputs: Mapping[str, np.ndarray | DeferredRows], deadline: float | None
    ) -> Mapping[str, np.ndarray]:
        return await self.model.infer(inputs, deadline, counted=False)


def images_from_grpc(images: Sequence[pb.Image], limit: int) -> list[ImageInput]:
    """Task inputs for the request's images; at least one, at most `limit` (RESOURCE_EXHAUSTED)."""
    if not images:
        raise InvalidArgument("the request has no images; send at least one")
    if len(images) > limit:
        raise ResourceExhausted(f"{len(images)} images in one request; the limit is {limit}, split the request")
    inputs: list[ImageInput] = []
    for index, image in enumerate(images):
        kind = image.WhichOneof("data")
        if kind == "encoded":
            inputs.append(EncodedImage(image.encoded))
        elif kind == "raw":
            raw = image.raw
            inputs.append(RawImage(raw.pixels, raw.height, raw.width, raw.channels))
        else:
            raise InvalidArgument(f"image {index}: empty; set `encoded` (JPEG, PNG or WebP bytes) or `raw`")
    return inputs


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline as absolute time.monotonic() seconds (None when the client set none)."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def model_ref(model: ServedModel) -> pb.ModelRef:
    return pb.ModelRef(name=model.name, version=model.version)


class VisionServicer(vision_pb2_grpc.VisionServicer):
    """ninefold.v1.Vision over the model manager; see protos/ninefold/v1/vision.proto for the contract."""

    def __init__(self, models: ModelManager, limits: ImageLimits, max_images_per_request: int) -> None:
        self._models = models
        self._tasks = TaskFactory(models, limits)
        self._max_images = max_images_per_request

    def _model_for(self, ref: pb.ModelRef, task: str) -> ServedModel:
        """The named model (or the task's default); FAILED_PRECONDITION when it serves another task."""
        if ref.version < 0:
            raise InvalidArgument(f"model version {ref.version} is negative; use 0 for the newest")
        model = self._models.get(ref.name, ref.version) if ref.name else self._models.default_for(task)
        if model.task != task:
            serves = f"task '{model.task}'" if model.task else "no task (a plain tensor model for the v2 protocol)"
            hint = "; name its captioner instead" if model.task == DECODER_TASK else ""
            error = FailedPrecondition(f"model '{model.name}' serves {serves}, not '{task}'{hint}")
            model.record_failure(error.reason)
            raise error
        return model

    async def _run(
        self, model: ServedModel, kind: type[T], work: Callable[[T], Awaitable[R]], deadline: float | None
    ) -> R:
        """Run `work` on `model`'s task object; count the request on `model` once, however it ends
        (a call cancelled at its `deadline` as deadline_exceeded, not cancelled)."""
        started = time.perf_counter_ns()
        try:
            result = await work(self._tasks.for_request(model, kind, _Uncounted(model)))
        except ServingError as error:
            model.record_request(time.perf_counter_ns() - started, error.reason)
            raise
        except asyncio.CancelledError:
            model.record_request(time.perf_counter_ns() - started, cancellation_reason(deadline))
            raise
        model.record_request(time.perf_counter_ns() - started)
        return result

    # ------------------------------------------------------------------ RPCs
    async def Classify(self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext) -> pb.ClassifyResponse:
        model = self._model_for(request.model, "classify")
        deadline = deadline_of(context)

        async def work(classifier: Classifier) -> list[Classification]:
            images = images_from_grpc(request.images, self._max_images)
            return await classifier.classify(images, request.top_k, deadline, request.crops)

        results = await self._run(model, Classifier, work, deadline)
        return pb.ClassifyResponse(
            model=model_ref(model),
            results=[
                pb.Classification(
                    predictions=[pb.Prediction(label=p.label, index=p.index, score=p.score) for p in result.predictions]
                )
                for result in results
            ],
        )

    async def Detect(self, request: pb.DetectRequest, context: grpc.aio.ServicerContext) -> pb.DetectResponse:
        model = self._model_for(request.model, "detect")
        deadline = deadline_of(context)

        async def work(detector: Detector) -> list[Detections]:
            if not 0.0 <= request.score_threshold <= 1.0:
                raise InvalidArgument(f"score_threshold {request.score_threshold} is outside [0, 1]")
            options = DetectionOptions(
                score_threshold=request.score_threshold or DEFAULT_SCORE_THRESHOLD,
                max_detections=request.max_detections,
            )
            images = images_from_grpc(request.images, self._max_images)
            return await detector.detect(images, options, deadline)

        results = await self._run(model, Detector, work, deadline)
        return pb.DetectResponse(
            model=model_ref(model),
            results=[
                pb.Detections(
                    detections=[
                        pb.Detection(
                            label=d.label,
                            index=d.index,
                            score=d.score,
                            box=pb.Box(x1=d.box.x1, y1=d.box.y1, x2=d.box.x2, y2=d.box.y2),
                        )
                        for d in result.detections
                    ]
                )
                for result in results
            ],
        )

    async def Caption(self, request: pb.CaptionRequest, context: grpc.aio.ServicerContext) -> pb.CaptionResponse:
        model = self._model_for(request.model, "caption")
        deadline = deadline_of(context)
        options = CaptionOptions(beam_size=request.beam_size, max_length=request.max_length)

        async def work(captioner: Captioner) -> list[Caption]:
            images = images_from_grpc(request.images, self._max_images)
            return await captioner.caption(images, options, deadline)

        results = await self._run(model, Captioner, work, deadline)
        return pb.CaptionResponse(
            model=model_ref(model),
            results=[pb.Caption(text=c.text, log_probability=c.log_probability) for c in results],
        )

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> pb.GenerateResponse:
        model = self._model_for(request.model, "generate")
        deadline = deadline_of(context)

        async def work(generator: Generator) -> list[GeneratedImage]:
            count = len(request.latents) or request.count or 1
            if count > self._max_images:
                raise ResourceExhausted(f"{count} images in one request; the limit is {self._max_images}")
            if request.latents:
                latents = latents_from_values([latent.values for latent in request.latents], generator.latent_size)
            else:
                latents = latents_from_seed(request.seed, count, generator.latent_size)
            return await generator.generate(latents, deadline)

        results = await self._run(model, Generator, work, deadline)
        return pb.GenerateResponse(
            model=model_ref(model),
            images=[pb.GeneratedImage(png=i.png, height=i.height, width=i.width) for i in results],
        )

    async def Warp(self, request: pb.WarpRequest, context: grpc.aio.ServicerContext) -> pb.WarpResponse:
        model = self._model_for(request.model, "warp")
        deadline = deadline_of(context)

        async def work(warper: Warper) -> list[WarpResult]:
            images = images_from_grpc(request.images, self._max_images)
            return await warper.warp(images, deadline)

        results = await self._run(model, Warper, work, deadline)
        return pb.WarpResponse(
            model=model_ref(model),
            results=[
                pb.Warp(png=w.png, theta=w.theta, label=w.label, score=w.score, transform=w.transform) for w in results
            ],
        )

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        infos = [self._info(model) for model in self._models.models()]
        known = {info.name for info in infos}
        infos += [
            pb.ModelInfo(name=entry.name, ready=False, state_reason=entry.reason)
            for entry in self._models.index()
            if entry.version is None and entry.name not in known
        ]
        if request.task:
            infos = [info for info in infos if info.task == request.task]
        return pb.ListModelsResponse(models=infos)

    def _info(self, model: ServedModel) -> pb.ModelInfo:
        newest_ready = max((m.version for m in self._models.models() if m.name == model.name and m.ready), default=0)
        return pb.ModelInfo(
            name=model.name,
            version=model.version,
            task=model.task,
            family=model.family,
            ready=model.ready,
            state_reason=model.reason,
            is_default=self._models.is_default(model) and model.version == newest_ready,
            max_batch_size=model.max_batch_size,
            instances=model.instance_count,
            labels=model.labels,
        )


def register(server: grpc.aio.Server, context: ServingContext) -> Sequence[str]:
    """Add the Vision servicer to `server`; return its service name (for reflection)."""
    config = context.config
    vision_pb2_grpc.add_VisionServicer_to_server(
        VisionServicer(context.models, config.image_limits(), config.max_images_per_request), server
    )
    return [pb.DESCRIPTOR.services_by_name["Vision"].full_name]
