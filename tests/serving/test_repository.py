"""Repository parsing/validation and the model manager on tiny real repositories."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
import pytest

from serving import repository
from serving.backends import BackendSettings, onnxruntime
from serving.backends.onnxruntime import OnnxRuntimeBackend, intra_op_threads
from serving.errors import InvalidArgument, NotFound, NotReady
from serving.models import ModelManager, ModelState
from serving.placement import Gpu
from serving.repository import ConfigError
from tests.serving.core_models import doubler_graph, tensor_config, write_model

TRITON_EXTRAS = """
optimization { execution_accelerators { gpu_execution_accelerator : [ { name : "tensorrt" } ] } }
model_warmup [ { name: "zeros" batch_size: 1
  inputs { key: "x" value { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } } } ]
sequence_batching { control_input [ { name: "START" } ] }
response_cache { enable: true }
"""


def source(repo: Path, name: str):  # type: ignore[no-untyped-def]
    return next(s for s in repository.discover(repo) if s.name == name)


def spec_of(repo: Path, name: str) -> repository.ModelSpec:
    found = source(repo, name)
    return repository.model_spec(found, repository.read_config(found))


def test_a_full_triton_config_loads_with_unknown_fields_skipped_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    body = tensor_config(4, extra="dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 100 "
                                  "default_queue_policy { max_queue_size: 7 default_timeout_microseconds: 2000 } }\n")
    write_model(tmp_path, "plain", doubler_graph(), body + TRITON_EXTRAS)
    with caplog.at_level(logging.INFO, logger="serving.repository"):
        spec = spec_of(tmp_path, "plain")
    assert "ignoring fields" in caplog.text and "optimization" in caplog.text
    assert spec.task == "" and spec.policy.max_batch_size == 8
    assert spec.policy.preferred_batch_sizes == (4,)
    assert spec.policy.max_queue_size == 7
    assert spec.policy.default_timeout_s == pytest.approx(0.002)
    assert spec.policy.max_queue_delay_s == pytest.approx(0.0001)
    assert [(t.name, t.shape, t.datatype) for t in spec.inputs] == [("x", (4,), "FP32")]


def test_a_model_without_dynamic_batching_never_combines_requests(tmp_path: Path) -> None:
    write_model(tmp_path, "alone", doubler_graph(), tensor_config(4))
    write_model(tmp_path, "together", doubler_graph(), tensor_config(4, extra="dynamic_batching { }\n"))
    alone, together = spec_of(tmp_path, "alone").policy, spec_of(tmp_path, "together").policy
    assert (alone.max_batch_size, alone.combines) == (8, False)  # Triton's default scheduler
    assert (together.max_batch_size, together.combines) == (8, True)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('name: "other"\n', "name 'other' must match the folder name 'bad'"),
        ('backend: "pytorch"\n', "backend 'pytorch' is not supported"),
        ("max_batch_size: 4\ndynamic_batching { preferred_batch_size: [ 8 ] }\n", r"preferred_batch_size \[8\]"),
        ('input [ { name: "x" data_type: TYPE_FP32 dims: [ 0 ] } ]\n', r"input 'x' dims \[0\] must be positive"),
        ('output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] label_filename: "nope.txt" } ]\n',
         "label_filename 'nope.txt' is not a file"),
        ('parameters { key: "task" value { string_value: "segment" } }\n', "parameters.task 'segment' is unknown"),
        ("max_batch_size: [\n", r"bad/config.pbtxt: 2:17 .*integer"),
    ],
)
def test_config_errors_name_the_file_and_the_field(tmp_path: Path, body: str, message: str) -> None:
    folder = write_model(tmp_path, "bad", doubler_graph(), "")
    text = (folder / "config.pbtxt").read_text()
    (folder / "config.pbtxt").write_text(text.replace('name: "bad"\n', "") + body)
    with pytest.raises(ConfigError, match=message) as raised:
        spec_of(tmp_path, "bad")
    assert str(tmp_path) not in str(raised.value)  # no server paths in messages clients may see
    assert "bad/config.pbtxt" in str(raised.value)


@pytest.mark.parametrize(
    ("policy", "served"),
    [("", (3,)), ("version_policy { latest { num_versions: 2 } }", (2, 3)),
     ("version_policy { all { } }", (1, 2, 3)), ("version_policy { specific { versions: [ 1, 3 ] } }", (1, 3))],
)
def test_version_policy_selects_versions(tmp_path: Path, policy: str, served: tuple[int, ...]) -> None:
    folder = write_model(tmp_path, "m", doubler_graph(), tensor_config(4, extra=policy))
    for version in (2, 3):
        (folder / str(version)).mkdir()
    found = source(tmp_path, "m")
    assert repository.served_versions(found, repository.read_config(found)) == served


def load(repo: Path) -> ModelManager:
    manager = ModelManager(repo)
    asyncio.run(manager.load_all())
    return manager


@pytest.mark.parametrize("light", [True, False])
def test_automatic_threads_give_a_light_model_one_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, light: bool
) -> None:
    monkeypatch.setattr(onnxruntime, "LIGHT_MODEL_RUN_S", float("inf") if light else 0.0)
    write_model(tmp_path, "doubler", doubler_graph(), tensor_config(4))
    manager = load(tmp_path)
    backend = manager.get("doubler")._backends[0]
    assert isinstance(backend, OnnxRuntimeBackend)
    assert backend.threads == (1 if light else intra_op_threads(BackendSettings(), cpu_instances=1))
    assert manager.get("doubler").ready
    asyncio.run(manager.close())


def test_a_model_that_fails_to_load_is_not_ready_while_the_others_serve(tmp_path: Path) -> None:
    write_model(tmp_path, "good", doubler_graph(), tensor_config(4))
    broken = write_model(tmp_path, "broken", doubler_graph(), tensor_config(4))
    (broken / "1" / "model.onnx").write_bytes(b"not an onnx file")
    write_model(tmp_path, "mistyped", doubler_graph(), tensor_config(4).replace("TYPE_FP32", "TYPE_INT64", 1))
    write_model(tmp_path, "misconfigured", doubler_graph(), "max_batch_size: -1\n")

    async def scenario() -> None:
        manager = ModelManager(tmp_path)
        await manager.load_all()
        states = {m.name: (m.state, m.reason) for m in manager.models()}
        assert states["good"] == (ModelState.READY, "")
        assert states["broken"][0] is ModelState.UNAVAILABLE and "could not load" in states["broken"][1]
        assert "input 'x' data_type TYPE_INT64 does not match the model file (TYPE_FP32)" in states["mistyped"][1]
        with pytest.raises(NotReady, match="broken"):
            manager.get("broken")
        with pytest.raises(NotReady, match="max_batch_size must be >= 0"):
            manager.get("misconfigured")
        with pytest.raises(NotFound, match="'ghost' is not in the repository"):
            manager.get("ghost")
        with pytest.raises(NotFound, match="no version 7"):
            manager.get("good", 7)
        index = {(e.name, e.version): e.state for e in manager.index()}
        assert index[("misconfigured", None)] is ModelState.UNAVAILABLE
        result = await manager.get("good").infer({"x": np.ones((2, 4), np.float32)})
        assert result["y"].tolist() == [[2.0] * 4] * 2
        await manager.close()

    asyncio.run(scenario())


def test_a_config_without_tensors_takes_the_signature_from_the_model_file(tmp_path: Path) -> None:
    write_model(tmp_path, "bare", doubler_graph(), "max_batch_size: 4\n")

    async def scenario() -> None:
        manager = ModelManager(tmp_path)
        await manager.load_all()
        model = manager.get("bare")
        assert [(t.name, t.shape) for t in model.inputs] == [("x", (4,))]
        assert [(t.name, t.shape) for t in model.outputs] == [("y", (4,))]
        await manager.close()

    asyncio.run(scenario())


def test_infer_names_the_tensor_that_is_wrong(tmp_path: Path) -> None:
    write_model(tmp_path, "m", doubler_graph(), tensor_config(4))

    async def scenario() -> None:
        manager = ModelManager(tmp_path)
        await manager.load_all()
        model = manager.get("m")
        cases = [
            ({"z": np.ones((1, 4), np.float32)}, r"takes inputs \[x\]; missing \['x'\]; unknown \['z'\]"),
            ({"x": np.ones((1, 4), np.float64)}, "input 'x' of model 'm' must be FP32, got float64"),
            ({"x": np.ones((1, 5), np.float32)}, r"must have shape \[B, 4\], got \[1, 5\]"),
            ({"x": np.ones((0, 4), np.float32)}, "at least one item"),
        ]
        for inputs, message in cases:
            with pytest.raises(InvalidArgument, match=message), model.request():
                await model.infer(inputs)
        snapshot = model.stats()
        assert snapshot.fail.count == 4 and snapshot.failures_by_reason == {"invalid_argument": 4}
        await manager.close()

    asyncio.run(scenario())


def test_the_default_model_of_a_task(tmp_path: Path) -> None:
    task = 'parameters { key: "task" value { string_value: "generate" } }\n'
    write_model(tmp_path, "b_gen", doubler_graph(), tensor_config(4, extra=task))
    write_model(tmp_path, "a_gen", doubler_graph(), tensor_config(4, extra=task))
    preferred = 'parameters { key: "default" value { string_value: "true" } }\n'
    write_model(tmp_path, "c_gen", doubler_graph(), tensor_config(4, extra=task + preferred))

    async def scenario() -> None:
        manager = ModelManager(tmp_path)
        await manager.load_all()
        assert manager.default_for("generate").name == "c_gen"
        assert manager.is_default(manager.get("c_gen")) and not manager.is_default(manager.get("a_gen"))
        assert manager.tasks() == ["generate"]
        with pytest.raises(NotFound, match="no model in the repository serves task 'warp'"):
            manager.default_for("warp")
        await manager.unload("c_gen")
        assert manager.default_for("generate").name == "a_gen"
        await manager.close()

    asyncio.run(scenario())


def test_config_dims_that_disagree_with_the_model_file_are_a_load_error(tmp_path: Path) -> None:
    write_model(tmp_path, "wide", doubler_graph(), tensor_config(5))

    async def scenario() -> None:
        manager = ModelManager(tmp_path)
        await manager.load_all()
        with pytest.raises(NotReady, match=r"input 'x' dims \[5\] do not match the model file \(\[4\]"):
            manager.get("wide")
        await manager.close()

    asyncio.run(scenario())


def test_a_failed_reload_keeps_the_loaded_model_serving(tmp_path: Path) -> None:
    folder = write_model(tmp_path, "m", doubler_graph(), tensor_config(4))

    async def scenario() -> None:
        manager = ModelManager(tmp_path)
        await manager.load_all()
        serving = manager.get("m")
        (folder / "1" / "model.onnx").write_bytes(b"broken")
        with pytest.raises(NotReady, match="could not be reloaded"):
            await manager.load("m")
        assert manager.get("m") is serving
        assert (await serving.infer({"x": np.ones((1, 4), np.float32)}))["y"].tolist() == [[2.0] * 4]
        write_model(tmp_path, "m", doubler_graph(), tensor_config(4))
        await manager.load("m")
        assert manager.get("m") is not serving and not serving.ready
        await manager.unload("m")
        with pytest.raises(NotReady, match="in the repository but not loaded"):  # Triton: UNAVAILABLE
            manager.get("m")
        with pytest.raises(NotFound, match="has no model folder named 'nope'"):
            await manager.load("nope")
        await manager.close()

    asyncio.run(scenario())


def test_a_model_without_a_batch_axis_runs_each_request_alone(tmp_path: Path) -> None:
    write_model(
        tmp_path, "fixed", doubler_graph(),
        'max_batch_size: 0\ninput [ { name: "x" data_type: TYPE_FP32 dims: [ 2, 4 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 2, 4 ] } ]\n',
    )

    async def scenario() -> None:
        manager = ModelManager(tmp_path)
        await manager.load_all()
        model = manager.get("fixed")
        results = await asyncio.gather(*(model.infer({"x": np.full((2, 4), i, np.float32)}) for i in range(3)))
        assert [float(r["y"][0, 0]) for r in results] == [0.0, 2.0, 4.0]
        with pytest.raises(InvalidArgument, match=r"must have shape \[2, 4\]"):
            await model.infer({"x": np.ones((1, 2, 4), np.float32)})
        assert model.stats().execution_count == 3
        await manager.close()

    asyncio.run(scenario())


def test_on_a_gpu_host_without_gpu_runtimes_auto_falls_back_and_kind_gpu_explains(tmp_path: Path) -> None:
    write_model(tmp_path, "auto", doubler_graph(), tensor_config(4, extra="instance_group [ { kind: KIND_AUTO } ]"))
    write_model(tmp_path, "gpu_only", doubler_graph(), tensor_config(4, extra="instance_group [ { kind: KIND_GPU } ]"))

    async def scenario() -> None:
        manager = ModelManager(tmp_path, gpus=[Gpu(0, "GPU-0", "H100", (9, 0))])
        await manager.load_all()
        assert [p.device.label for p in manager.get("auto").placements] == ["cpu"]
        with pytest.raises(NotReady, match="KIND_GPU but this runtime has no GPU support"):
            manager.get("gpu_only")
        await manager.close()

    asyncio.run(scenario())
