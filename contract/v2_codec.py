"""Open Inference Protocol tensors <-> numpy arrays, checked before anything is allocated.

Wire rules (KServe v2 / Triton): raw contents are little-endian, row-major, without padding;
a BYTES element is a 4-byte little-endian length followed by that many bytes; FP16 and BF16
have no typed `contents` field and travel raw only. BF16 has no numpy type, so it is widened to
float32 on the way in (exact) and rounded to nearest-even on the way out.

Every check runs on the declared shape and the bytes actually received, before any array is
built, so a request claiming a huge shape costs nothing; errors are CodecError naming the
tensor and what was expected. Shared by the server (serving.api.v2_infer) and the clients
(clients.v2); the server answers a CodecError as INVALID_ARGUMENT.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

_LENGTH = struct.Struct("<I")


class CodecError(ValueError):
    """A tensor that breaks the wire rules or its declaration; the message names the tensor."""


@dataclass(frozen=True)
class Datatype:
    """One v2 datatype: its wire layout, the numpy dtype the server computes with, its typed field."""

    name: str
    wire: np.dtype            # element layout on the wire (object for BYTES)
    compute: np.dtype         # dtype of the decoded array
    contents_field: str | None  # InferTensorContents field; None = raw only


def _dt(name: str, wire: str, compute: str, field: str | None) -> Datatype:
    return Datatype(name, np.dtype(wire), np.dtype(compute), field)


DATATYPES: dict[str, Datatype] = {
    d.name: d
    for d in (
        _dt("BOOL", "?", "?", "bool_contents"),
        _dt("UINT8", "u1", "u1", "uint_contents"),
        _dt("UINT16", "<u2", "u2", "uint_contents"),
        _dt("UINT32", "<u4", "u4", "uint_contents"),
        _dt("UINT64", "<u8", "u8", "uint64_contents"),
        _dt("INT8", "i1", "i1", "int_contents"),
        _dt("INT16", "<i2", "i2", "int_contents"),
        _dt("INT32", "<i4", "i4", "int_contents"),
        _dt("INT64", "<i8", "i8", "int64_contents"),
        _dt("FP16", "<f2", "f2", None),
        _dt("BF16", "<u2", "f4", None),
        _dt("FP32", "<f4", "f4", "fp32_contents"),
        _dt("FP64", "<f8", "f8", "fp64_contents"),
        _dt("BYTES", "O", "O", "bytes_contents"),
    )
}

_BY_NUMPY = {d.compute: d.name for d in DATATYPES.values() if d.name != "BF16"}


def datatype_of(array: np.ndarray) -> str:
    """The v2 datatype name of a numpy array (object and bytes arrays are BYTES)."""
    if array.dtype.kind in "OSU":
        return "BYTES"
    try:
        return _BY_NUMPY[array.dtype.newbyteorder("=")]
    except KeyError:
        raise CodecError(f"arrays of dtype {array.dtype} have no Open Inference Protocol datatype") from None


@dataclass(frozen=True)
class WireSpec:
    """What the wire must carry for one tensor: v2 datatype and full shape (batch axis included),
    -1 for a variable dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]


class TensorContents(Protocol):
    """The typed-contents message (inference.InferTensorContents); only attribute access is used."""

    def __getattr__(self, field: str) -> Sequence: ...


def check_shape(kind: str, name: str, shape: Sequence[int], spec: WireSpec) -> int:
    """Check `shape` against `spec` and return its element count. `kind` is "input" or "output"."""
    matches = len(shape) == len(spec.shape) and all(
        dim >= 0 and want in (-1, dim) for dim, want in zip(shape, spec.shape, strict=True)
    )
    if not matches:
        raise CodecError(
            f"{kind} '{name}': shape {list(shape)} does not match the model's {list(spec.shape)} "
            "(-1 = any size)"
        )
    return math.prod(shape)


def decode_input(
    name: str,
    datatype: str,
    shape: Sequence[int],
    spec: WireSpec,
    *,
    raw: bytes | None,
    contents: TensorContents | None,
) -> np.ndarray:
    """One request tensor as an array of `spec`'s shape and compute dtype.

    Exactly one of `raw` (its raw_input_contents entry) and `contents` (typed) carries the data.
    Datatype, shape and byte size are checked against `spec` and each other before decoding.
    """
    if datatype != spec.datatype:
        raise CodecError(f"input '{name}': datatype {datatype or '(empty)'}, the model expects {spec.datatype}")
    count = check_shape("input", name, shape, spec)
    kind = DATATYPES[datatype]
    if raw is not None:
        flat = decode_raw(name, kind, raw, count)
    elif contents is not None:
        flat = _decode_typed(name, kind, contents, count)
    else:
        raise CodecError(f"input '{name}': no data; send it in raw_input_contents or in contents")
    return flat.reshape(tuple(shape))


def decode_raw(name: str, kind: Datatype, raw: bytes, count: int) -> np.ndarray:
    """A flat array of `count` elements from raw wire bytes, after checking the byte size."""
    if kind.name == "BYTES":
        return _decode_bytes(name, raw, count)
    expected = count * kind.wire.itemsize
    if len(raw) != expected:
        raise CodecError(
            f"input '{name}': {len(raw)} bytes of raw data, expected {expected} "
            f"({count} {kind.name} elements of {kind.wire.itemsize} bytes)"
        )
    wire = np.frombuffer(raw, dtype=kind.wire)
    if kind.name == "BF16":
        return (wire.astype(np.uint32) << 16).view(np.float32)
    return wire.astype(kind.compute, copy=False)


def _decode_bytes(name: str, raw: bytes, count: int) -> np.ndarray:
    if count * _LENGTH.size > len(raw):
        raise CodecError(
            f"input '{name}': {len(raw)} bytes cannot hold {count} BYTES elements "
            "(each needs a 4-byte little-endian length prefix)"
        )
    out = np.empty(count, dtype=object)
    offset = 0
    for index in range(count):
        if offset + _LENGTH.size > len(raw):
            raise CodecError(f"input '{name}': raw data ends before BYTES element {index} of {count}")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        if offset + length > len(raw):
            raise CodecError(
                f"input '{name}': BYTES element {index} claims {length} bytes, only {len(raw) - offset} remain"
            )
        out[index] = raw[offset : offset + length]
        offset += length
    if offset != len(raw):
        raise CodecError(f"input '{name}': {len(raw) - offset} bytes left after {count} BYTES elements")
    return out


def _decode_typed(name: str, kind: Datatype, contents: TensorContents, count: int) -> np.ndarray:
    if kind.contents_field is None:
        raise CodecError(f"input '{name}': {kind.name} has no typed contents; send it in raw_input_contents")
    values = getattr(contents, kind.contents_field)
    if len(values) != count:
        raise CodecError(
            f"input '{name}': {len(values)} values in contents.{kind.contents_field}, the shape needs {count}"
        )
    if kind.name == "BYTES":
        out = np.empty(count, dtype=object)
        out[:] = list(values)
        return out
    return np.asarray(values, dtype=kind.compute)


def encode_raw(array: np.ndarray, datatype: str) -> bytes:
    """Raw wire bytes of `array` as `datatype` (BYTES: length-prefixed elements; str as UTF-8)."""
    kind = DATATYPES[datatype]
    if kind.name == "BYTES":
        return b"".join(_length_prefixed(item) for item in np.asarray(array, dtype=object).reshape(-1))
    if kind.name == "BF16":
        bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        return rounded.astype("<u2").tobytes()
    return np.ascontiguousarray(array, dtype=kind.wire).tobytes()


def _length_prefixed(item: object) -> bytes:
    data = item.encode() if isinstance(item, str) else bytes(item)  # type: ignore[call-overload]
    return _LENGTH.pack(len(data)) + data
