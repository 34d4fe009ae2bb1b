"""Hostile Open Inference Protocol traffic against a real server: bytes that are not a protobuf message,
a bad message inside a stream, odd versions and shapes, a model on disk that is not loaded, a client that
leaves a stream. Raw gRPC (identity serialisers) so the server, not a client library, sees the bytes."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.server_process import ServerProcess, free_ports
from clients.v2 import infer_request
from protos.inference import grpc_service_pb2 as pb
from serving.api import available_adapters
from serving.config import load_config
from serving.server import serve
from tests.protocols.repositories import write_plain_triton_model

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"
GARBAGE = (b"\xff\xff\xff", b"\x0a\x05ab", b"\x12\xff\xff\xff\xff\x0f", b"\x80")
ONES = np.ones((1, 16), np.int32)


def simple_request(request_id: str = "", version: str = "", rows: int = 1) -> pb.ModelInferRequest:
    inputs = {"INPUT0": np.ones((rows, 16), np.int32), "INPUT1": np.ones((rows, 16), np.int32)}
    return infer_request("simple", inputs, version=version, request_id=request_id)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("bad_messages")
    write_plain_triton_model(repository)
    return repository


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess.start(repository, log=tmp_path_factory.mktemp("server") / "server.log") as running:
        yield running


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.target) as opened:
        yield opened


def _refusal(call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call()  # type: ignore[operator]
    return raised.value


def test_undecodable_messages_are_invalid_argument_with_one_log_line(
    server: ServerProcess, channel: grpc.Channel
) -> None:
    infer = channel.unary_unary(MODEL_INFER)
    classify = channel.unary_unary("/ninefold.v1.Vision/Classify")
    for method in (infer, classify):
        for garbage in GARBAGE * 5:
            error = _refusal(lambda: method(garbage, timeout=10))  # noqa: B023 - called at once
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
            assert "could not be decoded" in str(error.details())
    answer = pb.ModelInferResponse.FromString(infer(simple_request().SerializeToString(), timeout=10))
    assert answer.model_name == "simple"  # still serving
    log = server.log()
    assert "Traceback" not in log and "Unexpected" not in log
    assert log.count("undecodable request message") == 1, log


def test_an_undecodable_stream_message_fails_only_itself(channel: grpc.Channel) -> None:
    stream = channel.stream_stream(STREAM_INFER)
    messages = [simple_request("first").SerializeToString(), b"\xff\xff", simple_request("last").SerializeToString()]
    answers = [pb.ModelStreamInferResponse.FromString(raw) for raw in stream(iter(messages), timeout=10)]
    assert len(answers) == 3
    assert sorted(a.infer_response.id for a in answers if not a.error_message) == ["first", "last"]
    failed = [a.error_message for a in answers if a.error_message]
    assert len(failed) == 1 and "could not be decoded" in failed[0]


def test_a_version_must_be_ascii_digits(channel: grpc.Channel) -> None:
    infer = channel.unary_unary(MODEL_INFER)
    for version in ("\u0661", "\uff11", "1\u0660"):  # Arabic-Indic one, fullwidth one, "10" half Arabic-Indic
        error = _refusal(lambda: infer(simple_request(version=version).SerializeToString(), timeout=10))  # noqa: B023
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "is not a positive integer" in str(error.details())


def test_an_empty_batch_is_refused_naming_the_tensor(channel: grpc.Channel) -> None:
    infer = channel.unary_unary(MODEL_INFER)
    error = _refusal(lambda: infer(simple_request(rows=0).SerializeToString(), timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'INPUT0'" in str(error.details()) and "batch size 0" in str(error.details())


def test_a_model_on_disk_but_not_loaded_is_unavailable_an_unknown_one_not_found(
    repository: Path, channel: grpc.Channel
) -> None:
    write_plain_triton_model(repository, "added_later")  # the server loaded the repository before it existed
    infer = channel.unary_unary(MODEL_INFER)
    request = simple_request()
    for name, code, words in (("added_later", grpc.StatusCode.UNAVAILABLE, "not loaded"),
                              ("never_there", grpc.StatusCode.NOT_FOUND, "not in the repository")):
        request.model_name = name
        error = _refusal(lambda: infer(request.SerializeToString(), timeout=10))  # noqa: B023
        assert error.code() == code and words in str(error.details()), error


def test_a_client_leaving_a_stream_leaves_no_pending_task(repository: Path, caplog: pytest.LogCaptureFixture) -> None:
    """In process, so that a garbage collection can run after the disconnect: a task the stream left
    pending is logged "Task was destroyed but it is pending!" when collected."""
    port, metrics_port = free_ports(2)
    hooks = [adapter.add_arguments for adapter in available_adapters() if hasattr(adapter, "add_arguments")]
    config = load_config(["--model-repository", str(repository), "--port", str(port),
                          "--metrics-port", str(metrics_port), "--event-loop", "asyncio"], {}, hooks)

    async def scenario() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(serve(config, stop))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as client:
            health = health_pb2_grpc.HealthStub(client)
            while (await health.Check(health_pb2.HealthCheckRequest(), wait_for_ready=True)).status != 1:
                await asyncio.sleep(0.05)
            for _ in range(3):
                call = client.stream_stream(STREAM_INFER)()
                await call.write(simple_request("once").SerializeToString())
                await call.read()
                call.cancel()  # the stream stays open on the server, waiting for more, when the client leaves
            await asyncio.sleep(0.5)
            gc.collect()
            await asyncio.sleep(0.1)
        stop.set()
        assert await running == 0

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        asyncio.run(scenario())
    assert not [r for r in caplog.records if "destroyed but it is pending" in r.getMessage()], caplog.text
