"""One bad request must not fail its neighbours (a real server, real ONNX Runtime sessions).

Inputs a model's config says it cannot take (`input_ranges`) are refused before batching with
INVALID_ARGUMENT naming the tensor; a request that still makes the runtime fail a batch is found by
running the batch again in halves, and only it fails (reason "rejected_input" in the metrics).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import Future

import grpc
import numpy as np
import pytest

from clients.server_process import ServerProcess
from protos.inference import grpc_service_pb2 as v2
from protos.inference import grpc_service_pb2_grpc as v2_grpc
from tests.serving.conftest import start_server
from tests.serving.core_models import lookup_graph, slow_graph, write_model
from tests.serving.test_server import metric
from tests.serving.tiny_repository import write_tiny_repository

WIDTH = 256
LOOKUP_ROWS = 4
BATCH = 16
POISON = 10**9


def slow_lookup_graph():  # type: ignore[no-untyped-def]
    """x FP32 [B, WIDTH] -> y (slow: keeps the instance busy while a batch queues), and token INT64 [B, 1]
    -> v = table[token] (ONNX Runtime fails the whole batch on a token outside 0..LOOKUP_ROWS-1)."""
    graph = slow_graph(WIDTH, iterations=20_000)
    lookup = lookup_graph(LOOKUP_ROWS, 2)
    lookup.output[0].name = "v"
    lookup.node[-1].output[0] = "v"
    graph.node.extend(lookup.node)
    graph.input.extend(lookup.input)
    graph.output.extend(lookup.output)
    graph.initializer.extend(lookup.initializer)
    return graph


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repository = write_tiny_repository(tmp_path_factory.mktemp("blast") / "repository")
    config = (
        f"max_batch_size: {BATCH}\n"
        f'input [ {{ name: "x" data_type: TYPE_FP32 dims: [ {WIDTH} ] }}, '
        '{ name: "token" data_type: TYPE_INT64 dims: [ 1 ] } ]\n'
        f'output [ {{ name: "y" data_type: TYPE_FP32 dims: [ {WIDTH} ] }}, '
        '{ name: "v" data_type: TYPE_FP32 dims: [ 2 ] } ]\n'
        "dynamic_batching { }\n"
        f'parameters {{ key: "input_ranges" value {{ string_value: {json.dumps(json.dumps({"x": [-10, 10]}))} }} }}\n'
    )
    write_model(repository, "lookup", slow_lookup_graph(), config)
    running = start_server(repository)
    yield running
    assert running.stop() == 0


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[v2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield v2_grpc.GRPCInferenceServiceStub(channel)


def request(model: str, **arrays: np.ndarray) -> v2.ModelInferRequest:
    datatypes = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}
    inputs = [
        v2.ModelInferRequest.InferInputTensor(name=name, datatype=datatypes[array.dtype], shape=list(array.shape))
        for name, array in arrays.items()
    ]
    return v2.ModelInferRequest(
        model_name=model, inputs=inputs, raw_input_contents=[array.tobytes() for array in arrays.values()]
    )


def lookup_request(token: int, rows: int = 1, x: float = 0.0) -> v2.ModelInferRequest:
    return request("lookup", x=np.full((rows, WIDTH), x, np.float32), token=np.full((rows, 1), token, np.int64))


def wait_until_queued(server: ServerProcess, model: str, count: int) -> None:
    give_up = time.monotonic() + 60
    while metric(server.metrics(), "nv_inference_pending_request_count", model=model) != count:
        assert time.monotonic() < give_up, f"{count} requests of {model} never waited in its queue together"
        time.sleep(0.01)


def code_of(call: Future) -> grpc.StatusCode:
    error = call.exception(timeout=120)
    return grpc.StatusCode.OK if error is None else error.code()


def test_a_token_outside_the_vocabulary_is_refused_before_batching(
    server: ServerProcess, stub: v2_grpc.GRPCInferenceServiceStub
) -> None:
    state = np.zeros((1, 2), np.float32)
    bad = request("tiny_caption_decoder", token=np.array([[POISON]], np.int64), h=state, c=state)
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelInfer(bad, timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'token'" in raised.value.details() and "[0, 3]" in raised.value.details()
    good = request("tiny_caption_decoder", token=np.array([[0]], np.int64), h=state, c=state)
    assert stub.ModelInfer(good, timeout=10).outputs[0].name == "logprobs"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e38])
def test_values_outside_the_configured_range_name_the_tensor(
    stub: v2_grpc.GRPCInferenceServiceStub, value: float
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelInfer(lookup_request(0, x=value), timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'x' of model 'lookup'" in raised.value.details()


def test_one_poisoned_request_among_fifteen_fails_alone(
    server: ServerProcess, stub: v2_grpc.GRPCInferenceServiceStub
) -> None:
    labels = {"model": "lookup", "version": "1"}
    text = server.metrics()
    before = {reason: metric(text, "nv_inference_request_failure", reason=reason, **labels) or 0.0
              for reason in ("rejected_input", "backend")}
    busy = stub.ModelInfer.future(lookup_request(0, rows=BATCH), timeout=120)
    tokens = [POISON if index == 9 else index % LOOKUP_ROWS for index in range(BATCH)]
    calls = [stub.ModelInfer.future(lookup_request(tokens[0]), timeout=120)]
    wait_until_queued(server, "lookup", 1)  # the busy request computes, the first of the sixteen waits
    calls += [stub.ModelInfer.future(lookup_request(token), timeout=120) for token in tokens[1:]]
    wait_until_queued(server, "lookup", BATCH)  # all sixteen wait for the busy instance: one batch
    codes = [code_of(call) for call in calls]
    assert code_of(busy) == grpc.StatusCode.OK
    assert codes == [grpc.StatusCode.INVALID_ARGUMENT if token == POISON else grpc.StatusCode.OK for token in tokens]
    assert "requests batched with it succeeded" in calls[9].exception().details()
    answers = [np.frombuffer(call.result().raw_output_contents[1], np.float32)[0] for call in calls[:9] + calls[10:]]
    assert answers == [float(token) for token in tokens if token != POISON]
    text = server.metrics()
    after = {reason: metric(text, "nv_inference_request_failure", reason=reason, **labels) or 0.0 for reason in before}
    assert after == {"rejected_input": before["rejected_input"] + 1, "backend": before["backend"]}
