"""ONNX Runtime backend: one InferenceSession per instance, providers chosen per device.

`providers_for`, `intra_op_threads` and `settled_threads` (the thread policy) are pure (unit-tested on
CPU with fake devices); only `OnnxRuntimeBackend` touches the runtime.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from contract.tensors import TensorSpec
from protos.inference import model_config_pb2 as mc
from serving.backends import BackendSettings, tensorrt_loadable
from serving.cpus import available_cpus
from serving.placement import Device

log = logging.getLogger(__name__)

#: ONNX Runtime's tensor type strings -> Triton config enum.
_ORT_TYPES = {
    "tensor(float)": mc.TYPE_FP32,
    "tensor(float16)": mc.TYPE_FP16,
    "tensor(double)": mc.TYPE_FP64,
    "tensor(int64)": mc.TYPE_INT64,
    "tensor(int32)": mc.TYPE_INT32,
    "tensor(int16)": mc.TYPE_INT16,
    "tensor(int8)": mc.TYPE_INT8,
    "tensor(uint8)": mc.TYPE_UINT8,
    "tensor(uint16)": mc.TYPE_UINT16,
    "tensor(uint32)": mc.TYPE_UINT32,
    "tensor(uint64)": mc.TYPE_UINT64,
    "tensor(bool)": mc.TYPE_BOOL,
    "tensor(string)": mc.TYPE_STRING,
    "tensor(bfloat16)": mc.TYPE_BF16,
}


def providers_for(
    device: Device,
    available: Sequence[str],
    settings: BackendSettings,
    model_path: Path,
    tensorrt_loads: bool = False,
) -> list[tuple[str, dict[str, Any]]]:
    """Execution providers (with options) in priority order for one instance.

    GPU: TensorRT EP (engine + timing cache, fp16 per settings) when the wheel has it and TensorRT's
    library loads (`tensorrt_loads`: the GPU wheel lists the EP even where TensorRT is missing, and
    every session would first fail on it), then the CUDA EP on the same device, then CPU for
    unsupported ops. CPU: the CPU EP only.
    Raises ValueError when a GPU instance is asked of a wheel without CUDA.
    """
    if device.gpu is None:
        return [("CPUExecutionProvider", {})]
    if "CUDAExecutionProvider" not in available:
        raise ValueError("this onnxruntime has no CUDAExecutionProvider; install the `gpu` extra")
    device_id = device.gpu.index
    providers: list[tuple[str, dict[str, Any]]] = []
    if "TensorrtExecutionProvider" in available and tensorrt_loads:
        cache = settings.tensorrt_cache_dir or model_path.parent / "trt_cache"
        providers.append(
            (
                "TensorrtExecutionProvider",
                {
                    "device_id": device_id,
                    "trt_fp16_enable": settings.tensorrt_fp16,
                    "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": str(cache / device.gpu.arch),
                    "trt_timing_cache_enable": True,
                    "trt_timing_cache_path": str(cache / device.gpu.arch),
                },
            )
        )
    providers.append(("CUDAExecutionProvider", {"device_id": device_id, "cudnn_conv_algo_search": "HEURISTIC"}))
    providers.append(("CPUExecutionProvider", {}))
    return providers


def intra_op_threads(settings: BackendSettings, cpu_instances: int, cores: int | None = None) -> int:
    """Threads per CPU instance: the setting, or the process's CPU budget (its cgroup CPU limit, not
    the node's cores) shared among the instances."""
    if settings.intra_op_threads > 0:
        return settings.intra_op_threads
    cores = cores or available_cpus()
    return max(1, cores // max(1, cpu_instances))


#: With automatic threads (--ort-threads 0), a CPU-only model whose warm batch-1 run takes less than this
#: gets one thread per instance: waking pool threads for every operator then costs more than the
#: parallelism saves (docs/PERFORMANCE.md, "Why the defaults are what they are").
LIGHT_MODEL_RUN_S = 0.002


def settled_threads(
    settings: BackendSettings, threads: int, cpu_only: bool, batch_one_seconds: Callable[[], float], model: str
) -> int:
    """The threads per instance a model keeps once warm: `threads`, or 1 when they were chosen
    automatically for a CPU-only model whose warm batch-1 run (`batch_one_seconds()`, measured only
    then) is under LIGHT_MODEL_RUN_S."""
    if threads <= 1 or settings.intra_op_threads != 0 or not cpu_only:
        return threads
    run_s = batch_one_seconds()
    if run_s >= LIGHT_MODEL_RUN_S:
        return threads
    log.info("model %s: %.2f ms a batch-1 run: one ONNX Runtime thread", model, 1e3 * run_s)
    return 1


#: The providers that mean "this session computes on the GPU".
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def check_providers(device: Device, actual: Sequence[str], model_path: Path) -> None:
    """Refuse a GPU instance whose session fell back to the CPU (ONNX Runtime does so silently when
    the CUDA EP cannot start, e.g. missing CUDA/cuDNN libraries). Raises ValueError saying so."""
    if device.gpu is not None and not any(name in actual for name in GPU_PROVIDERS):
        raise ValueError(
            f"{model_path.name} was placed on {device.label} but ONNX Runtime runs it with {list(actual)} "
            "only: the CUDA EP did not start (CUDA 13 / cuDNN 9 libraries missing? install the `gpu` extra, "
            "see the server log); use KIND_CPU to serve it on the CPU"
        )


@functools.cache
def preload_cuda_libraries() -> None:
    """Load the CUDA/cuDNN libraries of the nvidia-* wheels once, before the first GPU session
    (onnxruntime-gpu >= 1.21 has `preload_dlls`; a pip-only CUDA host has them nowhere else)."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload()
    except Exception as error:  # the CUDA EP may still find the libraries; check_providers says if not
        log.warning("onnxruntime.preload_dlls() failed: %s", error)


def _spec(arg: Any) -> TensorSpec:
    shape = tuple(dim if isinstance(dim, int) else -1 for dim in arg.shape)
    return TensorSpec(arg.name, shape, _ORT_TYPES.get(arg.type, mc.TYPE_INVALID))


class OnnxRuntimeBackend:
    """One ONNX Runtime session on one device."""

    def __init__(
        self, path: Path, device: Device, settings: BackendSettings, threads: int, content: bytes | None = None
    ) -> None:
        """`content`: the model's bytes when the caller already read (and checked) `path`; ONNX Runtime then
        opens nothing itself (`path` still places the TensorRT EP's cache)."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads if device.gpu is None else 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if settings.spin_wait else "0")
        options.log_severity_level = 3
        if device.gpu is not None:
            preload_cuda_libraries()
        available = ort.get_available_providers()
        providers = providers_for(device, available, settings, path, device.gpu is not None and tensorrt_loadable())
        self.session = ort.InferenceSession(
            str(path) if content is None else content,
            sess_options=options,
            providers=[name for name, _ in providers],
            provider_options=[opts for _, opts in providers],
        )
        self.providers = tuple(self.session.get_providers())
        check_providers(device, self.providers, path)
        self.inputs = tuple(_spec(arg) for arg in self.session.get_inputs())
        self.outputs = tuple(_spec(arg) for arg in self.session.get_outputs())
        self._output_names = [spec.name for spec in self.outputs]
        self.threads = options.intra_op_num_threads

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the session; ONNX Runtime releases the GIL while it computes."""
        values = self.session.run(self._output_names, inputs)  # type: ignore[arg-type]
        return dict(zip(self._output_names, values, strict=True))

    def close(self) -> None:
        del self.session
