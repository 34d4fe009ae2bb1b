"""What the Vision API tests share: images as the API takes them, a server, a stub."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

from clients.server_process import ServerProcess
from protos.ninefold.v1 import vision_pb2 as pb
from protos.ninefold.v1 import vision_pb2_grpc
from tests.serving.conftest import start_server


def encoded_image(pixels: np.ndarray, fmt: str = "PNG") -> pb.Image:
    """uint8 (H, W, 3) pixels as an encoded image (JPEG at quality 95)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return pb.Image(encoded=buffer.getvalue())


def raw_image(pixels: np.ndarray) -> pb.Image:
    """uint8 (H, W, C) pixels as a raw tensor."""
    height, width, channels = pixels.shape
    return pb.Image(raw=pb.RawImage(pixels=pixels.tobytes(), height=height, width=width, channels=channels))


@contextlib.contextmanager
def vision_server(repository: Path, *flags: str) -> Iterator[ServerProcess]:
    """A real server on `repository`; it must exit 0 on SIGTERM afterwards."""
    running = start_server(repository, *flags)
    try:
        yield running
    finally:
        assert running.stop() == 0, running.log()


@contextlib.contextmanager
def vision_stub(server: ServerProcess) -> Iterator[vision_pb2_grpc.VisionStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield vision_pb2_grpc.VisionStub(channel)
