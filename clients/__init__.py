"""ninefold clients: the Python client library (sync and asyncio), the `ninefold` CLI, the demo.

Importing this package loads grpc, protobuf and numpy only: never torch, never the server.
"""

from clients.channel import CHANNEL_OPTIONS, DEFAULT_TARGET, DEFAULT_TIMEOUT_S
from clients.client import AsyncVisionClient, VisionClient
from clients.errors import ClientError, InputError, VisionError
from clients.results import (
    Answer,
    Caption,
    ChannelProjection,
    Classification,
    Detection,
    Detections,
    Explanation,
    GeneratedImage,
    ModelId,
    ModelInfo,
    Prediction,
    Warp,
)

__all__ = [
    "CHANNEL_OPTIONS",
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT_S",
    "Answer",
    "AsyncVisionClient",
    "Caption",
    "ChannelProjection",
    "Classification",
    "ClientError",
    "Detection",
    "Detections",
    "Explanation",
    "GeneratedImage",
    "InputError",
    "ModelId",
    "ModelInfo",
    "Prediction",
    "VisionClient",
    "VisionError",
    "Warp",
]
