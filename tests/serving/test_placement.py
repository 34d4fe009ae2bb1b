"""Device placement, provider options and engine choice: pure rules, tested with fake GPU lists."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from protos.inference import model_config_pb2 as mc
from serving.backends import BackendSettings, engine_file_for, select_backend
from serving.backends.onnxruntime import check_providers, intra_op_threads, providers_for
from serving.placement import CPU, Device, Gpu, PlacementError, place, visible_gpus

H100 = [Gpu(0, "GPU-aaaa", "H100", (9, 0)), Gpu(1, "GPU-bbbb", "H100", (9, 0))]


def groups(text: str) -> list[mc.ModelInstanceGroup]:
    return list(text_format.Parse(text, mc.ModelConfig()).instance_group)


def labels(placements) -> list[str]:  # type: ignore[no-untyped-def]
    return [p.device.label for p in placements]


def test_no_instance_group_means_one_instance_per_gpu_or_one_cpu_instance() -> None:
    assert labels(place("m", [], H100, gpu_capable=True)) == ["gpu0", "gpu1"]
    assert labels(place("m", [], [], gpu_capable=False)) == ["cpu"]


def test_kind_gpu_puts_count_instances_on_each_listed_gpu() -> None:
    placements = place("m", groups("instance_group [{ kind: KIND_GPU count: 2 gpus: [1] }]"), H100, True)
    assert labels(placements) == ["gpu1", "gpu1"]
    assert [p.index for p in placements] == [0, 1]
    assert placements[0].group == "m_0"
    assert labels(place("m", groups("instance_group [{ kind: KIND_GPU }]"), H100, True)) == ["gpu0", "gpu1"]


def test_kind_gpu_without_the_gpu_is_an_error_that_names_it() -> None:
    with pytest.raises(PlacementError, match=r"gpus \[3\] that are not visible"):
        place("m", groups("instance_group [{ kind: KIND_GPU gpus: [3] }]"), H100, True)
    with pytest.raises(PlacementError, match="no GPU is visible"):
        place("m", groups("instance_group [{ kind: KIND_GPU }]"), [], True)
    with pytest.raises(PlacementError, match="no GPU support"):
        place("m", groups("instance_group [{ kind: KIND_GPU }]"), H100, False)


def test_kind_auto_falls_back_to_the_cpu() -> None:
    auto = groups("instance_group [{ kind: KIND_AUTO count: 3 }]")
    assert labels(place("m", auto, [], False)) == ["cpu"] * 3
    assert labels(place("m", auto, H100, False)) == ["cpu"] * 3  # a CPU-only runtime on a GPU host
    assert labels(place("m", auto, H100, True)) == ["gpu0"] * 3 + ["gpu1"] * 3
    missing = groups("instance_group [{ kind: KIND_AUTO gpus: [5] }]")
    assert labels(place("m", missing, H100, True)) == ["cpu"]


def test_kind_cpu_groups_add_up_and_keep_their_names() -> None:
    placements = place(
        "m", groups('instance_group [{ name: "a" kind: KIND_CPU count: 2 }, { kind: KIND_GPU gpus: [0] }]'), H100, True
    )
    assert [(p.group, p.device.label, p.index) for p in placements] == [
        ("a", "cpu", 0), ("a", "cpu", 1), ("m_1", "gpu0", 2)
    ]
    with pytest.raises(PlacementError, match="KIND_CPU cannot list gpus"):
        place("m", groups("instance_group [{ kind: KIND_CPU gpus: [0] }]"), H100, True)


def test_cuda_visible_devices_filters_and_renumbers() -> None:
    assert [(g.index, g.uuid) for g in visible_gpus(H100, "1")] == [(0, "GPU-bbbb")]
    assert [g.uuid for g in visible_gpus(H100, "GPU-bbbb,0")] == ["GPU-bbbb", "GPU-aaaa"]
    assert visible_gpus(H100, "") == ()
    assert visible_gpus(H100, "-1") == ()
    assert visible_gpus(H100, None) == tuple(H100)


def test_gpu_instances_get_tensorrt_then_cuda_then_cpu_on_their_device(tmp_path: Path) -> None:
    available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    settings = BackendSettings(tensorrt_cache_dir=tmp_path / "cache", tensorrt_fp16=True)
    providers = providers_for(Device(H100[1]), available, settings, tmp_path / "1" / "model.onnx", True)
    assert [name for name, _ in providers] == available
    trt, cuda = providers[0][1], providers[1][1]
    assert trt["device_id"] == 1 and cuda["device_id"] == 1
    assert trt["trt_fp16_enable"] is True and trt["trt_engine_cache_enable"] is True
    assert trt["trt_engine_cache_path"] == str(tmp_path / "cache" / "sm90")


def test_without_tensorrt_ep_a_gpu_instance_uses_cuda_and_the_cache_defaults_beside_the_model(tmp_path: Path) -> None:
    providers = providers_for(Device(H100[0]), ["CUDAExecutionProvider", "CPUExecutionProvider"],
                              BackendSettings(), tmp_path / "model.onnx")
    assert [name for name, _ in providers] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with_trt = providers_for(Device(H100[0]), ["TensorrtExecutionProvider", "CUDAExecutionProvider"],
                             BackendSettings(), tmp_path / "model.onnx", tensorrt_loads=True)
    assert with_trt[0][1]["trt_engine_cache_path"] == str(tmp_path / "trt_cache" / "sm90")


def test_the_tensorrt_ep_is_asked_for_only_when_tensorrt_loads(tmp_path: Path) -> None:
    """The GPU wheel lists the TensorRT EP even where libnvinfer is missing (issue 12's H100)."""
    listed = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    providers = providers_for(Device(H100[0]), listed, BackendSettings(), tmp_path / "m.onnx", tensorrt_loads=False)
    assert [name for name, _ in providers] == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_a_gpu_instance_that_fell_back_to_the_cpu_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"placed on gpu0 but ONNX Runtime runs it with \['CPUExecutionProvider'\]"):
        check_providers(Device(H100[0]), ["CPUExecutionProvider"], tmp_path / "model.onnx")
    check_providers(Device(H100[0]), ["CUDAExecutionProvider", "CPUExecutionProvider"], tmp_path / "model.onnx")
    check_providers(CPU, ["CPUExecutionProvider"], tmp_path / "model.onnx")


def test_cpu_instances_use_the_cpu_provider_and_a_cpu_wheel_refuses_gpu_instances(tmp_path: Path) -> None:
    assert providers_for(CPU, ["CPUExecutionProvider"], BackendSettings(), tmp_path / "m.onnx") == [
        ("CPUExecutionProvider", {})
    ]
    with pytest.raises(ValueError, match="no CUDAExecutionProvider"):
        providers_for(Device(H100[0]), ["CPUExecutionProvider"], BackendSettings(), tmp_path / "m.onnx")


def test_onnx_runtime_threads_are_shared_among_cpu_instances() -> None:
    assert intra_op_threads(BackendSettings(), cpu_instances=1, cores=8) == 8
    assert intra_op_threads(BackendSettings(), cpu_instances=3, cores=8) == 2
    assert intra_op_threads(BackendSettings(), cpu_instances=16, cores=8) == 1
    assert intra_op_threads(BackendSettings(intra_op_threads=3), cpu_instances=4, cores=8) == 3


def test_the_engine_for_the_gpu_architecture_is_preferred() -> None:
    files = ["model.onnx", "model.sm90.plan", "model.sm80.plan"]
    assert engine_file_for(files, "sm80", None) == "model.sm80.plan"
    assert engine_file_for(files, "sm89", None) is None
    assert engine_file_for(["model.plan"], "sm89", "model.plan") == "model.plan"


def test_backend_choice_per_device() -> None:
    files = ["model.onnx", "model.sm90.plan"]
    gpu = Device(H100[0])
    assert select_backend("onnxruntime_onnx", "", files, gpu, tensorrt_installed=True).runtime == "tensorrt"
    assert select_backend("onnxruntime_onnx", "", files, gpu, tensorrt_installed=False).filename == "model.onnx"
    assert select_backend("onnxruntime_onnx", "", files, CPU, tensorrt_installed=True).filename == "model.onnx"
    assert select_backend("tensorrt_plan", "", files, gpu, True).filename == "model.sm90.plan"
    with pytest.raises(ValueError, match="needs a GPU"):
        select_backend("tensorrt_plan", "", files, CPU, True)
    with pytest.raises(ValueError, match="no TensorRT engine for sm80"):
        select_backend("tensorrt_plan", "", files, Device(Gpu(0, "u", "A100", (8, 0))), True)
    with pytest.raises(ValueError, match="'model.onnx' is missing"):
        select_backend("onnxruntime_onnx", "", ["model.sm90.plan"], CPU, True)
    with pytest.raises(ValueError, match="not supported"):
        select_backend("pytorch_libtorch", "", files, CPU, True)


@pytest.mark.gpu
def test_a_native_tensorrt_engine_runs_on_the_gpu(tmp_path: Path) -> None:
    """Needs a GPU, TensorRT and an engine the export stage built (NINEFOLD_TEST_ENGINE=path/model.smXX.plan)."""

    engine = os.environ.get("NINEFOLD_TEST_ENGINE")
    if engine is None:
        pytest.skip("no GPU engine given (set NINEFOLD_TEST_ENGINE on a GPU machine)")
    from serving.backends.tensorrt import TensorRTBackend
    from serving.placement import discover_gpus

    gpus = discover_gpus()
    if not gpus:
        pytest.skip("no GPU visible")
    backend = TensorRTBackend(Path(engine), Device(gpus[0]))
    feeds = {s.name: np.zeros((1, *[max(d, 1) for d in s.shape[1:]]), s.dtype) for s in backend.inputs}
    outputs = backend.infer(feeds)
    assert set(outputs) == {s.name for s in backend.outputs}
    backend.close()
