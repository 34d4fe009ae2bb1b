"""What tritonclient never sends, checked with ninefold's own generated stubs: typed `contents`,
mixed raw/typed payloads, shared-memory parameters, the RPCs left UNIMPLEMENTED."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest

from clients.server_process import ServerProcess
from contract.v2_codec import encode_raw
from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc as pb_grpc
from serving.api.inference import STREAM_IN_FLIGHT
from tests.protocols.repositories import tiny_classifier_logits
from tests.serving.tiny_repository import SIZE

TIMEOUT_S = 30


@pytest.fixture
def stub(v2_server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(v2_server.target) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def _images_request(images: np.ndarray) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="tiny_classify", id="typed")
    request.inputs.add(name="images", datatype="FP32", shape=images.shape)
    return request


def _array(response: pb.ModelInferResponse) -> np.ndarray:
    (output,) = response.outputs
    return np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(tuple(output.shape))


def test_typed_contents_give_the_same_answer_as_raw(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    images = np.random.default_rng(1).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    typed = _images_request(images)
    typed.inputs[0].contents.fp32_contents.extend(images.reshape(-1).tolist())
    raw = _images_request(images)
    raw.raw_input_contents.append(encode_raw(images, "FP32"))
    typed_answer = stub.ModelInfer(typed, timeout=TIMEOUT_S)
    assert typed_answer.id == "typed" and typed_answer.model_version == "1"
    np.testing.assert_allclose(_array(typed_answer), tiny_classifier_logits(images), atol=1e-5)
    np.testing.assert_array_equal(_array(typed_answer), _array(stub.ModelInfer(raw, timeout=TIMEOUT_S)))


def _classification(parameter: pb.InferParameter) -> Callable[[pb.ModelInferRequest], object]:
    return lambda request: request.outputs.add(name="logits", parameters={"classification": parameter})


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.inputs[0].contents.fp32_contents.append(1.0), "either raw_input_contents or contents"),
        (lambda r: r.raw_input_contents.append(b""), "2 raw_input_contents for 1 inputs"),
        (lambda r: r.inputs[0].parameters["shared_memory_region"].CopyFrom(pb.InferParameter(string_param="r")),
         "shared_memory_region needs shared_memory_byte_size"),
        (_classification(pb.InferParameter(int64_param=0)), "classification count must be at least 1, got 0"),
        (_classification(pb.InferParameter(string_param="3")), "must be an integer parameter, got string_param"),
    ],
)
def test_malformed_payloads_are_invalid_arguments(stub: pb_grpc.GRPCInferenceServiceStub, mutate, message: str) -> None:
    images = np.zeros((1, 3, SIZE, SIZE), np.float32)
    request = _images_request(images)
    request.raw_input_contents.append(encode_raw(images, "FP32"))
    mutate(request)
    with pytest.raises(grpc.RpcError) as failure:
        stub.ModelInfer(request, timeout=TIMEOUT_S)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in failure.value.details()


def test_rpcs_ninefold_does_not_serve_are_unimplemented(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as failure:
        stub.CudaSharedMemoryStatus(pb.CudaSharedMemoryStatusRequest(), timeout=TIMEOUT_S)
    assert failure.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "use system shared memory" in failure.value.details()


def test_a_stream_longer_than_the_in_flight_window_is_answered_whole(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    """Reading pauses at STREAM_IN_FLIGHT unsent answers and resumes as they are sent: no deadlock, none lost."""
    images = np.random.default_rng(2).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
    count = 2 * STREAM_IN_FLIGHT + 5
    requests = []
    for index in range(count):
        request = _images_request(images)
        request.id = f"r{index}"
        request.raw_input_contents.append(encode_raw(images, "FP32"))
        requests.append(request)
    answers = list(stub.ModelStreamInfer(iter(requests), timeout=120))
    assert sorted(a.infer_response.id for a in answers) == sorted(r.id for r in requests)
    assert not any(a.error_message for a in answers)
    expected = tiny_classifier_logits(images)
    for answer in answers[:3]:
        np.testing.assert_allclose(_array(answer.infer_response), expected, atol=1e-5)
