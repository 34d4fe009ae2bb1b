"""ONNX Runtime backend: one InferenceSession per instance, providers chosen per device.

`providers_for` and `intra_op_threads` are pure (unit-tested on CPU with fake devices); only
`OnnxRuntimeBackend` touches the runtime.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from protos.inference import model_config_pb2 as mc
from serving.backends import BackendSettings
from serving.placement import Device
from serving.tensors import TensorSpec

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
    device: Device, available: Sequence[str], settings: BackendSettings, model_path: Path
) -> list[tuple[str, dict[str, Any]]]:
    """Execution providers (with options) in priority order for one instance.

    GPU: TensorRT EP (engine + timing cache, fp16 per settings) when the wheel has it, then the
    CUDA EP on the same device, then CPU for unsupported ops. CPU: the CPU EP only.
    Raises ValueError when a GPU instance is asked of a wheel without CUDA.
    """
    if device.gpu is None:
        return [("CPUExecutionProvider", {})]
    if "CUDAExecutionProvider" not in available:
        raise ValueError("this onnxruntime has no CUDAExecutionProvider; install the `gpu` extra")
    device_id = device.gpu.index
    providers: list[tuple[str, dict[str, Any]]] = []
    if "TensorrtExecutionProvider" in available:
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
    """Threads per CPU instance: the setting, or the machine's cores shared among the instances."""
    if settings.intra_op_threads > 0:
        return settings.intra_op_threads
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, cpu_instances))


def _spec(arg: Any) -> TensorSpec:
    shape = tuple(dim if isinstance(dim, int) else -1 for dim in arg.shape)
    return TensorSpec(arg.name, _ORT_TYPES.get(arg.type, mc.TYPE_INVALID), shape)


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
        providers = providers_for(device, ort.get_available_providers(), settings, path)
        self._session = ort.InferenceSession(
            str(path) if content is None else content,
            sess_options=options,
            providers=[name for name, _ in providers],
            provider_options=[opts for _, opts in providers],
        )
        self.inputs = tuple(_spec(arg) for arg in self._session.get_inputs())
        self.outputs = tuple(_spec(arg) for arg in self._session.get_outputs())
        self._output_names = [spec.name for spec in self.outputs]
        self.threads = options.intra_op_num_threads

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the session; ONNX Runtime releases the GIL while it computes."""
        values = self._session.run(self._output_names, inputs)  # type: ignore[arg-type]
        return dict(zip(self._output_names, values, strict=True))

    def close(self) -> None:
        del self._session
