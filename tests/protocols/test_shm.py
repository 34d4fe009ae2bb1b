"""System shared memory (Triton's extension) through the real tritonclient.utils.shared_memory, on gRPC
(tritonclient.grpc, in the runner process) and HTTP (tritonclient.http): one registry for both,
inputs read from and outputs written to the regions, every window checked, keys kept inside /dev/shm."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from clients.server_process import ServerProcess
from tests.protocols.conftest import TritonRunner
from tests.protocols.repositories import tiny_classifier_logits
from tests.serving.tiny_repository import SIZE

pytestmark = pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm")
ROW = 16 * 4  # one INT32 [1, 16] tensor of the "simple" model


@pytest.fixture
def regions(v2_server: ServerProcess) -> Iterator[Any]:
    """`regions(name, size)` creates a /dev/shm object (unique key); all are unregistered and destroyed after."""
    made: list[tuple[str, Any]] = []

    def create(name: str, size: int) -> tuple[str, Any]:
        key = f"/ninefold_test_{uuid.uuid4().hex[:12]}"
        made.append((name, shm.create_shared_memory_region(name, key, size)))
        return key, made[-1][1]

    yield create
    client = httpclient.InferenceServerClient(v2_server.http_target)
    client.unregister_system_shared_memory()
    client.close()
    for _, handle in made:
        shm.destroy_shared_memory_region(handle)


@pytest.fixture
def http(v2_server: ServerProcess) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(v2_server.http_target, network_timeout=60)
    yield client
    client.close()


def _simple_inputs(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return tuple(rng.integers(-1000, 1000, size=(1, 16)).astype(np.int32) for _ in range(2))  # type: ignore[return-value]


def test_grpc_reads_inputs_from_and_writes_outputs_to_regions(triton: TritonRunner, regions: Any,
                                                               http: httpclient.InferenceServerClient) -> None:
    a, b = _simple_inputs(1)
    in_key, inputs = regions("grpc_in", 2 * ROW)
    out_key, outputs = regions("grpc_out", 2 * ROW + 8)
    shm.set_shared_memory_region(inputs, [a, b])
    tensor = {"datatype": "INT32", "shape": [1, 16]}
    result = triton.run([
        {"op": "shm_register", "name": "grpc_in", "key": in_key, "byte_size": 2 * ROW},
        {"op": "shm_register", "name": "grpc_out", "key": out_key, "byte_size": 2 * ROW, "offset": 8},
        {"op": "shm_status", "name": "grpc_out"},
        {"op": "infer", "model": "simple", "inputs": [
            {"name": "INPUT0", **tensor, "shm": {"region": "grpc_in", "byte_size": ROW}},
            {"name": "INPUT1", **tensor, "shm": {"region": "grpc_in", "byte_size": ROW, "offset": ROW}}],
         "outputs": [{"name": "OUTPUT0", "shm": {"region": "grpc_out", "byte_size": ROW, "offset": ROW}},
                     {"name": "OUTPUT1"}]},
    ])
    assert all(step["ok"] for step in result.steps), result.steps
    status = result.steps[2]["value"]["regions"]["grpc_out"]
    assert (status["key"], int(status["offset"]), int(status["byte_size"])) == (out_key, 8, 2 * ROW)
    answer = result.steps[3]["value"]["outputs"]
    assert answer[0]["parameters"]["shared_memory_region"] == {"stringParam": "grpc_out"}
    # the region starts 8 bytes into the object; OUTPUT0 was asked for at offset ROW within the region
    np.testing.assert_array_equal(shm.get_contents_as_numpy(outputs, np.int32, [1, 16], offset=8 + ROW), a + b)
    np.testing.assert_array_equal(result.outputs["3/OUTPUT1"], a - b)  # the other output came in the response
    # one registry: what gRPC registered, HTTP reports
    assert sorted(r["name"] for r in http.get_system_shared_memory_status()) == ["grpc_in", "grpc_out"]


def test_http_reads_inputs_from_and_writes_outputs_to_regions(http: httpclient.InferenceServerClient,
                                                              regions: Any) -> None:
    images = np.random.default_rng(2).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    in_key, inputs = regions("http_in", images.nbytes)
    out_key, outputs = regions("http_out", 2 * 4 * 4)
    shm.set_shared_memory_region(inputs, [images])
    http.register_system_shared_memory("http_in", in_key, images.nbytes)
    http.register_system_shared_memory("http_out", out_key, 32)
    tensor = httpclient.InferInput("images", list(images.shape), "FP32")
    tensor.set_shared_memory("http_in", images.nbytes)
    logits = httpclient.InferRequestedOutput("logits")
    logits.set_shared_memory("http_out", 32)
    result = http.infer("tiny_classify", [tensor], outputs=[logits])
    assert result.get_output("logits")["parameters"]["shared_memory_byte_size"] == 32
    np.testing.assert_allclose(shm.get_contents_as_numpy(outputs, np.float32, [2, 4]),
                               tiny_classifier_logits(images), atol=1e-5)
    http.unregister_system_shared_memory("http_in")
    assert [r["name"] for r in http.get_system_shared_memory_status()] == ["http_out"]


def test_windows_names_and_keys_are_checked(http: httpclient.InferenceServerClient, regions: Any,
                                             tmp_path: Path) -> None:
    a, b = _simple_inputs(3)
    key, handle = regions("small", ROW)
    shm.set_shared_memory_region(handle, [a])
    with pytest.raises(InferenceServerException, match="holds 64 bytes, the region needs 72"):
        http.register_system_shared_memory("too_big", key, ROW, offset=8)
    http.register_system_shared_memory("small", key, ROW)
    with pytest.raises(InferenceServerException, match="already registered"):
        http.register_system_shared_memory("small", key, ROW)

    def infer(region: str, size: int, offset: int = 0) -> None:
        first = httpclient.InferInput("INPUT0", [1, 16], "INT32")
        first.set_shared_memory(region, size, offset)
        second = httpclient.InferInput("INPUT1", [1, 16], "INT32")
        second.set_data_from_numpy(b)
        http.infer("simple", [first, second])

    with pytest.raises(InferenceServerException, match="64 bytes at offset 4 do not fit shared memory region 'small'"):
        infer("small", ROW, 4)
    with pytest.raises(InferenceServerException, match="no shared memory region 'nowhere'"):
        infer("nowhere", ROW)
    with pytest.raises(InferenceServerException, match="32 bytes of raw data, expected 64"):
        infer("small", 32)
    small_output = httpclient.InferRequestedOutput("OUTPUT0")
    small_output.set_shared_memory("small", 32)
    first = httpclient.InferInput("INPUT0", [1, 16], "INT32")
    first.set_data_from_numpy(a)
    second = httpclient.InferInput("INPUT1", [1, 16], "INT32")
    second.set_data_from_numpy(b)
    with pytest.raises(InferenceServerException, match="the output has 64 bytes, its shared memory window only 32"):
        http.infer("simple", [first, second], outputs=[small_output])

    secret = tmp_path / "secret"
    secret.write_bytes(b"x" * 128)
    link = Path("/dev/shm") / f"ninefold_test_link_{uuid.uuid4().hex[:8]}"
    os.symlink(secret, link)
    try:
        for bad_key, message in [("/../../etc/passwd", "is not a POSIX shared memory name"),
                                 ("/a/b", "is not a POSIX shared memory name"), ("/..", "is not a POSIX"),
                                 (f"/{link.name}", "cannot be opened"), ("/ninefold_no_such_key", "cannot be opened")]:
            with pytest.raises(InferenceServerException, match=message):
                http.register_system_shared_memory("evil", bad_key, 16)
    finally:
        link.unlink()
    infer("small", ROW)  # the server keeps serving, the good region still works
    assert [r["name"] for r in http.get_system_shared_memory_status()] == ["small"]
