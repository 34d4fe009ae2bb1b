"""What the load generator sends: one pre-serialised gRPC request (or OIP HTTP body) per target.

Requests are serialised once and responses are not parsed (only the status is checked), so the
client spends its share of the two cores on sending, not on protobuf, and every system under test
is charged the same client cost.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass

import aiohttp
import grpc
import numpy as np

from clients.v2 import Output, http_infer_body, infer_request
from protos.ninefold.v1 import vision_pb2

CLASSIFY_METHOD = "/ninefold.v1.Vision/Classify"
V2_INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"


@dataclass(frozen=True)
class Target:
    """A gRPC method and the serialised request to send to it, again and again."""

    method: str
    payload: bytes
    description: str


def classify_target(model: str, jpeg: bytes, top_k: int = 5) -> Target:
    """ninefold's task API: one encoded image in, top-k labels out."""
    request = vision_pb2.ClassifyRequest(
        model=vision_pb2.ModelRef(name=model), images=[vision_pb2.Image(encoded=jpeg)], top_k=top_k
    )
    return Target(CLASSIFY_METHOD, request.SerializeToString(), f"Classify {model} top-{top_k}")


def v2_image_target(model: str, input_name: str, jpeg: bytes, output_name: str, top_k: int = 5) -> Target:
    """Open Inference Protocol: a BYTES tensor holding one JPEG in, Triton classification strings out."""
    request = infer_request(
        model,
        {input_name: np.array([jpeg], dtype=object)},
        outputs=[Output(output_name, classification=top_k)],
    )
    return Target(V2_INFER_METHOD, request.SerializeToString(), f"v2 ModelInfer {model} (JPEG, top-{top_k})")


def v2_tensor_target(model: str, inputs: dict[str, np.ndarray]) -> Target:
    """Open Inference Protocol: raw tensors in, every output back."""
    request = infer_request(model, inputs)
    return Target(V2_INFER_METHOD, request.SerializeToString(), f"v2 ModelInfer {model} (tensors)")


@dataclass(frozen=True)
class HttpTarget:
    """An OIP HTTP/REST path and the body (with its headers) to POST to it, again and again."""

    path: str
    body: bytes
    headers: Mapping[str, str]
    description: str


@dataclass(frozen=True)
class SharedMemoryTensor:
    """A tensor the server reads from (input) or writes to (output) a registered system shared memory region."""

    name: str
    region: str
    byte_size: int
    offset: int = 0
    datatype: str = ""
    shape: tuple[int, ...] = ()


def v2_http_tensor_target(model: str, inputs: dict[str, np.ndarray]) -> HttpTarget:
    """Open Inference Protocol over HTTP: the tensors of v2_tensor_target as binary data, outputs as binary."""
    body, headers = http_infer_body(infer_request(model, inputs, request_id="bench"))  # KServe's REST needs an id
    return HttpTarget(f"/v2/models/{model}/infer", body, headers, f"v2 HTTP infer {model} (binary tensors)")


def v2_shm_target(model: str, inputs: list[SharedMemoryTensor], outputs: list[SharedMemoryTensor]) -> Target:
    """Open Inference Protocol over gRPC with every tensor in system shared memory: the request carries
    only names, shapes and region windows."""
    request = infer_request(model, {})
    for tensor in inputs:
        added = request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        _window(added.parameters, tensor)
    for tensor in outputs:
        _window(request.outputs.add(name=tensor.name).parameters, tensor)
    return Target(V2_INFER_METHOD, request.SerializeToString(), f"v2 ModelInfer {model} (system shared memory)")


def _window(parameters: Mapping, tensor: SharedMemoryTensor) -> None:
    parameters["shared_memory_region"].string_param = tensor.region
    parameters["shared_memory_byte_size"].int64_param = tensor.byte_size
    parameters["shared_memory_offset"].int64_param = tensor.offset


@contextlib.asynccontextmanager
async def open_call(
    server: str, target: Target | HttpTarget, timeout_s: float
) -> AsyncIterator[Callable[[], Awaitable[bytes]]]:
    """The load generator's zero-argument call for `target` on `server` (host:port), over one gRPC channel
    or one HTTP connection pool, open for the `async with` block."""
    if isinstance(target, Target):  # one HTTP/2 connection carries every concurrent stream
        options = (("grpc.max_receive_message_length", 64 * 1024 * 1024),)
        async with grpc.aio.insecure_channel(server, options=options) as channel:
            yield make_call(channel, target, timeout_s)
        return
    url = f"http://{server}{target.path}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s),
                                     connector=aiohttp.TCPConnector(limit=0)) as session:

        async def call() -> bytes:
            async with session.post(url, data=target.body, headers=target.headers) as response:
                body = await response.read()
                response.raise_for_status()
                return body

        yield call


def make_call(channel: grpc.aio.Channel, target: Target, timeout_s: float) -> Callable[[], Awaitable[bytes]]:
    """A zero-argument coroutine factory for the load generator (identity (de)serialisers)."""
    method = channel.unary_unary(target.method)

    def call() -> Awaitable[bytes]:
        return method(target.payload, timeout=timeout_s)

    return call
