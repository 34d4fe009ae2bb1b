"""Every transport counts each request once, on the model it names: a success as a success, a failure under
its reason (serving.models.served.ServedModel.request is the one place that counts)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TypeVar

import grpc
import numpy as np

from clients.server_process import ServerProcess
from protos.inference import grpc_service_pb2 as v2
from protos.inference import grpc_service_pb2_grpc as v2_grpc
from protos.ninefold.v1 import vision_pb2 as pb
from protos.ninefold.v1 import vision_pb2_grpc
from tests.protocols.conftest import CurlAnswer, curl
from tests.protocols.test_v2_server import _scrape, png
from tests.serving.test_vision_tiny import rpc_error

Counts = dict[str, float]
T = TypeVar("T")


def counts(server: ServerProcess, model: str) -> Counts:
    """Successes and failures by reason of `model` version 1, from /metrics."""
    found: Counts = {}
    for name, labels, value in _scrape(server):
        if labels.get("model") == model and labels.get("version") == "1":
            if name == "nv_inference_request_success":
                found["success"] = value
            elif name == "nv_inference_request_failure":
                found[labels["reason"]] = value
    return found


def change(server: ServerProcess, model: str, send: Callable[[], T]) -> tuple[Counts, T]:
    """What `send()` added to `model`'s request counts (zero changes left out), and what it returned."""
    before = counts(server, model)
    answer = send()
    after = counts(server, model)
    return {key: after[key] - before.get(key, 0.0) for key in after if after[key] != before.get(key, 0.0)}, answer


def simple_request(model: str, rows: int, columns: int = 16) -> v2.ModelInferRequest:
    """A ModelInfer request for Triton's "simple" model (INT32 [rows, columns] twice)."""
    request = v2.ModelInferRequest(model_name=model)
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="INT32", shape=[rows, columns])
        request.raw_input_contents.append(np.ones((rows, columns), np.int32).tobytes())
    return request


def test_the_task_api_counts_a_success_and_a_failure_once_each(v2_server: ServerProcess) -> None:
    with grpc.insecure_channel(v2_server.target) as channel:
        vision = vision_pb2_grpc.VisionStub(channel)
        good = pb.WarpRequest(images=[pb.Image(encoded=png((10, 200, 30)))])
        assert change(v2_server, "tiny_warp", lambda: vision.Warp(good, timeout=30))[0] == {"success": 1}
        junk = pb.WarpRequest(images=[pb.Image(encoded=b"not an image")])
        counted, error = change(v2_server, "tiny_warp", lambda: rpc_error(vision.Warp, junk))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and counted == {"invalid_argument": 1}


def test_v2_grpc_counts_a_success_and_a_failure_once_each(v2_server: ServerProcess) -> None:
    with grpc.insecure_channel(v2_server.target) as channel:
        infer = v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        good = simple_request("simple", 2)
        assert change(v2_server, "simple", lambda: infer(good, timeout=30))[0] == {"success": 1}
        wrong_shape = simple_request("simple", 2, columns=15)
        counted, error = change(v2_server, "simple", lambda: rpc_error(infer, wrong_shape))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and counted == {"invalid_argument": 1}


def test_v2_http_counts_a_success_and_a_failure_once_each(v2_server: ServerProcess) -> None:
    url = f"http://{v2_server.http_target}/v2/models/simple_unlisted/infer"

    def post(datatype: str) -> CurlAnswer:
        tensor = {"datatype": datatype, "shape": [1, 16], "data": [1] * 16}
        body = json.dumps({"inputs": [{"name": name, **tensor} for name in ("INPUT0", "INPUT1")]}).encode()
        return curl(url, body, {"Content-Type": "application/json"})

    counted, answer = change(v2_server, "simple_unlisted", lambda: post("INT32"))
    assert answer.status == 200 and counted == {"success": 1}
    counted, answer = change(v2_server, "simple_unlisted", lambda: post("FP32"))  # the model takes INT32
    assert answer.status == 400 and counted == {"invalid_argument": 1}
