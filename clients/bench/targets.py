"""What the load generator sends: one pre-serialised gRPC request per target.

Requests are serialised once and responses are not parsed (only the status is checked), so the
client spends its share of the two cores on sending, not on protobuf, and every system under test
is charged the same client cost.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import numpy as np

from clients.v2 import Output, infer_request
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


def make_call(channel: grpc.aio.Channel, target: Target, timeout_s: float) -> Callable[[], Awaitable[bytes]]:
    """A zero-argument coroutine factory for the load generator (identity (de)serialisers)."""
    method = channel.unary_unary(target.method)

    def call() -> Awaitable[bytes]:
        return method(target.payload, timeout=timeout_s)

    return call
