"""Unit tests of the Open Inference Protocol tensor codec: wire bytes <-> numpy, checks before allocation."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from contract.v2_codec import (
    DATATYPES,
    CodecError,
    WireSpec,
    datatype_of,
    decode_input,
    encode_raw,
)
from protos.inference import grpc_service_pb2 as pb

IMAGES = WireSpec("images", "FP32", (-1, 3, 2, 2))


def decode(datatype: str, shape: list[int], spec: WireSpec = IMAGES, *, raw=None, contents=None):
    return decode_input(spec.name, datatype, shape, spec, raw=raw, contents=contents)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2),
        np.arange(6, dtype=np.int64).reshape(2, 3) - 3,
        np.array([[1, 250]], dtype=np.uint8),
        np.array([True, False, True]),
        np.linspace(-2, 2, 8, dtype=np.float16),
        np.arange(5, dtype=np.float64) / 3,
        np.array([-7, 9], dtype=np.int16),
    ],
)
def test_raw_round_trip_keeps_values_dtype_and_shape(array: np.ndarray) -> None:
    datatype = datatype_of(array)
    spec = WireSpec("x", datatype, (-1,) + array.shape[1:])
    out = decode(datatype, list(array.shape), spec, raw=encode_raw(array, datatype))
    assert out.dtype == array.dtype and out.shape == array.shape
    np.testing.assert_array_equal(out, array)


def test_raw_bytes_are_little_endian_row_major() -> None:
    array = np.array([[1, 2], [3, 4]], dtype=">i4")  # big-endian in memory
    assert encode_raw(array, "INT32") == struct.pack("<4i", 1, 2, 3, 4)


def test_bytes_elements_are_length_prefixed_little_endian() -> None:
    raw = encode_raw(np.array([b"ab", "\u00e9", b""], dtype=object), "BYTES")
    assert raw == b"\x02\x00\x00\x00ab" + b"\x02\x00\x00\x00\xc3\xa9" + b"\x00\x00\x00\x00"
    out = decode("BYTES", [3], WireSpec("s", "BYTES", (-1,)), raw=raw)
    assert out.tolist() == [b"ab", "\u00e9".encode(), b""]


def test_bf16_is_widened_exactly_and_rounded_to_nearest_even() -> None:
    values = np.array([1.0, -2.5, 3.140625, 65280.0], dtype=np.float32)  # exactly representable
    raw = encode_raw(values, "BF16")
    assert len(raw) == 2 * values.size
    out = decode("BF16", [4], WireSpec("b", "BF16", (-1,)), raw=raw)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, values)
    halfway = np.array([1.0 + 2.0**-8], dtype=np.float32)  # ties to even -> 1.0
    assert encode_raw(halfway, "BF16") == encode_raw(np.array([1.0], dtype=np.float32), "BF16")


def test_typed_contents_decode_to_the_compute_dtype() -> None:
    contents = pb.InferTensorContents(fp32_contents=[float(i) for i in range(12)])
    out = decode("FP32", [1, 3, 2, 2], contents=contents)
    assert out.dtype == np.float32 and out.shape == (1, 3, 2, 2)
    assert out[0, 2, 1, 1] == 11.0
    ints = decode("INT8", [2], WireSpec("i", "INT8", (2,)), contents=pb.InferTensorContents(int_contents=[-1, 5]))
    assert ints.dtype == np.int8 and ints.tolist() == [-1, 5]
    strings = pb.InferTensorContents(bytes_contents=[b"x", b"yz"])
    assert decode("BYTES", [2, 1], WireSpec("s", "BYTES", (-1, 1)), contents=strings).tolist() == [[b"x"], [b"yz"]]


def test_wrong_datatype_names_tensor_and_expected_type() -> None:
    with pytest.raises(CodecError, match=r"input 'images': datatype FP64, the model expects FP32"):
        decode("FP64", [1, 3, 2, 2], raw=bytes(96))


def test_wrong_shape_names_tensor_and_expected_shape() -> None:
    with pytest.raises(CodecError, match=r"input 'images': shape \[1, 3, 4, 4\] does not match .*\[-1, 3, 2, 2\]"):
        decode("FP32", [1, 3, 4, 4], raw=bytes(192))
    with pytest.raises(CodecError, match="shape"):
        decode("FP32", [3, 2, 2], raw=bytes(48))
    with pytest.raises(CodecError, match="shape"):
        decode("FP32", [-1, 3, 2, 2], raw=bytes(48))


def test_byte_size_mismatch_is_refused() -> None:
    with pytest.raises(CodecError, match=r"input 'images': 47 bytes of raw data, expected 48"):
        decode("FP32", [1, 3, 2, 2], raw=bytes(47))


def test_huge_declared_shape_is_refused_without_allocating() -> None:
    spec = WireSpec("x", "FP32", (-1, -1))
    with pytest.raises(CodecError, match="expected 4000000000000000000000 "):
        decode("FP32", [10**12, 10**9], spec, raw=bytes(8))
    strings = WireSpec("s", "BYTES", (-1,))
    with pytest.raises(CodecError, match="cannot hold 1000000000000 BYTES elements"):
        decode("BYTES", [10**12], strings, raw=bytes(8))
    with pytest.raises(CodecError, match="2 values in contents.fp32_contents, the shape needs"):
        decode("FP32", [10**12, 10**9], spec, contents=pb.InferTensorContents(fp32_contents=[1, 2]))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x05\x00\x00\x00abcd", "claims 5 bytes, only 4 remain"),
        (b"\x03\x00\x00\x00abc\x01", "raw data ends before BYTES element 1"),
        (b"\x01\x00\x00\x00a\x00\x00\x00\x00zz", "2 bytes left after 2 BYTES elements"),
    ],
)
def test_malformed_bytes_payloads_are_refused(raw: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        decode("BYTES", [2], WireSpec("s", "BYTES", (-1,)), raw=raw)


def test_fp16_and_bf16_travel_raw_only() -> None:
    for datatype in ("FP16", "BF16"):
        spec = WireSpec("h", datatype, (2,))
        with pytest.raises(CodecError, match=f"{datatype} has no typed contents; send it in raw_input_contents"):
            decode(datatype, [2], spec, contents=pb.InferTensorContents(fp32_contents=[1, 2]))


def test_missing_data_is_refused() -> None:
    with pytest.raises(CodecError, match="input 'images': no data"):
        decode("FP32", [1, 3, 2, 2])


def test_typed_fields_follow_the_specification() -> None:
    fields = {field.name for field in pb.InferTensorContents.DESCRIPTOR.fields}
    assert {d.contents_field for d in DATATYPES.values() if d.contents_field} <= fields
    with pytest.raises(CodecError, match="complex64"):
        datatype_of(np.zeros(1, dtype=np.complex64))
