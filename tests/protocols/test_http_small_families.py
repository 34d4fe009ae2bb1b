"""OIP HTTP/REST on the nine trained small families (tests/conftest.py `small_repository`): every model
through tritonclient.http with binary tensors and with JSON tensors, and through curl with JSON, all
agreeing with the same request over gRPC (tritonclient.grpc)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from clients.server_process import ServerProcess
from contract.v2_codec import datatype_of
from tests.protocols.conftest import TritonRunner, curl
from tests.protocols.test_v2_server import inputs_for, ok

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")]


@pytest.fixture(scope="module")
def small_server(small_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess.start(small_repository, log=tmp_path_factory.mktemp("http_small") / "server.log") as server:
        yield server


def _http_infer(client: httpclient.InferenceServerClient, model: str, arrays: dict[str, np.ndarray],
                outputs: list[str], binary: bool) -> dict[str, np.ndarray]:
    tensors = []
    for name, array in arrays.items():
        tensor = httpclient.InferInput(name, list(array.shape), datatype_of(array))
        tensor.set_data_from_numpy(array, binary_data=binary)
        tensors.append(tensor)
    requested = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in outputs]
    result = client.infer(model, tensors, outputs=requested)
    return {name: result.as_numpy(name) for name in outputs}


def test_every_small_family_model_serves_oip_http(small_server: ServerProcess, tmp_path: Path) -> None:
    client = httpclient.InferenceServerClient(small_server.http_target, network_timeout=120)
    names = sorted(entry["name"] for entry in client.get_model_repository_index())
    assert len(names) >= 8 and all(client.is_model_ready(name) for name in names)
    rng = np.random.default_rng(5)
    metadata = {name: client.get_model_metadata(name) for name in names}
    requests = {name: inputs_for(metadata[name], rng) for name in names}
    grpc = TritonRunner(small_server.target, tmp_path).run(
        [{"op": "infer", "model": name, "inputs": [
            {"name": key, "datatype": datatype_of(array), "array": f"{name}.{key}"}
            for key, array in arrays.items()]} for name, arrays in requests.items()],
        {f"{name}.{key}": array for name, arrays in requests.items() for key, array in arrays.items()},
    )
    for index, name in enumerate(names):
        ok(grpc.steps[index])
        outputs = [t["name"] for t in metadata[name]["outputs"]]
        binary = _http_infer(client, name, requests[name], outputs, binary=True)
        as_json = _http_infer(client, name, requests[name], outputs, binary=False)
        body = json.dumps({"inputs": [
            {"name": key, "datatype": datatype_of(a), "shape": list(a.shape), "data": a.tolist()}
            for key, a in requests[name].items()]}).encode()
        answer = curl(f"http://{small_server.http_target}/v2/models/{name}/infer", body)
        assert answer.status == 200, answer.body
        by_curl = {o["name"]: o for o in answer.json()["outputs"]}
        assert set(by_curl) == set(outputs), name
        for output in outputs:
            expected = grpc.outputs[f"{index}/{output}"]
            from_curl = np.array(by_curl[output]["data"], expected.dtype).reshape(by_curl[output]["shape"])
            for got in (binary[output], as_json[output], from_curl):
                assert got.shape == expected.shape, (name, output)
                np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=f"{name}/{output}")
    client.close()
