"""The Open Inference Protocol (KServe v2) gRPC adapter: `inference.GRPCInferenceService` over the core.

A thin servicer: each RPC asks the ModelManager and converts with serving.api.v2_infer (requests,
responses) or serving.api.v2_messages (metadata, config, statistics, index). Domain errors raised
here become status codes in serving.api.status, like every adapter's. System shared memory uses
the server's one registry (serving.api.shm); CUDA shared-memory, trace and log RPCs answer
UNIMPLEMENTED with a message saying what to do instead. The same servicer answers OIP over HTTP
(serving.api.http_routes adds its routes to the context).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Sequence
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import TypeAlias

import grpc

from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc as pb_grpc
from serving.api import ServingContext, http_routes
from serving.api import status as status_table
from serving.api.shm import SharedMemoryRegistry
from serving.api.v2_infer import InputLimits, infer, parse_version
from serving.api.v2_messages import EXTENSIONS, model_config, model_metadata, model_statistics, repository_index
from serving.errors import InvalidArgument, NotFound, Unavailable
from serving.model_control import ModelControl
from serving.models import ModelManager

log = logging.getLogger(__name__)


def server_version() -> str:
    """The installed package's version, else (run from a source tree, nothing installed) pyproject.toml's."""
    try:
        return package_version("ninefold")
    except PackageNotFoundError:
        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        text = pyproject.read_text() if pyproject.is_file() else ""
        match = re.search(r'^version = "([^"]+)"', text, re.MULTILINE)
        return match.group(1) if match else "0+unknown"


SERVER_VERSION = server_version()
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
Context: TypeAlias = grpc.aio.ServicerContext
#: Requests of one ModelStreamInfer stream in flight (read, not yet answered on the wire); no more are read meanwhile.
STREAM_IN_FLIGHT = 64


def register(server: grpc.aio.Server, context: ServingContext) -> Sequence[str]:
    """Add the v2 servicer (with its HTTP routes)."""
    limits = InputLimits(context.config.image_limits(), context.config.max_images_per_request)
    servicer = InferenceServicer(context.models, context.control, limits, context.regions)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    context.http_routes.extend(http_routes.routes(servicer))
    return (SERVICE_NAME,)


def _deadline(context: Context) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """`inference.GRPCInferenceService`: health, metadata, inference, statistics, repository control."""

    def __init__(
        self, models: ModelManager, control: ModelControl, limits: InputLimits, regions: SharedMemoryRegistry
    ) -> None:
        self._models = models
        self._control = control
        self._limits = limits
        self._regions = regions

    # ------------------------------------------------------------------ health and metadata
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: Context
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._models.serving)  # = grpc.health's overall status

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        try:
            self._models.get(request.name, parse_version(request.version))
        except (NotFound, Unavailable):  # as Triton: an unknown model is simply not ready
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="ninefold", version=SERVER_VERSION, extensions=EXTENSIONS)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        model = self._models.get(request.name, parse_version(request.version))
        versions = [m.version for m in self._models.models() if m.name == model.name]
        return model_metadata(model, versions)

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Context) -> pb.ModelConfigResponse:
        return model_config(self._models.get(request.name, parse_version(request.version)))

    # ------------------------------------------------------------------ inference
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> pb.ModelInferResponse:
        return await infer(request, self._models, self._limits, _deadline(context), self._regions)

    @status_table.per_message_errors
    async def ModelStreamInfer(
        self, requests: AsyncIterator[pb.ModelInferRequest | status_table.Undecodable], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Every request of the stream runs concurrently (so they batch together); each answer is
        sent when ready, in completion order, its `id` echoing the request's. A failed request, an
        undecodable message included, answers with `error_message` and the stream goes on."""
        answers: asyncio.Queue[pb.ModelStreamInferResponse] = asyncio.Queue()
        running: set[asyncio.Task] = set()
        slots = asyncio.Semaphore(STREAM_IN_FLIGHT)
        deadline = _deadline(context)

        async def answer(request: pb.ModelInferRequest | status_table.Undecodable) -> None:
            try:
                if isinstance(request, status_table.Undecodable):
                    raise request.invalid()
                response = await infer(request, self._models, self._limits, deadline, self._regions)
                await answers.put(pb.ModelStreamInferResponse(infer_response=response))
            except Exception as error:  # noqa: BLE001 - every failure becomes this request's error_message
                code, message = status_table.status_of(error)
                if isinstance(request, status_table.Undecodable):
                    failed = pb.ModelInferResponse()
                else:
                    if code is grpc.StatusCode.INTERNAL:
                        log.error("ModelStreamInfer request for %s failed", request.model_name, exc_info=error)
                    failed = pb.ModelInferResponse(model_name=request.model_name,
                                                   model_version=request.model_version, id=request.id)
                await answers.put(pb.ModelStreamInferResponse(error_message=message, infer_response=failed))

        async def read() -> None:
            async for request in requests:
                await slots.acquire()  # back-pressure: stop reading while STREAM_IN_FLIGHT are not yet sent
                task = asyncio.create_task(answer(request))
                running.add(task)
                task.add_done_callback(running.discard)

        reader = asyncio.create_task(read())
        getter: asyncio.Future[pb.ModelStreamInferResponse] | None = None
        try:
            while not (reader.done() and not running and answers.empty()):
                getter = asyncio.ensure_future(answers.get())
                watched = {getter, *running} if reader.done() else {getter, reader, *running}
                await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield getter.result()
                    slots.release()
                else:
                    getter.cancel()
            await reader  # re-raise a broken request stream
        finally:  # the client left or the stream ended: nothing of this stream may stay pending
            reader.cancel()
            if getter is not None:
                getter.cancel()
            for task in running:
                task.cancel()

    # ------------------------------------------------------------------ statistics and repository
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: Context
    ) -> pb.ModelStatisticsResponse:
        version = parse_version(request.version)
        chosen = [
            m for m in self._models.models()
            if (not request.name or m.name == request.name) and (not version or m.version == version)
        ]
        if request.name and not chosen:
            raise NotFound(f"no model '{request.name}'" + (f" version {version}" if version else "") + " is loaded")
        return pb.ModelStatisticsResponse(model_stats=[model_statistics(m.stats()) for m in chosen])

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Context
    ) -> pb.RepositoryIndexResponse:
        return repository_index(self._models.index(), request.ready)

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> pb.RepositoryModelLoadResponse:
        self._control.authorise(context.invocation_metadata() or ())
        if request.parameters:
            raise InvalidArgument("load parameters (config overrides, file uploads) are not supported; "
                                  "put the model folder into the repository and load it by name")
        self._control.model_folder(request.model_name)
        await self._models.load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> pb.RepositoryModelUnloadResponse:
        self._control.authorise(context.invocation_metadata() or ())
        self._control.check_name(request.model_name)
        await self._models.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # ------------------------------------------------------------------ system shared memory
    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: Context
    ) -> pb.SystemSharedMemoryStatusResponse:
        response = pb.SystemSharedMemoryStatusResponse()
        for region in self._regions.status(request.name):
            response.regions[region.name].CopyFrom(pb.SystemSharedMemoryStatusResponse.RegionStatus(
                name=region.name, key=region.key, offset=region.offset, byte_size=region.byte_size))
        return response

    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: Context
    ) -> pb.SystemSharedMemoryRegisterResponse:
        self._regions.register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: Context
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        self._regions.unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    # ------------------------------------------------------------------ not served

    async def CudaSharedMemoryStatus(self, request: object, context: Context) -> None:
        await _unimplemented(context, _SHARED_MEMORY)

    async def CudaSharedMemoryRegister(self, request: object, context: Context) -> None:
        await _unimplemented(context, _SHARED_MEMORY)

    async def CudaSharedMemoryUnregister(self, request: object, context: Context) -> None:
        await _unimplemented(context, _SHARED_MEMORY)

    async def TraceSetting(self, request: object, context: Context) -> None:
        await _unimplemented(context, "trace settings are not supported; use the Prometheus metrics")

    async def LogSettings(self, request: object, context: Context) -> None:
        await _unimplemented(context, "log settings are not supported; set --log-level at start-up")


_SHARED_MEMORY = "CUDA shared memory is not supported; use system shared memory or send tensors in the request"


async def _unimplemented(context: Context, message: str) -> None:
    """UNIMPLEMENTED is a fact about this transport, not a domain error: abort here, outside the table."""
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)
