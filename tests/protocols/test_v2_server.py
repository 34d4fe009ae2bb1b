"""The Open Inference Protocol against a real server, driven by the real Triton client (tritonclient.grpc)."""

from __future__ import annotations

import io
import re
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from clients.client import VisionClient
from clients.server_process import ServerProcess
from tests.protocols.conftest import TritonRunner
from tests.protocols.repositories import CLASSIFIER_LABELS, tiny_classifier_logits
from tests.serving.tiny_repository import LATENT_SIZE, SIZE

TASK_MODELS = (
    "tiny_caption", "tiny_caption_decoder", "tiny_classify", "tiny_detect", "tiny_explain", "tiny_generate", "tiny_warp"
)
ALL_MODELS = ("simple", "simple_unlisted", *TASK_MODELS)
BATCH = 3
_NUMPY = {"FP32": np.float32, "INT64": np.int64, "INT32": np.int32}


def ok(step: dict) -> object:
    assert step["ok"], f"server answered {step.get('status')}: {step.get('message')}"
    return step["value"]


def png(colour: tuple[int, int, int], size: tuple[int, int] = (20, 12)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_health_and_server_metadata(triton: TritonRunner) -> None:
    live, ready, simple_ready, unknown_ready, metadata = triton.run([
        {"op": "live"}, {"op": "ready"}, {"op": "model_ready", "model": "simple"},
        {"op": "model_ready", "model": "no_such_model"}, {"op": "server_metadata"},
    ]).steps
    assert ok(live) is True and ok(ready) is True and ok(simple_ready) is True
    assert ok(unknown_ready) is False
    meta = ok(metadata)
    assert meta["name"] == "ninefold" and meta["version"]
    assert {"classification", "model_configuration", "statistics"} <= set(meta["extensions"])


def test_every_model_exposes_its_signature_and_config(triton: TritonRunner) -> None:
    plan = [{"op": op, "model": name} for name in ALL_MODELS for op in ("model_metadata", "model_config")]
    plan.append({"op": "repository_index"})
    steps = triton.run(plan).steps
    by_model = {name: (ok(steps[2 * i]), ok(steps[2 * i + 1])) for i, name in enumerate(ALL_MODELS)}

    classify, classify_config = by_model["tiny_classify"]
    assert classify["versions"] == ["1"] and classify["platform"] == "onnxruntime_onnx"
    assert classify["inputs"] == [{"name": "images", "datatype": "FP32", "shape": ["-1", "3", str(SIZE), str(SIZE)]}]
    assert classify["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": ["-1", str(len(CLASSIFIER_LABELS))]}]
    assert classify_config["config"]["parameters"]["task"]["string_value"] == "classify"
    assert classify_config["config"]["output"][0]["label_filename"] == "labels.txt"

    detect, _ = by_model["tiny_detect"]
    assert {t["name"]: t["datatype"] for t in detect["outputs"]} == {
        "boxes": "FP32", "scores": "FP32", "labels": "INT64", "num_detections": "INT64"}
    simple, simple_config = by_model["simple"]
    assert [t["datatype"] for t in simple["inputs"]] == ["INT32", "INT32"]
    assert simple_config["config"]["max_batch_size"] == 8 and "parameters" not in simple_config["config"]
    unlisted, unlisted_config = by_model["simple_unlisted"]
    assert (unlisted["inputs"], unlisted["outputs"]) == (simple["inputs"], simple["outputs"])
    assert [t["name"] for t in unlisted_config["config"]["output"]] == ["OUTPUT0", "OUTPUT1"]

    index = ok(steps[-1])["models"]
    assert sorted(entry["name"] for entry in index) == sorted(ALL_MODELS)
    assert all(entry["state"] == "READY" and entry["version"] == "1" for entry in index)


def inputs_for(metadata: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random inputs of a batch of BATCH for a model's signature (floats in [-1, 1], inside every model's
    `input_ranges`; token ids kept valid); the shape's dimensions may be strings (gRPC metadata as JSON)
    or numbers (HTTP)."""
    arrays = {}
    for tensor in metadata["inputs"]:
        shape = [BATCH if int(dim) == -1 else int(dim) for dim in tensor["shape"]]
        if tensor["datatype"] == "FP32":
            arrays[tensor["name"]] = rng.uniform(-1.0, 1.0, shape).astype(np.float32)
        else:
            arrays[tensor["name"]] = rng.integers(0, 2, size=shape).astype(_NUMPY[tensor["datatype"]])
    return arrays


def test_infer_on_every_model_with_a_batch_of_several(triton: TritonRunner) -> None:
    steps = triton.run([{"op": "model_metadata", "model": name} for name in ALL_MODELS]).steps
    metadata = {name: ok(step) for name, step in zip(ALL_MODELS, steps, strict=True)}
    rng = np.random.default_rng(7)
    arrays, plan = {}, []
    for name in ALL_MODELS:
        inputs = inputs_for(metadata[name], rng)
        arrays.update({f"{name}.{key}": value for key, value in inputs.items()})
        plan.append({"op": "infer", "model": name, "id": f"req-{name}",
                     "inputs": [{"name": t["name"], "datatype": t["datatype"], "array": f"{name}.{t['name']}"}
                                for t in metadata[name]["inputs"]]})
    result = triton.run(plan, arrays)
    for index, name in enumerate(ALL_MODELS):
        answer = ok(result.steps[index])
        assert answer["model_name"] == name and answer["model_version"] == "1" and answer["id"] == f"req-{name}"
        declared = {t["name"]: t for t in metadata[name]["outputs"]}
        assert {o["name"] for o in answer["outputs"]} == set(declared)
        for output in answer["outputs"]:
            want = [BATCH if d == "-1" else int(d) for d in declared[output["name"]]["shape"]]
            assert output["datatype"] == declared[output["name"]]["datatype"]
            assert output["shape"] == want and list(result.outputs[f"{index}/{output['name']}"].shape) == want
    simple = ALL_MODELS.index("simple")
    np.testing.assert_array_equal(
        result.outputs[f"{simple}/OUTPUT0"], arrays["simple.INPUT0"] + arrays["simple.INPUT1"])
    classify = ALL_MODELS.index("tiny_classify")
    np.testing.assert_allclose(
        result.outputs[f"{classify}/logits"], tiny_classifier_logits(arrays["tiny_classify.images"]), atol=1e-5)


def test_classification_extension_and_encoded_images(triton: TritonRunner) -> None:
    images = np.random.default_rng(3).standard_normal((4, 3, SIZE, SIZE)).astype(np.float32)
    encoded = np.array([png((255, 0, 0)), png((0, 0, 255), (9, 30))], dtype=object)
    result = triton.run([
        {"op": "infer", "model": "tiny_classify", "inputs": [{"name": "images", "datatype": "FP32", "array": "x"}],
         "outputs": [{"name": "logits", "class_count": 2}]},
        {"op": "infer", "model": "tiny_classify", "inputs": [{"name": "images", "datatype": "BYTES", "array": "png"}],
         "outputs": [{"name": "logits", "class_count": 1}]},
        {"op": "infer", "model": "tiny_classify", "inputs": [{"name": "images", "datatype": "BYTES", "array": "png"}]},
    ], {"x": images, "png": encoded})
    top2 = result.outputs["0/logits"]
    assert top2.shape == (4, 2) and ok(result.steps[0])["outputs"][0]["datatype"] == "BYTES"
    logits = tiny_classifier_logits(images)
    for row, strings in zip(logits, top2, strict=True):
        best = np.argsort(-row)[:2]
        assert [s.decode() for s in strings] == [f"{row[i]:f}:{i}:{CLASSIFIER_LABELS[i]}" for i in best]
    # red -> mean colour normalised (2, -2, -2) -> class 0 ("circle"); blue -> (-2, -2, 2) -> class 2
    assert [s.decode().split(":", 1)[1] for s in result.outputs["1/logits"][:, 0]] == ["0:circle", "2:triangle"]
    assert result.outputs["2/logits"].shape == (2, 4) and result.outputs["2/logits"].dtype == np.float32


def test_bad_requests_get_precise_status_codes_and_the_server_keeps_serving(triton: TritonRunner) -> None:
    good = {"name": "images", "datatype": "FP32", "array": "x"}
    result = triton.run([
        {"op": "infer", "model": "tiny_classify", "inputs": [{"name": "images", "datatype": "FP32", "array": "small"}]},
        {"op": "infer", "model": "tiny_classify", "inputs": [{"name": "images", "datatype": "FP64", "array": "x64"}]},
        {"op": "infer", "model": "no_such_model", "inputs": [good]},
        {"op": "infer", "model": "tiny_classify", "version": "7", "inputs": [good]},
        {"op": "infer", "model": "tiny_classify", "inputs": [
            {"name": "images", "datatype": "FP32", "shape": [1, 3, SIZE, SIZE], "raw_hex": "00" * 10}]},
        {"op": "infer", "model": "tiny_classify", "inputs": [good], "outputs": [{"name": "probabilities"}]},
        {"op": "infer", "model": "tiny_classify", "inputs": [{"name": "pixels", "datatype": "FP32", "array": "x"}]},
        {"op": "infer", "model": "tiny_classify", "inputs": [{"name": "images", "datatype": "BYTES", "array": "junk"}]},
        {"op": "infer", "model": "simple", "inputs": [{"name": "INPUT0", "datatype": "INT32", "array": "ints"}]},
        {"op": "model_metadata", "model": "no_such_model"},
        {"op": "infer", "model": "tiny_classify", "inputs": [good]},
    ], {"x": np.zeros((1, 3, SIZE, SIZE), np.float32), "small": np.zeros((1, 3, 4, 4), np.float32),
        "x64": np.zeros((1, 3, SIZE, SIZE)), "junk": np.array([b"not an image"], dtype=object),
        "ints": np.zeros((1, 16), np.int32)})
    expected = [
        ("INVALID_ARGUMENT", r"input 'images': shape \[1, 3, 4, 4\] does not match the model's \[-1, 3, 8, 8\]"),
        ("INVALID_ARGUMENT", r"input 'images': datatype FP64, the model expects FP32"),
        ("NOT_FOUND", r"no_such_model"),
        ("NOT_FOUND", r"no version 7"),
        ("INVALID_ARGUMENT", r"input 'images': 10 bytes of raw data, expected 768"),
        ("INVALID_ARGUMENT", r"has no output 'probabilities'"),
        ("INVALID_ARGUMENT", r"takes inputs \['images'\], the request has \['pixels'\]"),
        ("INVALID_ARGUMENT", r"image 0: not a readable JPEG, PNG or WebP image"),
        ("INVALID_ARGUMENT", r"takes inputs \['INPUT0', 'INPUT1'\]"),
        ("NOT_FOUND", r"no_such_model"),
    ]
    for step, (status, message) in zip(result.steps, expected, strict=False):
        assert not step["ok"] and step["status"] == status, step
        assert re.search(message, step["message"]), step["message"]
    assert ok(result.steps[-1])["outputs"][0]["shape"] == [1, len(CLASSIFIER_LABELS)]


def test_stream_infer_answers_every_request_and_reports_errors_in_band(triton: TritonRunner) -> None:
    z = np.random.default_rng(5).standard_normal((2, LATENT_SIZE)).astype(np.float32)
    requests = [
        {"model": "tiny_generate", "id": f"gen-{i}", "inputs": [{"name": "z", "datatype": "FP32", "array": "z"}]}
        for i in range(3)
    ]
    requests.insert(1, {"model": "tiny_generate", "id": "bad",
                        "inputs": [{"name": "z", "datatype": "FP32", "array": "wrong"}]})
    result = triton.run([{"op": "stream", "requests": requests}],
                        {"z": z, "wrong": np.zeros((2, LATENT_SIZE + 1), np.float32)})
    answers = ok(result.steps[0])
    assert len(answers) == 4
    good = [a["value"] for a in answers if a["ok"]]
    bad = [a for a in answers if not a["ok"]]
    assert sorted(a["id"] for a in good) == ["gen-0", "gen-1", "gen-2"]
    assert len(bad) == 1 and "input 'z': shape [2, 6] does not match" in bad[0]["message"]
    images = [value for key, value in result.outputs.items() if key.endswith("/images")]
    assert len(images) == 3 and all(image.shape == (2, 3, 4, 4) for image in images)
    np.testing.assert_array_equal(images[0], images[1])  # same latents, same images


def _scrape(server: ServerProcess) -> list[tuple[str, dict[str, str], float]]:
    """Every sample on /metrics as (metric name, labels, value)."""
    with urllib.request.urlopen(server.metrics_url, timeout=30) as response:
        text = response.read().decode()
    samples = []
    for line in text.splitlines():
        match = re.fullmatch(r"(\w+)\{(.*)\} ([0-9.e+-]+)", line)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
            samples.append((match.group(1), labels, float(match.group(3))))
    return samples


def _metric(samples: list[tuple[str, dict[str, str], float]], name: str, model: str) -> float:
    """Sum of `name` over the samples of `model` version 1 (failures are split by reason)."""
    return sum(v for metric, labels, v in samples
               if metric == name and labels["model"] == model and labels["version"] == "1")


def test_statistics_agree_with_metrics_and_count_task_and_v2_requests_together(
    triton: TritonRunner, v2_server: ServerProcess
) -> None:
    before = ok(triton.run([{"op": "statistics", "model": "tiny_warp"}]).steps[0])["model_stats"][0]
    with VisionClient(v2_server.target) as client:
        client.warp([png((10, 200, 30))])
    images = np.zeros((2, 3, SIZE, SIZE), np.float32)
    steps = triton.run([
        {"op": "infer", "model": "tiny_warp", "inputs": [{"name": "images", "datatype": "FP32", "array": "x"}]},
        {"op": "statistics"},
    ], {"x": images}).steps
    ok(steps[0])
    stats = {s["name"]: s for s in ok(steps[1])["model_stats"]}
    metrics = _scrape(v2_server)

    warp = stats["tiny_warp"]
    success = int(warp["inference_stats"]["success"]["count"])
    assert success == int(before["inference_stats"].get("success", {}).get("count", 0)) + 2  # task API + v2
    assert int(warp["inference_count"]) == int(before.get("inference_count", 0)) + 3
    for name, model in stats.items():
        infer_stats = model["inference_stats"]
        assert _metric(metrics, "nv_inference_request_success", name) == int(infer_stats["success"].get("count", 0))
        assert _metric(metrics, "nv_inference_request_failure", name) == int(infer_stats["fail"].get("count", 0))
        assert _metric(metrics, "nv_inference_count", name) == int(model.get("inference_count", 0))
        assert _metric(metrics, "nv_inference_exec_count", name) == int(model.get("execution_count", 0))
        queue_us = int(infer_stats["queue"].get("ns", 0)) // 1000
        assert _metric(metrics, "nv_inference_queue_duration_us", name) == queue_us
        executions = sum(int(b["compute_infer"]["count"]) for b in model.get("batch_stats", []))
        assert executions == int(model.get("execution_count", 0))


def test_model_control_is_refused_when_disabled(triton: TritonRunner) -> None:
    load, unload = triton.run([{"op": "load", "model": "simple", "token": "anything-at-all-0123"},
                               {"op": "unload", "model": "simple"}]).steps
    for step in (load, unload):
        assert not step["ok"] and step["status"] == "UNAUTHENTICATED"
        assert "model control is disabled" in step["message"]


def test_the_plain_triton_models_carry_no_ninefold_parameters(v2_repository: Path) -> None:
    """Guards test_infer_on_every_model's "simple" models: configs as a Triton user writes them."""
    for name in ("simple", "simple_unlisted"):
        config = (v2_repository / name / "config.pbtxt").read_text()
        assert "parameters" not in config and "ninefold" not in config
    assert "input" not in (v2_repository / "simple_unlisted" / "config.pbtxt").read_text()
