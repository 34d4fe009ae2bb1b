"""The Open Inference Protocol on the nine trained small families (tests/conftest.py `small_repository`),
driven by the real Triton client: every model's signature, a batch of several through every model,
the classification extension with real labels, encoded images through the task layer."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clients.server_process import ServerProcess
from tests.protocols.conftest import TritonRunner

pytestmark = pytest.mark.slow
BATCH = 4
_NUMPY = {"FP32": np.float32, "INT64": np.int64, "INT32": np.int32}


@pytest.fixture(scope="module")
def small_server(small_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("v2_small") / "server.log"
    with ServerProcess.start(small_repository, log=log) as server:
        yield server


def _ok(step: dict) -> object:
    assert step["ok"], f"server answered {step.get('status')}: {step.get('message')}"
    return step["value"]


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(48, 40, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_every_small_family_model_serves_v2(
    small_server: ServerProcess, small_repository: Path, tmp_path: Path
) -> None:
    runner = TritonRunner(small_server.target, tmp_path)
    index = _ok(runner.run([{"op": "repository_index"}]).steps[0])["models"]
    names = sorted(entry["name"] for entry in index)
    assert all(entry["state"] == "READY" for entry in index), index
    assert len(names) >= 9
    steps = runner.run([{"op": op, "model": name} for name in names for op in ("model_metadata", "model_config")]).steps
    metadata = {name: _ok(steps[2 * i]) for i, name in enumerate(names)}
    configs = {name: _ok(steps[2 * i + 1])["config"] for i, name in enumerate(names)}
    task = {name: configs[name].get("parameters", {}).get("task", {}).get("string_value", "") for name in names}
    assert {"classify", "detect", "caption", "caption_decoder", "generate", "warp", "explain"} <= set(task.values())

    rng = np.random.default_rng(0)
    arrays, plan = {}, []
    for name in names:
        inputs = []
        for tensor in metadata[name]["inputs"]:
            shape = [BATCH if d == "-1" else int(d) for d in tensor["shape"]]
            key = f"{name}.{tensor['name']}"
            if tensor["datatype"] == "FP32":
                arrays[key] = rng.uniform(-1.0, 1.0, shape).astype(np.float32)  # inside every input_ranges
            else:
                arrays[key] = np.ones(shape, dtype=_NUMPY[tensor["datatype"]])  # token ids: a valid id
            inputs.append({"name": tensor["name"], "datatype": tensor["datatype"], "array": key})
        plan.append({"op": "infer", "model": name, "inputs": inputs})
    classifiers = [n for n in names if task[n] == "classify"]
    arrays["png"] = np.array([_png(seed) for seed in range(BATCH)], dtype=object)
    for name in classifiers:
        plan.append({"op": "infer", "model": name, "inputs": [{"name": "images", "datatype": "BYTES", "array": "png"}],
                     "outputs": [{"name": metadata[name]["outputs"][0]["name"], "class_count": 3}]})
    result = runner.run(plan, arrays)

    for index_, name in enumerate(names):
        answer = _ok(result.steps[index_])
        declared = {t["name"]: t for t in metadata[name]["outputs"]}
        for output in answer["outputs"]:
            want = [BATCH if d == "-1" else int(d) for d in declared[output["name"]]["shape"]]
            assert output["shape"] == want, (name, output)
            values = result.outputs[f"{index_}/{output['name']}"]
            assert values.shape == tuple(want)
            if values.dtype.kind == "f":
                assert np.isfinite(values).all(), (name, output["name"])
    for offset, name in enumerate(classifiers):
        step = len(names) + offset
        _ok(result.steps[step])
        output = metadata[name]["outputs"][0]["name"]
        labels = (small_repository / name / "labels.txt").read_text().splitlines()
        strings = result.outputs[f"{step}/{output}"]
        assert strings.shape == (BATCH, 3)
        for row in strings:
            scores = [float(s.decode().split(":")[0]) for s in row]
            assert scores == sorted(scores, reverse=True)
            for s in row:
                _, index_text, label = s.decode().split(":", 2)
                assert label == labels[int(index_text)]
