"""Tensor signatures and the data-type tables: what export declares, serving checks and clients send.

Three spellings of one data type meet here: Triton's config enum (`TYPE_FP32`), the Open
Inference Protocol's string (`"FP32"`) and numpy's dtype. BYTES/STRING tensors have no numpy
fixed-size dtype; they are `object` arrays of `bytes` at the core's boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protos.inference import model_config_pb2 as mc

#: Triton config enum -> numpy dtype. BF16 has no numpy dtype and is not listed.
NUMPY_DTYPES: dict[int, np.dtype] = {
    mc.TYPE_BOOL: np.dtype(np.bool_),
    mc.TYPE_UINT8: np.dtype(np.uint8),
    mc.TYPE_UINT16: np.dtype(np.uint16),
    mc.TYPE_UINT32: np.dtype(np.uint32),
    mc.TYPE_UINT64: np.dtype(np.uint64),
    mc.TYPE_INT8: np.dtype(np.int8),
    mc.TYPE_INT16: np.dtype(np.int16),
    mc.TYPE_INT32: np.dtype(np.int32),
    mc.TYPE_INT64: np.dtype(np.int64),
    mc.TYPE_FP16: np.dtype(np.float16),
    mc.TYPE_FP32: np.dtype(np.float32),
    mc.TYPE_FP64: np.dtype(np.float64),
    mc.TYPE_STRING: np.dtype(object),
}

#: Triton config enum -> Open Inference Protocol datatype string.
PROTOCOL_DATATYPES: dict[int, str] = {
    mc.TYPE_BOOL: "BOOL",
    mc.TYPE_UINT8: "UINT8",
    mc.TYPE_UINT16: "UINT16",
    mc.TYPE_UINT32: "UINT32",
    mc.TYPE_UINT64: "UINT64",
    mc.TYPE_INT8: "INT8",
    mc.TYPE_INT16: "INT16",
    mc.TYPE_INT32: "INT32",
    mc.TYPE_INT64: "INT64",
    mc.TYPE_FP16: "FP16",
    mc.TYPE_FP32: "FP32",
    mc.TYPE_FP64: "FP64",
    mc.TYPE_STRING: "BYTES",
    mc.TYPE_BF16: "BF16",
}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model: what the export declares, config.pbtxt carries, the server checks
    and a client sees.

    `shape` excludes the batch axis when the model batches (Triton's `dims`); -1 = any size.
    (A backend's own declaration includes its batch axis.) `data_type` is the Triton config
    enum (`model_config_pb2.TYPE_FP32`, ...). `label_filename` is set on classification outputs.
    """

    name: str
    shape: tuple[int, ...]
    data_type: int = mc.TYPE_FP32
    label_filename: str = ""

    @property
    def dtype(self) -> np.dtype:
        """numpy dtype of the tensor (object for BYTES)."""
        return NUMPY_DTYPES[self.data_type]

    @property
    def datatype(self) -> str:
        """Open Inference Protocol datatype string ("FP32", "BYTES", ...)."""
        return PROTOCOL_DATATYPES[self.data_type]

    def accepts(self, shape: tuple[int, ...]) -> bool:
        """Whether a per-item shape (batch axis removed) matches this spec (-1 matches any size)."""
        return len(shape) == len(self.shape) and all(
            want in (-1, got) for want, got in zip(self.shape, shape, strict=True)
        )


_CONFIG_TYPE_OF_NUMPY = {dtype: code for code, dtype in NUMPY_DTYPES.items()}


def config_type_of(dtype: np.dtype) -> int:
    """The Triton config enum for a numpy dtype; raises KeyError for dtypes Triton lacks."""
    return _CONFIG_TYPE_OF_NUMPY[np.dtype(dtype)]
