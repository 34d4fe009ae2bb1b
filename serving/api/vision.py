"""The task API (ninefold.v1.Vision) over gRPC: from_grpc -> task -> to_grpc, nothing more.

Each RPC resolves its model (named, or the task's default), checks the model serves that task
(FAILED_PRECONDITION otherwise) and the request's limits, converts the protobuf into task inputs,
awaits the task (serving.tasks) and converts its results back. Domain errors become status codes
in serving.api.status. Each request runs inside `model.request(deadline)` on the model it names
(serving.models.served: the one place requests are counted), so it counts once, success or failure,
with its whole duration (decoding to response): a caption whose decoding fails after a good encoder
pass is a failed captioner request. The caption decoder counts its steps as its own requests.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TypeVar

import grpc

from contract.names import ALIGN, CAPTION, CLASSIFY, DETECT, EXPLAIN, GENERATE, HELPER_TASKS, WARP
from protos.ninefold.v1 import vision_pb2 as pb
from protos.ninefold.v1 import vision_pb2_grpc
from serving.api import ServingContext
from serving.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from serving.images import EncodedImage, ImageInput, ImageLimits, RawImage
from serving.models import ModelManager, ServedModel
from serving.tasks.align import Aligner
from serving.tasks.caption import Captioner, CaptionOptions
from serving.tasks.classify import Classifier
from serving.tasks.detect import DEFAULT_SCORE_THRESHOLD, DetectionOptions, Detector
from serving.tasks.explain import ClassChoice, Explainer
from serving.tasks.factory import TaskFactory
from serving.tasks.generate import Generator, latents_from_seed, latents_from_values
from serving.tasks.warp import Warper

T = TypeVar("T")


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


def explained_class(request: pb.ExplainRequest) -> ClassChoice | None:
    """The request's class (its label or its index), or None: rank the channels by peak activation."""
    which = request.WhichOneof("explained_class")
    return None if which is None else getattr(request, which)


class VisionServicer(vision_pb2_grpc.VisionServicer):
    """ninefold.v1.Vision over the model manager; see protos/ninefold/v1/vision.proto for the contract."""

    def __init__(self, models: ModelManager, limits: ImageLimits, max_images_per_request: int) -> None:
        self._models = models
        self._tasks = TaskFactory(models, limits)
        self._max_images = max_images_per_request

    def _model_for(self, ref: pb.ModelRef, task: str) -> ServedModel:
        """The named model (or the task's default)."""
        if ref.version < 0:
            raise InvalidArgument(f"model version {ref.version} is negative; use 0 for the newest")
        return self._models.get(ref.name, ref.version) if ref.name else self._models.default_for(task)

    def _task(self, model: ServedModel, task: str, kind: type[T]) -> T:
        """`model`'s task object; FAILED_PRECONDITION when the model serves another task (counted on it:
        called inside its `request` block)."""
        if model.task != task:
            serves = f"task '{model.task}'" if model.task else "no task (a plain tensor model for the v2 protocol)"
            hint = "; name its main model instead" if model.task in HELPER_TASKS else ""
            raise FailedPrecondition(f"model '{model.name}' serves {serves}, not '{task}'{hint}")
        return self._tasks.task_for(model, kind)

    # ------------------------------------------------------------------ RPCs
    async def Classify(self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext) -> pb.ClassifyResponse:
        model, deadline = self._model_for(request.model, CLASSIFY), deadline_of(context)
        with model.request(deadline):
            classifier = self._task(model, CLASSIFY, Classifier)
            images = images_from_grpc(request.images, self._max_images)
            results = await classifier.classify(images, request.top_k, deadline, request.crops)
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
        model, deadline = self._model_for(request.model, DETECT), deadline_of(context)
        with model.request(deadline):
            detector = self._task(model, DETECT, Detector)
            if not 0.0 <= request.score_threshold <= 1.0:
                raise InvalidArgument(f"score_threshold {request.score_threshold} is outside [0, 1]")
            options = DetectionOptions(
                score_threshold=request.score_threshold or DEFAULT_SCORE_THRESHOLD,
                max_detections=request.max_detections,
            )
            images = images_from_grpc(request.images, self._max_images)
            results = await detector.detect(images, options, deadline)
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
        model, deadline = self._model_for(request.model, CAPTION), deadline_of(context)
        options = CaptionOptions(beam_size=request.beam_size, max_length=request.max_length)
        with model.request(deadline):
            captioner = self._task(model, CAPTION, Captioner)
            images = images_from_grpc(request.images, self._max_images)
            results = await captioner.caption(images, options, deadline)
        return pb.CaptionResponse(
            model=model_ref(model),
            results=[pb.Caption(text=c.text, log_probability=c.log_probability) for c in results],
        )

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> pb.GenerateResponse:
        model, deadline = self._model_for(request.model, GENERATE), deadline_of(context)
        with model.request(deadline):
            generator = self._task(model, GENERATE, Generator)
            count = len(request.latents) or request.count or 1
            if count > self._max_images:
                raise ResourceExhausted(f"{count} images in one request; the limit is {self._max_images}")
            if request.latents:
                latents = latents_from_values([latent.values for latent in request.latents], generator.latent_size)
            else:
                latents = latents_from_seed(request.seed, count, generator.latent_size)
            results = await generator.generate(latents, deadline)
        return pb.GenerateResponse(
            model=model_ref(model),
            images=[pb.GeneratedImage(png=i.png, height=i.height, width=i.width) for i in results],
        )

    async def Warp(self, request: pb.WarpRequest, context: grpc.aio.ServicerContext) -> pb.WarpResponse:
        model, deadline = self._model_for(request.model, WARP), deadline_of(context)
        with model.request(deadline):
            warper = self._task(model, WARP, Warper)
            images = images_from_grpc(request.images, self._max_images)
            results = await warper.warp(images, deadline)
        return pb.WarpResponse(
            model=model_ref(model),
            results=[
                pb.Warp(png=w.png, theta=w.theta, label=w.label, score=w.score, transform=w.transform) for w in results
            ],
        )

    async def Align(self, request: pb.AlignRequest, context: grpc.aio.ServicerContext) -> pb.AlignResponse:
        model, deadline = self._model_for(request.model, ALIGN), deadline_of(context)
        with model.request(deadline):
            aligner = self._task(model, ALIGN, Aligner)
            images = images_from_grpc(request.images, self._max_images)
            result = await aligner.align(images, request.sentences, deadline)
        return pb.AlignResponse(
            model=model_ref(model),
            images=[
                pb.ImageAlignment(
                    sentences=[
                        pb.SentenceMatch(
                            sentence=match.sentence,
                            score=match.score,
                            words=[pb.AlignedWord(word=w.word, region=w.region, score=w.score) for w in match.words],
                        )
                        for match in image.sentences
                    ],
                    regions=[pb.Box(x1=b.x1, y1=b.y1, x2=b.x2, y2=b.y2) for b in image.regions],
                )
                for image in result.images
            ],
            sentences=[
                pb.SentenceRanking(
                    images=[pb.ImageMatch(image=m.image, score=m.score) for m in ranking.images],
                    ignored_words=ranking.ignored_words,
                )
                for ranking in result.sentences
            ],
        )

    async def Explain(self, request: pb.ExplainRequest, context: grpc.aio.ServicerContext) -> pb.ExplainResponse:
        model, deadline = self._model_for(request.model, EXPLAIN), deadline_of(context)
        with model.request(deadline):
            explainer = self._task(model, EXPLAIN, Explainer)
            images = images_from_grpc(request.images, self._max_images)
            results = await explainer.explain(images, request.layer, request.top_k, deadline, explained_class(request))
        return pb.ExplainResponse(
            model=model_ref(model),
            results=[
                pb.Explanation(
                    layer=result.layer,
                    channels=[
                        pb.ChannelProjection(
                            channel=c.channel,
                            activation=c.activation,
                            png=c.png,
                            receptive_field=pb.Box(
                                x1=c.receptive_field[0],
                                y1=c.receptive_field[1],
                                x2=c.receptive_field[2],
                                y2=c.receptive_field[3],
                            ),
                            contribution=c.contribution,
                        )
                        for c in result.channels
                    ],
                    explained_class=None
                    if result.explained_class is None
                    else pb.Prediction(
                        label=result.explained_class.label,
                        index=result.explained_class.index,
                        score=result.explained_class.score,
                    ),
                )
                for result in results
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
