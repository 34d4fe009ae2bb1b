"""The ninefold client library: `VisionClient` (blocking) and `AsyncVisionClient` (asyncio).

    with VisionClient("localhost:8001") as client:
        answer = client.classify(["cat.png", image_array], top_k=3)
        for classification in answer.results:
            print(answer.model, classification.predictions[0].label)

Every call has a deadline (the client's `timeout`, 10 s by default, or the call's own
`timeout=`); a failed call raises `VisionError` with the gRPC status code and the server's
message; an argument the client will not send raises `InputError` before any traffic.
`target` is `host:port` or, for a Kubernetes headless Service, `dns:///svc.ns.svc.cluster.local:8001`
(calls rotate over the pods; see clients/channel.py). `tls=TlsFiles(ca=..., cert=..., key=...)` connects
to a server started with --tls-cert (and, for mutual TLS, --tls-client-ca).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, TypeVar

import grpc
import grpc.aio
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients import calls
from clients.calls import Call
from clients.channel import DEFAULT_TARGET, DEFAULT_TIMEOUT_S, TlsFiles, open_aio_channel, open_channel
from clients.errors import InputError, VisionError
from clients.images import ImagesInput
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
from protos.ninefold.v1 import vision_pb2_grpc

R = TypeVar("R")

READY_POLL_S = 0.1
_NOT_WORTH_WAITING = (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAUTHENTICATED)


class VisionClient:
    """Blocking client; thread-safe (calls from several threads share one channel)."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        channel: grpc.Channel | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self.target = target
        self.timeout = _positive_timeout(timeout)
        self._channel = channel or open_channel(target, tls)
        self._stub = vision_pb2_grpc.VisionStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def classify(
        self,
        images: ImagesInput,
        *,
        model: str = "",
        version: int = 0,
        top_k: int = 0,
        crops: int = 0,
        timeout: float | None = None,
    ) -> Answer[Classification]:
        return self.call(calls.classify(images, model, version, top_k, crops), timeout)

    def detect(
        self,
        images: ImagesInput,
        *,
        model: str = "",
        version: int = 0,
        score_threshold: float = 0.0,
        max_detections: int = 0,
        timeout: float | None = None,
    ) -> Answer[Detections]:
        return self.call(calls.detect(images, model, version, score_threshold, max_detections), timeout)

    def caption(
        self,
        images: ImagesInput,
        *,
        model: str = "",
        version: int = 0,
        beam_size: int = 0,
        max_length: int = 0,
        timeout: float | None = None,
    ) -> Answer[Caption]:
        return self.call(calls.caption(images, model, version, beam_size, max_length), timeout)

    def generate(
        self,
        count: int = 1,
        *,
        seed: int = 0,
        latents: Sequence[Sequence[float]] | np.ndarray | None = None,
        model: str = "",
        version: int = 0,
        timeout: float | None = None,
    ) -> Answer[GeneratedImage]:
        return self.call(calls.generate(count, seed, latents, model, version), timeout)

    def warp(
        self, images: ImagesInput, *, model: str = "", version: int = 0, timeout: float | None = None
    ) -> Answer[Warp]:
        return self.call(calls.warp(images, model, version), timeout)

    def align(
        self,
        images: ImagesInput,
        sentences: Sequence[str],
        *,
        model: str = "",
        version: int = 0,
        timeout: float | None = None,
    ) -> Alignment:
        return self.call(calls.align(images, sentences, model, version), timeout)

    def explain(
        self,
        images: ImagesInput,
        *,
        layer: str | int = "",
        top_k: int = 0,
        explained_class: str | int | None = None,
        model: str = "",
        version: int = 0,
        timeout: float | None = None,
    ) -> Answer[Explanation]:
        """layer: a name ("conv2") or 1-based index ("" = the last); top_k: channels per image (0 = 9);
        explained_class: a label or class index: rank the channels by their contribution to its score."""
        return self.call(calls.explain(images, model, version, layer, top_k, explained_class), timeout)

    def list_models(self, task: str = "", *, timeout: float | None = None) -> tuple[ModelInfo, ...]:
        return self.call(calls.list_models(task), timeout)

    def call(self, call: Call[R], timeout: float | None = None) -> R:
        """Send one prepared call with a deadline; the typed methods above all come here."""
        method: Any = getattr(self._stub, call.method)
        try:
            response = method(call.request, timeout=self._deadline(timeout))
        except grpc.RpcError as error:
            raise VisionError.from_rpc_error(error) from None
        return call.parse(response)

    def wait_until_ready(self, timeout: float = 30.0, service: str = "") -> None:
        """Block until grpc.health.v1 reports SERVING for `service` ("" = whole server,
        "ninefold.v1.Vision/classify" = one task); raises VisionError(DEADLINE_EXCEEDED) after `timeout` s."""
        deadline = time.monotonic() + _positive_timeout(timeout)
        reason = "no answer yet"
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                response = self._health.Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=remaining, wait_for_ready=True
                )
                reason = _not_ready_reason(response)
            except grpc.RpcError as error:
                reason = _not_ready_reason(VisionError.from_rpc_error(error))
            if not reason:
                return
            time.sleep(min(READY_POLL_S, max(deadline - time.monotonic(), 0)))
        raise _not_ready_error(self.target, service, timeout, reason)

    def can_connect(self, timeout: float = 1.0) -> bool:
        """Whether a connection to the target opens within `timeout` s: tells "nothing listens there"
        apart from a server that answered UNAVAILABLE itself (a model not ready, draining)."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=_positive_timeout(timeout))
        except grpc.FutureTimeoutError:
            return False
        return True

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> VisionClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _deadline(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else _positive_timeout(timeout)


class AsyncVisionClient:
    """asyncio client: the same calls and results as VisionClient, awaited. Create it inside the
    running event loop (`async with AsyncVisionClient(target) as client:`); calls may run concurrently."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        channel: grpc.aio.Channel | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self.target = target
        self.timeout = _positive_timeout(timeout)
        self._channel = channel or open_aio_channel(target, tls)
        self._stub = vision_pb2_grpc.VisionStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    async def classify(
        self,
        images: ImagesInput,
        *,
        model: str = "",
        version: int = 0,
        top_k: int = 0,
        crops: int = 0,
        timeout: float | None = None,
    ) -> Answer[Classification]:
        return await self.call(calls.classify(images, model, version, top_k, crops), timeout)

    async def detect(
        self,
        images: ImagesInput,
        *,
        model: str = "",
        version: int = 0,
        score_threshold: float = 0.0,
        max_detections: int = 0,
        timeout: float | None = None,
    ) -> Answer[Detections]:
        return await self.call(calls.detect(images, model, version, score_threshold, max_detections), timeout)

    async def caption(
        self,
        images: ImagesInput,
        *,
        model: str = "",
        version: int = 0,
        beam_size: int = 0,
        max_length: int = 0,
        timeout: float | None = None,
    ) -> Answer[Caption]:
        return await self.call(calls.caption(images, model, version, beam_size, max_length), timeout)

    async def generate(
        self,
        count: int = 1,
        *,
        seed: int = 0,
        latents: Sequence[Sequence[float]] | np.ndarray | None = None,
        model: str = "",
        version: int = 0,
        timeout: float | None = None,
    ) -> Answer[GeneratedImage]:
        return await self.call(calls.generate(count, seed, latents, model, version), timeout)

    async def warp(
        self, images: ImagesInput, *, model: str = "", version: int = 0, timeout: float | None = None
    ) -> Answer[Warp]:
        return await self.call(calls.warp(images, model, version), timeout)

    async def align(
        self,
        images: ImagesInput,
        sentences: Sequence[str],
        *,
        model: str = "",
        version: int = 0,
        timeout: float | None = None,
    ) -> Alignment:
        return await self.call(calls.align(images, sentences, model, version), timeout)

    async def explain(
        self,
        images: ImagesInput,
        *,
        layer: str | int = "",
        top_k: int = 0,
        explained_class: str | int | None = None,
        model: str = "",
        version: int = 0,
        timeout: float | None = None,
    ) -> Answer[Explanation]:
        """layer: a name ("conv2") or 1-based index ("" = the last); top_k: channels per image (0 = 9);
        explained_class: a label or class index: rank the channels by their contribution to its score."""
        return await self.call(calls.explain(images, model, version, layer, top_k, explained_class), timeout)

    async def list_models(self, task: str = "", *, timeout: float | None = None) -> tuple[ModelInfo, ...]:
        return await self.call(calls.list_models(task), timeout)

    async def call(self, call: Call[R], timeout: float | None = None) -> R:
        """Send one prepared call with a deadline; the typed methods above all come here."""
        method: Any = getattr(self._stub, call.method)
        try:
            response = await method(call.request, timeout=self._deadline(timeout))
        except grpc.aio.AioRpcError as error:
            raise VisionError.from_rpc_error(error) from None
        return call.parse(response)

    async def wait_until_ready(self, timeout: float = 30.0, service: str = "") -> None:
        """Wait until grpc.health.v1 reports SERVING for `service`; see VisionClient.wait_until_ready."""
        deadline = time.monotonic() + _positive_timeout(timeout)
        reason = "no answer yet"
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                response = await self._health.Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=remaining, wait_for_ready=True
                )
                reason = _not_ready_reason(response)
            except grpc.aio.AioRpcError as error:
                reason = _not_ready_reason(VisionError.from_rpc_error(error))
            if not reason:
                return
            await asyncio.sleep(min(READY_POLL_S, max(deadline - time.monotonic(), 0)))
        raise _not_ready_error(self.target, service, timeout, reason)

    async def can_connect(self, timeout: float = 1.0) -> bool:
        """Whether a connection to the target opens within `timeout` s; see VisionClient.can_connect."""
        try:
            await asyncio.wait_for(self._channel.channel_ready(), _positive_timeout(timeout))
        except asyncio.TimeoutError:
            return False
        return True

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncVisionClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _deadline(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else _positive_timeout(timeout)


def _positive_timeout(timeout: float) -> float:
    if not timeout > 0:
        raise InputError(f"timeout must be a positive number of seconds, got {timeout}")
    return float(timeout)


def _not_ready_reason(outcome: health_pb2.HealthCheckResponse | VisionError) -> str:
    """Empty when `outcome` says SERVING; otherwise why not. Raises the errors waiting cannot fix."""
    if isinstance(outcome, VisionError):
        if outcome.code in _NOT_WORTH_WAITING:
            raise outcome
        return str(outcome)
    if outcome.status == health_pb2.HealthCheckResponse.SERVING:
        return ""
    return health_pb2.HealthCheckResponse.ServingStatus.Name(outcome.status)


def _not_ready_error(target: str, service: str, timeout: float, reason: str) -> VisionError:
    what = f"service {service!r}" if service else "the server"
    return VisionError(
        grpc.StatusCode.DEADLINE_EXCEEDED, f"{what} at {target} not ready within {timeout:g} s (last: {reason})"
    )
