"""clients.v2 (the request builder for load generators) against a real server."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from clients.server_process import ServerProcess
from clients.v2 import Output, infer_call, infer_request, response_arrays
from protos.inference import grpc_service_pb2 as pb
from tests.protocols.repositories import CLASSIFIER_LABELS, tiny_classifier_logits
from tests.serving.tiny_repository import SIZE


def _send(target: str, *requests: pb.ModelInferRequest) -> list[pb.ModelInferResponse]:
    async def run() -> list[pb.ModelInferResponse]:
        async with grpc.aio.insecure_channel(target) as channel:
            return await asyncio.gather(*(infer_call(channel, r, timeout_s=30)() for r in requests))

    return asyncio.run(run())


def test_builder_round_trips_tensors_and_classification(v2_server: ServerProcess) -> None:
    images = np.random.default_rng(11).standard_normal((5, 3, SIZE, SIZE)).astype(np.float32)
    plain = infer_request("tiny_classify", {"images": images}, request_id="plain")
    top1 = infer_request("tiny_classify", {"images": images}, outputs=[Output("logits", classification=1)])
    plain_answer, top1_answer = _send(v2_server.target, plain, top1)
    assert plain_answer.id == "plain" and plain_answer.model_name == "tiny_classify"
    logits = tiny_classifier_logits(images)
    np.testing.assert_allclose(response_arrays(plain_answer)["logits"], logits, atol=1e-5)
    strings = response_arrays(top1_answer)["logits"]
    assert strings.shape == (5, 1)
    assert [s.decode().split(":", 1)[1] for s in strings[:, 0]] == [
        f"{i}:{CLASSIFIER_LABELS[i]}" for i in logits.argmax(axis=1)
    ]


def test_an_output_requested_twice_is_refused(v2_server: ServerProcess) -> None:
    images = np.zeros((1, 3, SIZE, SIZE), np.float32)
    twice = infer_request("tiny_classify", {"images": images}, outputs=[Output("logits"), Output("logits")])
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        _send(v2_server.target, twice)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "requested twice" in failure.value.details()
