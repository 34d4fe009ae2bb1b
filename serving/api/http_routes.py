"""The Open Inference Protocol's HTTP/REST endpoints (KServe v2 + Triton's extensions) over the gRPC servicer.

Each route turns the URL and body into the v2 gRPC request message, awaits the very servicer method
gRPC calls (same model manager, batcher, shared memory registry, model-control token rule) and
renders the answer as Triton's HTTP JSON (serving.api.http_json, serving.api.http_infer). Errors are
domain errors, mapped to HTTP statuses by serving.api.status in serving.api.http_server.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web

from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc as pb_grpc
from serving.api.http_infer import HEADER_LENGTH, infer_request, infer_response, parse_json
from serving.api.http_json import message_json
from serving.errors import InvalidArgument

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_MODEL = "/v2/models/{model}"
_VERSION = "/v2/models/{model}/versions/{version}"
_SHM = "/v2/systemsharedmemory"
#: Triton answers a negative health or readiness check with 400; its clients test for 200.
NOT_READY = 400


class _HttpCall:
    """What the servicer reads from a gRPC call context, taken from an HTTP request instead."""

    def __init__(self, request: web.Request) -> None:
        self._headers = [(key.lower(), value) for key, value in request.headers.items()]

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return self._headers

    def time_remaining(self) -> float | None:
        return None  # HTTP carries no deadline


def routes(servicer: pb_grpc.GRPCInferenceServiceServicer) -> list[web.RouteDef]:
    """Every OIP HTTP route, answered by `servicer` (an InferenceServicer)."""
    api = _Routes(servicer)
    table = [
        web.get("/v2/health/live", api.live),
        web.get("/v2/health/ready", api.ready),
        web.get("/v2", api.server_metadata),
        web.get("/v2/models/stats", api.statistics),
        web.post("/v2/repository/index", api.repository_index),
        web.post("/v2/repository/models/{model}/load", api.load),
        web.post("/v2/repository/models/{model}/unload", api.unload),
        web.get(f"{_SHM}/status", api.shm_status),
        web.get(f"{_SHM}/region/{{region}}/status", api.shm_status),
        web.post(f"{_SHM}/region/{{region}}/register", api.shm_register),
        web.post(f"{_SHM}/unregister", api.shm_unregister),
        web.post(f"{_SHM}/region/{{region}}/unregister", api.shm_unregister),
    ]
    for base in (_MODEL, _VERSION):
        table += [
            web.get(base, api.model_metadata),
            web.get(f"{base}/ready", api.model_ready),
            web.get(f"{base}/config", api.model_config),
            web.get(f"{base}/stats", api.statistics),
            web.post(f"{base}/infer", api.infer),
        ]
    unsupported = {
        "/v2/cudasharedmemory{tail:.*}": "CUDA shared memory is not supported; use system shared memory",
        "/v2/trace/setting": "trace settings are not supported; use the Prometheus metrics",
        "/v2/models/{model}/trace/setting": "trace settings are not supported; use the Prometheus metrics",
        "/v2/logging": "log settings are not supported; set --log-level at start-up",
    }
    table += [web.route("*", path, _not_implemented(message)) for path, message in unsupported.items()]
    return table


def _not_implemented(message: str) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": message}, status=501)

    return handle


def _model(request: web.Request) -> tuple[str, str]:
    return request.match_info["model"], request.match_info.get("version", "")


class _Routes:
    def __init__(self, servicer: pb_grpc.GRPCInferenceServiceServicer) -> None:
        self._servicer: Any = servicer

    async def _call(self, method: str, message: Any, request: web.Request) -> Any:
        return await getattr(self._servicer, method)(message, cast(Any, _HttpCall(request)))

    async def live(self, request: web.Request) -> web.StreamResponse:
        answer = await self._call("ServerLive", pb.ServerLiveRequest(), request)
        return web.Response(status=200 if answer.live else NOT_READY)

    async def ready(self, request: web.Request) -> web.StreamResponse:
        answer = await self._call("ServerReady", pb.ServerReadyRequest(), request)
        return web.Response(status=200 if answer.ready else NOT_READY)

    async def server_metadata(self, request: web.Request) -> web.StreamResponse:
        answer = await self._call("ServerMetadata", pb.ServerMetadataRequest(), request)
        return web.json_response(message_json(answer))

    async def model_metadata(self, request: web.Request) -> web.StreamResponse:
        name, version = _model(request)
        answer = await self._call("ModelMetadata", pb.ModelMetadataRequest(name=name, version=version), request)
        return web.json_response(message_json(answer))

    async def model_ready(self, request: web.Request) -> web.StreamResponse:
        name, version = _model(request)
        answer = await self._call("ModelReady", pb.ModelReadyRequest(name=name, version=version), request)
        return web.Response(status=200 if answer.ready else NOT_READY)

    async def model_config(self, request: web.Request) -> web.StreamResponse:
        name, version = _model(request)
        answer = await self._call("ModelConfig", pb.ModelConfigRequest(name=name, version=version), request)
        return web.json_response(message_json(answer.config))

    async def statistics(self, request: web.Request) -> web.StreamResponse:
        name, version = request.match_info.get("model", ""), request.match_info.get("version", "")
        answer = await self._call("ModelStatistics", pb.ModelStatisticsRequest(name=name, version=version), request)
        return web.json_response(message_json(answer))

    async def repository_index(self, request: web.Request) -> web.StreamResponse:
        body = parse_json(await request.read(), "the repository index request")
        ready = isinstance(body, dict) and body.get("ready") is True
        answer = await self._call("RepositoryIndex", pb.RepositoryIndexRequest(ready=ready), request)
        return web.json_response(message_json(answer)["models"])

    async def load(self, request: web.Request) -> web.StreamResponse:
        body = parse_json(await request.read(), "the load request")
        parameters = body.get("parameters") if isinstance(body, dict) else None
        message = pb.RepositoryModelLoadRequest(model_name=request.match_info["model"])
        for key, value in (parameters or {}).items() if isinstance(parameters, dict) else ():
            message.parameters[key].string_param = str(value)  # refused by the servicer: none are supported
        await self._call("RepositoryModelLoad", message, request)
        return web.Response()

    async def unload(self, request: web.Request) -> web.StreamResponse:
        message = pb.RepositoryModelUnloadRequest(model_name=request.match_info["model"])
        await self._call("RepositoryModelUnload", message, request)
        return web.Response()

    async def infer(self, request: web.Request) -> web.StreamResponse:
        name, version = _model(request)
        message, output_format = infer_request(name, version, await request.read(), request.headers.get(HEADER_LENGTH))
        answer = await self._call("ModelInfer", message, request)
        body, header_length = infer_response(answer, output_format)
        if header_length is None:
            return web.Response(body=body, content_type="application/json")
        return web.Response(body=body, content_type="application/octet-stream",
                            headers={HEADER_LENGTH: str(header_length)})

    async def shm_status(self, request: web.Request) -> web.StreamResponse:
        message = pb.SystemSharedMemoryStatusRequest(name=request.match_info.get("region", ""))
        answer = await self._call("SystemSharedMemoryStatus", message, request)
        return web.json_response(list(message_json(answer)["regions"].values()))

    async def shm_register(self, request: web.Request) -> web.StreamResponse:
        body = parse_json(await request.read(), "the register request")
        fields = body if isinstance(body, dict) else {}
        message = pb.SystemSharedMemoryRegisterRequest(name=request.match_info["region"])
        try:
            message.key = fields.get("key", "")
            message.offset = fields.get("offset", 0)
            message.byte_size = fields.get("byte_size", 0)
        except (TypeError, ValueError):
            raise InvalidArgument("register needs 'key' (string), 'offset' and 'byte_size' (integers >= 0)") from None
        await self._call("SystemSharedMemoryRegister", message, request)
        return web.Response()

    async def shm_unregister(self, request: web.Request) -> web.StreamResponse:
        message = pb.SystemSharedMemoryUnregisterRequest(name=request.match_info.get("region", ""))
        await self._call("SystemSharedMemoryUnregister", message, request)
        return web.Response()
