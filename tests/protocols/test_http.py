"""The Open Inference Protocol over HTTP/REST on the tiny repository, driven by the real tritonclient.http
(binary tensors and JSON tensors) and by curl, and compared with the same requests over gRPC."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from clients.server_process import ServerProcess
from serving.api.http_infer import HEADER_LENGTH
from tests.protocols.conftest import TritonRunner, curl
from tests.protocols.repositories import CLASSIFIER_LABELS, tiny_classifier_logits
from tests.protocols.test_v2_server import ALL_MODELS, BATCH, inputs_for, ok, png
from tests.serving.tiny_repository import SIZE

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


@pytest.fixture(scope="module")
def http(v2_server: ServerProcess) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(v2_server.http_target, network_timeout=60)
    yield client
    client.close()


def _infer(
    http: httpclient.InferenceServerClient, model: str, arrays: dict[str, np.ndarray], binary: bool
) -> dict[str, np.ndarray]:
    inputs = []
    for name, array in arrays.items():
        tensor = httpclient.InferInput(name, list(array.shape), _datatype(array))
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    metadata = http.get_model_metadata(model)
    outputs = [httpclient.InferRequestedOutput(t["name"], binary_data=binary) for t in metadata["outputs"]]
    result = http.infer(model, inputs, outputs=outputs)
    return {t["name"]: result.as_numpy(t["name"]) for t in metadata["outputs"]}


def _datatype(array: np.ndarray) -> str:
    return {np.dtype(np.float32): "FP32", np.dtype(np.int32): "INT32", np.dtype(np.int64): "INT64"}[array.dtype]


def _json_body(arrays: dict[str, np.ndarray]) -> bytes:
    inputs = [{"name": name, "datatype": _datatype(array), "shape": list(array.shape), "data": array.tolist()}
              for name, array in arrays.items()]
    return json.dumps({"id": "curl", "inputs": inputs}).encode()


def test_health_metadata_config_statistics_and_index(http: httpclient.InferenceServerClient) -> None:
    assert http.is_server_live() and http.is_server_ready()
    assert http.is_model_ready("simple") and not http.is_model_ready("no_such_model")
    server = http.get_server_metadata()
    assert server["name"] == "ninefold"
    assert {"system_shared_memory", "binary_tensor_data", "model_repository"} <= set(server["extensions"])
    classify = http.get_model_metadata("tiny_classify")
    assert classify["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 3, SIZE, SIZE]}]
    assert http.get_model_metadata("simple", "1")["versions"] == ["1"]
    config = http.get_model_config("tiny_classify")
    assert config["parameters"]["task"]["string_value"] == "classify" and config["max_batch_size"] > 0
    assert config["output"][0]["label_filename"] == "labels.txt"
    assert sorted(entry["name"] for entry in http.get_model_repository_index()) == sorted(ALL_MODELS)
    statistics = http.get_inference_statistics("simple")["model_stats"]
    assert [(s["name"], s["version"]) for s in statistics] == [("simple", "1")]
    assert isinstance(statistics[0]["inference_stats"]["success"]["count"], int)


def test_every_model_answers_alike_over_http_binary_json_curl_and_grpc(
    http: httpclient.InferenceServerClient, triton: TritonRunner, v2_server: ServerProcess
) -> None:
    rng = np.random.default_rng(11)
    requests = {name: inputs_for(http.get_model_metadata(name), rng) for name in ALL_MODELS}
    grpc = triton.run(
        [{"op": "infer", "model": name, "inputs": [{"name": key, "datatype": _datatype(array), "array": f"{name}.{key}"}
                                                   for key, array in arrays.items()]}
         for name, arrays in requests.items()],
        {f"{name}.{key}": array for name, arrays in requests.items() for key, array in arrays.items()},
    )
    for index, (name, arrays) in enumerate(requests.items()):
        ok(grpc.steps[index])
        binary, as_json = _infer(http, name, arrays, binary=True), _infer(http, name, arrays, binary=False)
        answer = curl(f"http://{v2_server.http_target}/v2/models/{name}/infer", _json_body(arrays))
        assert answer.status == 200, answer.body
        document = answer.json()
        assert document["model_name"] == name and document["id"] == "curl"
        for output in document["outputs"]:
            expected = grpc.outputs[f"{index}/{output['name']}"]
            assert output["shape"] == list(expected.shape) and output["shape"][0] == BATCH
            np.testing.assert_array_equal(binary[output["name"]], expected)
            np.testing.assert_array_equal(as_json[output["name"]], expected)
            np.testing.assert_array_equal(np.array(output["data"], expected.dtype).reshape(expected.shape), expected)
        assert {o["name"] for o in document["outputs"]} == set(binary)
    simple = requests["simple"]
    np.testing.assert_array_equal(grpc.outputs["0/OUTPUT0"], simple["INPUT0"] + simple["INPUT1"])


def test_classification_and_encoded_images_over_http(http: httpclient.InferenceServerClient) -> None:
    images = np.random.default_rng(3).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    tensor = httpclient.InferInput("images", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images, binary_data=False)
    top = http.infer("tiny_classify", [tensor], outputs=[
        httpclient.InferRequestedOutput("logits", binary_data=False, class_count=1)]).as_numpy("logits")
    best = np.argmax(tiny_classifier_logits(images), axis=1)  # JSON BYTES arrive as str, binary ones as bytes
    assert [s.split(":", 1)[1] for s in top[:, 0]] == [f"{i}:{CLASSIFIER_LABELS[i]}" for i in best]
    encoded = np.array([png((255, 0, 0)), png((0, 0, 255), (9, 30))], dtype=object)
    tensor = httpclient.InferInput("images", [2], "BYTES")
    tensor.set_data_from_numpy(encoded)
    top = http.infer("tiny_classify", [tensor], outputs=[
        httpclient.InferRequestedOutput("logits", class_count=1)]).as_numpy("logits")
    assert [s.decode().split(":", 1)[1] for s in top[:, 0]] == ["0:circle", "2:triangle"]


def test_errors_are_oip_json_with_the_tables_status(v2_server: ServerProcess) -> None:
    base = f"http://{v2_server.http_target}/v2"
    ints = np.zeros((1, 16), np.int32)
    header = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 16],
                                     "parameters": {"binary_data_size": 64}}]}).encode()
    cases = [
        (curl(f"{base}/models/no_such_model"), 404, "no_such_model"),
        (curl(f"{base}/models/simple/versions/x/ready"), 400, "not a positive integer"),
        (curl(f"{base}/models/simple/infer", b"{not json"), 400, "not valid JSON"),
        (curl(f"{base}/models/simple/infer", _json_body({"INPUT0": ints})), 400, "takes inputs"),
        (curl(f"{base}/models/simple/infer", _json_body({"INPUT0": ints, "INPUT1": np.zeros((1, 15), np.int32)})),
         400, r"shape [1, 15] does not match"),
        (curl(f"{base}/models/tiny_classify/infer", json.dumps({"inputs": [
            {"name": "images", "datatype": "BYTES", "shape": [1], "data": [7]}]}).encode()), 400, "must be strings"),
        (curl(f"{base}/models/simple/infer", header + b"\0" * 10, {HEADER_LENGTH: str(len(header))}),
         400, "binary_data_size 64 exceeds the 10 bytes left"),
        (curl(f"{base}/repository/models/simple/unload", b"{}"), 401, "model control is disabled"),
        (curl(f"{base}/cudasharedmemory/status"), 501, "CUDA shared memory is not supported"),
        (curl(f"{base}/no/such/route"), 404, "Not Found"),
    ]
    for answer, status, message in cases:
        assert answer.status == status, answer.body
        assert message in answer.json()["error"]
    assert curl(f"{base}/models/simple/ready").status == 200


def test_tritonclient_http_sees_errors_as_exceptions(http: httpclient.InferenceServerClient) -> None:
    tensor = httpclient.InferInput("images", [1, 3, 4, 4], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 3, 4, 4), np.float32))
    with pytest.raises(InferenceServerException, match=r"shape \[1, 3, 4, 4\] does not match"):
        http.infer("tiny_classify", [tensor])
    assert http.is_server_ready()
