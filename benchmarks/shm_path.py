"""The system shared memory path of the benchmark: the same v2 tensors, but handed over in /dev/shm.

`shared_memory_target` writes the input arrays into one /dev/shm object (as
tritonclient.utils.shared_memory does), registers it and an output object on the server over gRPC,
and yields the v2 target whose requests carry only region windows; everything is unregistered and
removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import grpc
import numpy as np

from clients.bench.targets import SharedMemoryTensor, Target, v2_shm_target
from contract.v2_codec import datatype_of, encode_raw
from protos.inference import grpc_service_pb2 as v2
from protos.inference import grpc_service_pb2_grpc as v2_grpc


@contextlib.contextmanager
def _shm_object(key: str, data: bytes) -> Iterator[None]:
    path = Path("/dev/shm") / key
    path.write_bytes(data)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def shared_memory_target(
    server: str, model: str, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, int]
) -> Iterator[Target]:
    """A v2 target for `model` on `server` with `inputs` in one region and `outputs` (name -> byte size) in another."""
    tag = f"ninefold_bench_{os.getpid()}"
    raw = {name: encode_raw(array, datatype_of(array)) for name, array in inputs.items()}
    tensors_in, offset = [], 0
    for name, array in inputs.items():
        tensors_in.append(SharedMemoryTensor(name, f"{tag}_in", len(raw[name]), offset, datatype_of(array),
                                             tuple(array.shape)))
        offset += len(raw[name])
    tensors_out, out_size = [], 0
    for name, size in outputs.items():
        tensors_out.append(SharedMemoryTensor(name, f"{tag}_out", size, out_size))
        out_size += size
    regions = {f"{tag}_in": b"".join(raw.values()), f"{tag}_out": bytes(out_size)}
    with grpc.insecure_channel(server) as channel, contextlib.ExitStack() as stack:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        for name, data in regions.items():
            stack.enter_context(_shm_object(name, data))
            stub.SystemSharedMemoryRegister(
                v2.SystemSharedMemoryRegisterRequest(name=name, key=f"/{name}", byte_size=len(data)), timeout=10)
            stack.callback(stub.SystemSharedMemoryUnregister, v2.SystemSharedMemoryUnregisterRequest(name=name))
        yield v2_shm_target(model, tensors_in, tensors_out)
