"""The real server process on loopback: health, readiness, batching, limits, metrics, draining.

Requests go through the Open Inference Protocol's ModelInfer (plain tensors, so the core is
exercised without the task layer); the slow model keeps an instance busy for a good fraction
of a second, so "requests arrive while the instance is busy" holds without timing assertions.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from clients.server_process import ServerProcess, ServerProcessError
from protos.inference import grpc_service_pb2 as v2
from protos.inference import grpc_service_pb2_grpc as v2_grpc
from tests.protocols.repositories import write_tiny_classifier
from tests.serving.conftest import start_server
from tests.serving.core_models import doubler_graph, slow_graph, tensor_config, write_model

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SLOW_WIDTH = 1024


def infer_request(model: str, array: np.ndarray) -> v2.ModelInferRequest:
    tensor = v2.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=list(array.shape))
    return v2.ModelInferRequest(model_name=model, inputs=[tensor], raw_input_contents=[array.tobytes()])


def output(response: v2.ModelInferResponse) -> np.ndarray:
    return np.frombuffer(response.raw_output_contents[0], np.float32).reshape(tuple(response.outputs[0].shape))


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in a /metrics text (labels matched as a subset), None when absent."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line[len(name):line.rindex("}")]))
        if all(found.get(key) == value for key, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def wait_for_one_queued(server: ServerProcess, model: str) -> None:
    """Poll /metrics until `model` has exactly one request waiting (fails after a minute, never hangs)."""
    give_up = time.monotonic() + 60
    while metric(server.metrics(), "nv_inference_pending_request_count", model=model) != 1:
        assert time.monotonic() < give_up, f"no request of {model} ever waited in its queue"
        time.sleep(0.01)


def slow_rows(count: int) -> np.ndarray:
    return np.ones((count, SLOW_WIDTH), np.float32)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("repository")
    write_model(repo, "doubler", doubler_graph(), tensor_config(4))
    broken = write_model(repo, "broken", doubler_graph(), tensor_config(4))
    (broken / "1" / "model.onnx").write_bytes(b"this is not an ONNX file")
    write_tiny_classifier(repo, "classifier", 8)
    slow = slow_graph(SLOW_WIDTH)
    queue_of_one = "dynamic_batching { default_queue_policy { max_queue_size: 1 } }\n"
    write_model(repo, "slow_one", slow, tensor_config(SLOW_WIDTH, 8, queue_of_one))
    # Five times slower: a full batch must outlast a late request's deadline even on an idle machine.
    slower = slow_graph(SLOW_WIDTH, iterations=3000)
    write_model(repo, "slow_queue", slower, tensor_config(SLOW_WIDTH, 8, "dynamic_batching { }\n"))
    two_instances = "dynamic_batching { }\ninstance_group [ { kind: KIND_CPU count: 2 } ]\n"
    write_model(repo, "slow_two", slow, tensor_config(SLOW_WIDTH, 8, two_instances))
    return repo


@pytest.fixture(scope="module")
def server(repository: Path):  # type: ignore[no-untyped-def]
    # The broken model would keep a strict server NOT_SERVING (tests/deploy checks that); these tests
    # need the others serving beside it.
    running = start_server(repository, "--grace-seconds", "20", "--no-strict-readiness")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def stub(server: ServerProcess):  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(server.target) as channel:
        yield v2_grpc.GRPCInferenceServiceStub(channel)


def test_health_overall_and_per_task(server: ServerProcess) -> None:
    assert server.health("") == SERVING
    assert server.health("ninefold.v1.Vision/classify") == SERVING
    assert server.health("ninefold.v1.Vision/warp") == NOT_SERVING  # no model serves it


def test_reflection_lists_the_services(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {service.name for response in responses for service in response.list_services_response.service}
    assert {"grpc.health.v1.Health", "inference.GRPCInferenceService", "ninefold.v1.Vision"} <= names


def test_a_model_that_failed_to_load_is_unavailable_while_the_others_serve(
    server: ServerProcess, stub: v2_grpc.GRPCInferenceServiceStub
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelInfer(infer_request("broken", np.ones((1, 4), np.float32)), timeout=10)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "not ready" in raised.value.details() and "/" not in raised.value.details().split("not ready")[0]
    result = output(stub.ModelInfer(infer_request("doubler", np.ones((2, 4), np.float32)), timeout=10))
    np.testing.assert_array_equal(result, np.full((2, 4), 2.0, np.float32))
    text = server.metrics()
    assert metric(text, "ninefold_model_ready", model="broken") == 0.0
    assert metric(text, "ninefold_model_ready", model="doubler", task="") == 1.0


def test_a_model_exported_below_its_quality_bar_serves_with_a_warning_at_load(
    tmp_path: Path, server_factory: Callable[..., ServerProcess]
) -> None:
    stamp = 'parameters { key: "below_threshold" value { string_value: "top1 0.500 < 0.95" } }\n'
    write_model(tmp_path, "below", doubler_graph(), tensor_config(4, extra=stamp))
    write_model(tmp_path, "fine", doubler_graph(), tensor_config(4))
    server = server_factory(tmp_path)
    warnings = [line for line in server.log().splitlines() if "below its quality bar" in line]
    assert len(warnings) == 1 and "model below version 1" in warnings[0] and "top1 0.500 < 0.95" in warnings[0]
    assert "WARNING" in warnings[0]


def test_metrics_count_requests_batches_and_failures(
    server: ServerProcess, stub: v2_grpc.GRPCInferenceServiceStub
) -> None:
    before = metric(server.metrics(), "nv_inference_request_success", model="doubler", version="1") or 0.0
    for _ in range(3):
        stub.ModelInfer(infer_request("doubler", np.ones((2, 4), np.float32)), timeout=10)
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelInfer(infer_request("doubler", np.ones((2, 5), np.float32)), timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    text = server.metrics()
    assert metric(text, "nv_inference_request_success", model="doubler", version="1") == before + 3
    assert (metric(text, "nv_inference_request_failure", model="doubler", reason="invalid_argument") or 0) >= 1
    assert (metric(text, "nv_inference_count", model="doubler") or 0) >= 6
    assert (metric(text, "nv_inference_exec_count", model="doubler") or 0) >= 3
    for name in ("nv_inference_request_duration_us", "nv_inference_queue_duration_us",
                 "nv_inference_compute_infer_duration_us", "nv_inference_pending_request_count"):
        assert metric(text, name, model="doubler", version="1") is not None, name
    for name in ("ninefold_request_duration_seconds_count", "ninefold_queue_duration_seconds_count",
                 "ninefold_compute_duration_seconds_count", "ninefold_batch_size_count"):
        assert (metric(text, name, model="doubler", version="1", task="") or 0) >= 3, name
    assert "# TYPE nv_inference_request_success counter" in text
    assert "process_resident_memory_bytes" in text


def test_concurrent_requests_are_batched_across_two_cpu_instances(
    server: ServerProcess, stub: v2_grpc.GRPCInferenceServiceStub
) -> None:
    assert "model slow_two version 1 ready: 2 instance(s) on cpu" in server.log()
    calls = [stub.ModelInfer.future(infer_request("slow_two", slow_rows(1)), timeout=120) for _ in range(12)]
    assert all(output(call.result()).shape == (1, SLOW_WIDTH) for call in calls)
    text = server.metrics()
    assert metric(text, "nv_inference_count", model="slow_two") == 12
    executions = metric(text, "nv_inference_exec_count", model="slow_two")
    assert executions is not None and executions < 12  # some batches held more than one request
    assert (metric(text, "ninefold_batch_size_bucket", model="slow_two", le="1.0") or 0) < executions


def test_a_full_queue_answers_resource_exhausted_at_once(
    server: ServerProcess, stub: v2_grpc.GRPCInferenceServiceStub
) -> None:
    calls = [stub.ModelInfer.future(infer_request("slow_one", slow_rows(1)), timeout=120) for _ in range(6)]
    codes = []
    for call in calls:
        try:
            call.result()
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as error:
            codes.append(error.code())
            if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                assert "queue is full" in error.details()
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
    assert codes.count(grpc.StatusCode.OK) >= 2  # the running one and the queued one
    assert metric(server.metrics(), "nv_inference_request_failure", model="slow_one", reason="resource_exhausted")


def test_a_request_whose_deadline_passes_in_the_queue_is_never_computed(
    server: ServerProcess, stub: v2_grpc.GRPCInferenceServiceStub
) -> None:
    before = server.metrics()
    executions = metric(before, "nv_inference_exec_count", model="slow_queue") or 0.0
    dropped_before = sum(metric(before, "nv_inference_request_failure", model="slow_queue", reason=reason) or 0.0
                         for reason in ("deadline_exceeded", "cancelled"))
    busy = stub.ModelInfer.future(infer_request("slow_queue", slow_rows(8)), timeout=120)
    waiting = stub.ModelInfer.future(infer_request("slow_queue", slow_rows(8)), timeout=120)
    wait_for_one_queued(server, "slow_queue")  # one full batch computes, another waits: a late request joins neither
    with pytest.raises(grpc.RpcError) as raised:
        # 0.25 s: time to reach the server on a loaded machine (0.1 s once expired in the client, so the server
        # never saw the request), shorter than the full batch still waiting ahead of it (~0.4 s on an idle machine).
        stub.ModelInfer(infer_request("slow_queue", slow_rows(1)), timeout=0.25)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    busy.result()
    waiting.result()
    text = server.metrics()
    assert metric(text, "nv_inference_exec_count", model="slow_queue") == executions + 2
    dropped = sum(metric(text, "nv_inference_request_failure", model="slow_queue", reason=reason) or 0.0
                  for reason in ("deadline_exceeded", "cancelled"))
    assert dropped == dropped_before + 1


def test_a_deadline_passing_during_compute_counts_as_deadline_exceeded_a_client_cancel_as_cancelled(
    server: ServerProcess, stub: v2_grpc.GRPCInferenceServiceStub
) -> None:
    """gRPC cancels the handler in both cases; the metric's `reason` must still tell them apart."""

    def failures() -> tuple[float, float]:
        text = server.metrics()
        return tuple(  # type: ignore[return-value]
            metric(text, "nv_inference_request_failure", model="slow_queue", reason=reason) or 0.0
            for reason in ("deadline_exceeded", "cancelled")
        )

    expired_before, cancelled_before = failures()
    with pytest.raises(grpc.RpcError) as raised:  # a full batch computes far longer than 0.1 s
        stub.ModelInfer(infer_request("slow_queue", slow_rows(8)), timeout=0.1)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    busy = stub.ModelInfer.future(infer_request("slow_queue", slow_rows(8)), timeout=120)
    left = stub.ModelInfer.future(infer_request("slow_queue", slow_rows(1)))  # no deadline: only a cancel ends it
    wait_for_one_queued(server, "slow_queue")
    left.cancel()
    busy.result()
    give_up = time.monotonic() + 60
    while failures() != (expired_before + 1, cancelled_before + 1) and time.monotonic() < give_up:
        time.sleep(0.05)
    assert failures() == (expired_before + 1, cancelled_before + 1)


def test_sigterm_finishes_in_flight_work_refuses_new_work_and_exits_zero(repository: Path) -> None:
    server = start_server(repository, "--grace-seconds", "60", "--no-strict-readiness")
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = v2_grpc.GRPCInferenceServiceStub(channel)
            running = stub.ModelInfer.future(infer_request("slow_one", slow_rows(4)), timeout=120)
            queued = stub.ModelInfer.future(infer_request("slow_one", slow_rows(1)), timeout=120)
            wait_for_one_queued(server, "slow_one")  # one request computes, the other waits
            server.process.send_signal(signal.SIGTERM)
            assert output(running.result()).shape == (4, SLOW_WIDTH)
            assert output(queued.result()).shape == (1, SLOW_WIDTH)
        with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError) as raised:
            request = infer_request("doubler", np.ones((1, 4), np.float32))
            v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=5)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert server.process.wait(60) == 0
        assert "shutting down" in server.log()
    finally:
        server.stop(signum=signal.SIGKILL)


def test_a_taken_port_is_a_clear_error(server: ServerProcess, repository: Path) -> None:
    port = server.target.rsplit(":", 1)[1]
    with pytest.raises(ServerProcessError, match="cannot listen on 127.0.0.1:" + port):
        start_server(repository, "--port", port)


def test_model_statistics_and_metrics_agree(server: ServerProcess, stub: v2_grpc.GRPCInferenceServiceStub) -> None:
    for _ in range(2):
        stub.ModelInfer(infer_request("doubler", np.ones((3, 4), np.float32)), timeout=10)
    text = server.metrics()
    stats = stub.ModelStatistics(v2.ModelStatisticsRequest(name="doubler"), timeout=10).model_stats[0]
    assert stats.inference_stats.success.count == metric(text, "nv_inference_request_success", model="doubler")
    assert stats.inference_count == metric(text, "nv_inference_count", model="doubler")
    assert stats.execution_count == metric(text, "nv_inference_exec_count", model="doubler")
    assert stats.inference_stats.queue.ns // 1000 == metric(text, "nv_inference_queue_duration_us", model="doubler")


def test_sigterm_while_models_load_exits_zero(tmp_path: Path) -> None:
    write_model(tmp_path, "slow_warm_up", slow_graph(SLOW_WIDTH, iterations=10000), tensor_config(SLOW_WIDTH))
    server = start_server(tmp_path, wait_serving=False)
    try:
        assert server.health() == NOT_SERVING  # listening, the warm-up still running
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(60) == 0
        assert "shutting down" in server.log() and "ready in" not in server.log()
    finally:
        server.stop(signum=signal.SIGKILL)
