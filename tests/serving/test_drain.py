"""A graceful drain finishes every admitted request, whatever its task, refuses new ones, exits 0.

Captions are the hard case: each request runs several decoder steps, each a request of its own to
the decoder model, and the server refuses new lookups while it drains. The caption decoder here
is slowed down (a Loop of identity products) and a slow tensor model keeps v2 requests waiting
in its queue, so SIGTERM reliably arrives while all fifty requests are in flight: twenty captions
mid-decode, thirty v2 requests computing or queued.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest

from clients.server_process import ServerProcess
from protos.inference import grpc_service_pb2_grpc as v2_grpc
from protos.ninefold.v1 import vision_pb2 as pb
from protos.ninefold.v1 import vision_pb2_grpc
from tests.serving.conftest import start_server
from tests.serving.core_models import matmul_loop, slow_graph, tensor_config, write_model
from tests.serving.test_server import infer_request, metric, slow_rows
from tests.serving.tiny_repository import write_tiny_repository
from tests.serving.vision_helpers import raw_image

GRACE_S = 60.0
#: Identity products per decoder step: a few hundred ms on a CPU, so a caption outlasts SIGTERM's arrival.
DECODER_LOOP = 50_000
SLOW_WIDTH = 1024
CAPTIONS = 20
V2_REQUESTS = 30
#: Rows of the first v2 request: it keeps the slow model's one instance busy while the others queue.
BLOCKER_ROWS = 32
#: MatMuls per row of the slow model: seconds for the blocker on any CPU, so that the other 28 v2 requests,
#: the 20 captions and their encoder passes all arrive before it finishes (600 raced on a fast CPU).
SLOW_ITERATIONS = 3000


def slow_down_decoder(path: Path) -> None:
    """The tiny decoder's `h_out` = h times the 2x2 identity DECODER_LOOP times: the same answer, later."""
    model = onnx.load(str(path))
    graph = model.graph
    graph.node.remove(next(node for node in graph.node if list(node.output) == ["h_out"]))
    loop, initializers = matmul_loop("h", "h_out", np.eye(2), DECODER_LOOP)
    graph.node.append(loop)
    graph.initializer.extend(initializers)
    onnx.save(model, str(path))


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    repository = write_tiny_repository(tmp_path / "repository")
    slow_down_decoder(repository / "tiny_caption_decoder" / "1" / "model.onnx")
    batching = tensor_config(SLOW_WIDTH, BLOCKER_ROWS, "dynamic_batching { }\n")
    write_model(repository, "slow", slow_graph(SLOW_WIDTH, SLOW_ITERATIONS), batching)
    return repository


def wait_for(condition: Callable[[str], bool], server: ServerProcess, what: str) -> None:
    """Poll /metrics until `condition(text)` holds (fails after a minute, never hangs)."""
    give_up = time.monotonic() + 60
    while not condition(server.metrics()):
        assert time.monotonic() < give_up, f"never saw {what}"
        time.sleep(0.01)


def queued(count: int) -> Callable[[str], bool]:
    return lambda text: metric(text, "nv_inference_pending_request_count", model="slow") == count


def test_sigterm_with_fifty_mixed_requests_in_flight_finishes_all_of_them(repository: Path) -> None:
    server = start_server(repository, "--grace-seconds", str(GRACE_S))
    try:
        image = raw_image(np.full((8, 8, 3), 128, np.uint8))
        with grpc.insecure_channel(server.target) as channel:
            vision = vision_pb2_grpc.VisionStub(channel)
            v2 = v2_grpc.GRPCInferenceServiceStub(channel)
            calls: list[tuple[str, Future]] = [
                ("v2", v2.ModelInfer.future(infer_request("slow", slow_rows(BLOCKER_ROWS)), timeout=120)),
                ("v2", v2.ModelInfer.future(infer_request("slow", slow_rows(1)), timeout=120)),
            ]
            wait_for(queued(1), server, "the first v2 request computing and the second queued")
            calls += [("v2", v2.ModelInfer.future(infer_request("slow", slow_rows(1)), timeout=120))
                      for _ in range(V2_REQUESTS - 2)]
            wait_for(queued(V2_REQUESTS - 1), server, "every other v2 request queued")
            calls += [("caption", vision.Caption.future(pb.CaptionRequest(images=[image]), timeout=120))
                      for _ in range(CAPTIONS)]
            encoded = {"model": "tiny_caption", "version": "1"}  # each caption's encoder pass done: decoding
            wait_for(lambda text: metric(text, "nv_inference_count", **encoded) == CAPTIONS, server, "20 encoded")
            in_flight = {task: sum(not call.done() for t, call in calls if t == task) for task in ("caption", "v2")}
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            give_up = time.monotonic() + 60
            while "shutting down" not in server.log():
                assert time.monotonic() < give_up, "the server never began its drain"
                time.sleep(0.01)
            with pytest.raises(grpc.RpcError) as refused:
                vision.Classify(pb.ClassifyRequest(images=[image]), timeout=10)
            failures = [(task, error.code(), error.details()) for task, call in calls
                        if (error := call.exception(timeout=120)) is not None]
        assert len(calls) == CAPTIONS + V2_REQUESTS
        # Every caption mid-decode at SIGTERM; the v2 blocker may have finished on a busy machine, the
        # queued v2 requests behind it leave only together, as one batch.
        assert in_flight["caption"] == CAPTIONS and in_flight["v2"] >= V2_REQUESTS - 1, in_flight
        assert failures == []
        assert {call.result().results[0].text for task, call in calls if task == "caption"} == {"red square"}
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert server.process.wait(GRACE_S) == 0
        assert time.monotonic() - signalled < GRACE_S
    finally:
        server.stop(signum=signal.SIGKILL)
