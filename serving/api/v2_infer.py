"""ModelInfer: an Open Inference Protocol request -> the model's batcher -> a response.

The same `ServedModel.infer` (and so the same dynamic batcher) serves v2 and task requests, and the
same `model.request` block counts each request once, from decoding to the encoded response.
Everything a client sent is checked before any array is built (contract.v2_codec). Task
models whose input is `images` also take that input as BYTES, one encoded JPEG/PNG/WebP image
per element (shape [B] or [B, 1]), decoded and preprocessed by the task layer exactly as the
task API does. An output requested with parameter `classification` = k answers Triton's
classification extension (serving.api.v2_classification). An input or output with parameters
`shared_memory_region` / `shared_memory_byte_size` / `shared_memory_offset` is read from or written
to a registered system shared memory region (serving.api.shm) instead of the message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from contract.names import IMAGES, PREPROCESSING_PARAMETER
from contract.tensors import TensorSpec
from contract.v2_codec import CodecError, WireSpec, datatype_of, decode_input, encode_raw
from protos.inference import grpc_service_pb2 as pb
from serving.api.shm import SharedMemoryRef, SharedMemoryRegistry
from serving.api.v2_classification import top_k_strings
from serving.deferred import DeferredRows
from serving.errors import InvalidArgument, ResourceExhausted
from serving.images import EncodedImage, ImageLimits
from serving.models import ModelManager, ServedModel
from serving.repository import is_version_name
from serving.tasks.common import prepare_images, preprocessing_from

SHM_REGION, SHM_BYTE_SIZE, SHM_OFFSET = "shared_memory_region", "shared_memory_byte_size", "shared_memory_offset"


@dataclass(frozen=True)
class InputLimits:
    """Limits on what a request may carry beyond tensor sizes (those the gRPC message size bounds)."""

    images: ImageLimits
    max_images_per_request: int


@dataclass(frozen=True)
class RequestedOutput:
    """An output to return; `classification` > 0 asks for the top-k "score:index:label" strings;
    `shared_memory` says where to write it instead of the response."""

    name: str
    classification: int = 0
    shared_memory: SharedMemoryRef | None = None


@dataclass(frozen=True)
class DecodedRequest:
    """A validated v2 request: the model, its input arrays (or deferred image rows) by name, the outputs
    to return."""

    model: ServedModel
    inputs: dict[str, np.ndarray | DeferredRows]
    outputs: tuple[RequestedOutput, ...]
    id: str


def parse_version(version: str) -> int:
    """A v2 version string ("" = newest ready, else a positive integer in ASCII digits) as the manager's int."""
    if not version:
        return 0
    if not is_version_name(version) or int(version) < 1:
        raise InvalidArgument(f"model version '{version}' is not a positive integer")
    return int(version)


def wire_spec(model: ServedModel, tensor: TensorSpec) -> WireSpec:
    """The v2 view of a model tensor: datatype name and full shape (-1 batch axis when it batches)."""
    lead = (-1,) if model.max_batch_size > 0 else ()
    return WireSpec(tensor.name, tensor.datatype, lead + tensor.shape)


def takes_encoded_images(model: ServedModel) -> bool:
    """Whether the model's `images` input may be sent as encoded image bytes."""
    return bool(model.task) and PREPROCESSING_PARAMETER in model.parameters and any(
        t.name == IMAGES for t in model.inputs
    )


async def decode_request(
    request: pb.ModelInferRequest, model: ServedModel, limits: InputLimits, regions: SharedMemoryRegistry
) -> DecodedRequest:
    """Decode every input for `model`; raises the core's domain errors (InvalidArgument, NotFound for an
    unknown shared memory region...)."""
    inputs = await _decode_inputs(request, model, limits, regions)
    outputs = _requested_outputs(request.outputs, model)
    return DecodedRequest(model=model, inputs=inputs, outputs=outputs, id=request.id)


async def _decode_inputs(
    request: pb.ModelInferRequest, model: ServedModel, limits: InputLimits, regions: SharedMemoryRegistry
) -> dict[str, np.ndarray | DeferredRows]:
    """raw_input_contents holds one entry per input that is not in shared memory, in input order."""
    raw = list(request.raw_input_contents)
    in_memory = {t.name: _shared_memory_ref(f"input '{t.name}'", t.parameters) for t in request.inputs}
    carried = sum(ref is None for ref in in_memory.values())
    if raw and len(raw) != carried:
        raise InvalidArgument(
            f"{len(raw)} raw_input_contents for {carried} inputs not in shared memory; send one per such input"
        )
    if raw and any(tensor.HasField("contents") for tensor in request.inputs):
        raise InvalidArgument("use either raw_input_contents or contents for every input, not both")
    declared = {t.name: t for t in model.inputs}
    names = [tensor.name for tensor in request.inputs]
    if sorted(names) != sorted(declared):
        raise InvalidArgument(
            f"model '{model.name}' takes inputs {sorted(declared)}, the request has {names}"
        )
    decoded: dict[str, np.ndarray | DeferredRows] = {}
    payloads = iter(raw)
    for tensor in request.inputs:
        ref = in_memory[tensor.name]
        if ref is not None:
            payload: bytes | None = regions.read(ref, f"input '{tensor.name}'")
        else:
            payload = next(payloads, None)
        contents = tensor.contents if tensor.HasField("contents") and ref is None else None
        if tensor.datatype == "BYTES" and tensor.name == IMAGES and takes_encoded_images(model):
            decoded[tensor.name] = await _decode_images(tensor, payload, contents, model, limits)
            continue
        spec = declared[tensor.name]
        decoded[tensor.name] = _decode_input(
            tensor.name, tensor.datatype, tensor.shape, wire_spec(model, spec),
            raw=payload, contents=contents,
        )
    return decoded


def _decode_input(
    name: str,
    datatype: str,
    shape: Sequence[int],
    spec: WireSpec,
    *,
    raw: bytes | None,
    contents: pb.InferTensorContents | None,
) -> np.ndarray:
    """contract.v2_codec.decode_input, its CodecError raised as the core's InvalidArgument."""
    try:
        return decode_input(name, datatype, shape, spec, raw=raw, contents=contents)
    except CodecError as error:
        raise InvalidArgument(str(error)) from None


async def _decode_images(
    tensor: pb.ModelInferRequest.InferInputTensor,
    payload: bytes | None,
    contents: pb.InferTensorContents | None,
    model: ServedModel,
    limits: InputLimits,
) -> np.ndarray | DeferredRows:
    """Encoded images (BYTES [B] or [B, 1]) -> the model's preprocessed float32 (B, 3, H, W), maybe still
    to be decoded on the instance thread (DeferredRows)."""
    shape = list(tensor.shape)
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1) or min(shape, default=0) < 1:
        raise InvalidArgument(
            f"input '{IMAGES}': encoded images need shape [B] or [B, 1] (one image per element), got {shape}"
        )
    spec = WireSpec(IMAGES, "BYTES", tuple(shape))
    if shape[0] > limits.max_images_per_request:
        raise ResourceExhausted(
            f"input '{IMAGES}': {shape[0]} images exceed the limit of {limits.max_images_per_request} per request"
        )
    blobs = _decode_input(IMAGES, "BYTES", shape, spec, raw=payload, contents=contents).reshape(-1)
    batch = await prepare_images(
        [EncodedImage(bytes(blob)) for blob in blobs], preprocessing_from(model.parameters, model.name), limits.images
    )
    return batch.tensor


def _requested_outputs(
    requested: Sequence[pb.ModelInferRequest.InferRequestedOutputTensor], model: ServedModel
) -> tuple[RequestedOutput, ...]:
    declared = [t.name for t in model.outputs]
    if not requested:
        return tuple(RequestedOutput(name) for name in declared)
    outputs: list[RequestedOutput] = []
    for output in requested:
        if output.name not in declared:
            raise InvalidArgument(f"model '{model.name}' has no output '{output.name}'; it has {declared}")
        if any(earlier.name == output.name for earlier in outputs):
            raise InvalidArgument(f"output '{output.name}' is requested twice; ask for each output once")
        count = 0
        if "classification" in output.parameters:
            count = _int_parameter(output.parameters["classification"], f"output '{output.name}' classification")
            if count < 1:
                raise InvalidArgument(f"output '{output.name}': classification count must be at least 1, got {count}")
        window = _shared_memory_ref(f"output '{output.name}'", output.parameters)
        outputs.append(RequestedOutput(output.name, count, window))
    return tuple(outputs)


def _int_parameter(parameter: pb.InferParameter, what: str) -> int:
    choice = parameter.WhichOneof("parameter_choice")
    if choice in ("int64_param", "uint64_param"):
        return int(getattr(parameter, choice))
    raise InvalidArgument(f"{what} must be an integer parameter, got {choice or 'nothing'}")


def _shared_memory_ref(what: str, parameters: Mapping[str, pb.InferParameter]) -> SharedMemoryRef | None:
    """The tensor's shared memory window from its parameters, or None when it travels in the message."""
    if SHM_REGION not in parameters:
        if SHM_BYTE_SIZE in parameters or SHM_OFFSET in parameters:
            raise InvalidArgument(f"{what}: {SHM_BYTE_SIZE}/{SHM_OFFSET} given without {SHM_REGION}")
        return None
    region = parameters[SHM_REGION]
    if region.WhichOneof("parameter_choice") != "string_param":
        raise InvalidArgument(f"{what}: {SHM_REGION} must be a string parameter")
    if SHM_BYTE_SIZE not in parameters:
        raise InvalidArgument(f"{what}: {SHM_REGION} needs {SHM_BYTE_SIZE}")
    size = _int_parameter(parameters[SHM_BYTE_SIZE], f"{what} {SHM_BYTE_SIZE}")
    offset = _int_parameter(parameters[SHM_OFFSET], f"{what} {SHM_OFFSET}") if SHM_OFFSET in parameters else 0
    return SharedMemoryRef(region.string_param, offset, size)


def encode_response(
    request: DecodedRequest, outputs: Mapping[str, np.ndarray], regions: SharedMemoryRegistry
) -> pb.ModelInferResponse:
    """Requested outputs as raw_output_contents, in the order they were requested. An output written to
    shared memory gets an empty raw entry (so the others keep their positions) and its window as parameters."""
    model = request.model
    response = pb.ModelInferResponse(model_name=model.name, model_version=str(model.version), id=request.id)
    labelled = {t.name for t in model.outputs if t.label_filename}
    for wanted in request.outputs:
        array = outputs[wanted.name]
        if wanted.classification:
            labels = model.labels if wanted.name in labelled else ()
            array = top_k_strings(wanted.name, array, wanted.classification, labels, model.max_batch_size > 0)
        datatype = datatype_of(array)
        tensor = response.outputs.add(name=wanted.name, datatype=datatype, shape=array.shape)
        data = encode_raw(array, datatype)
        ref = wanted.shared_memory
        if ref is not None:
            regions.write(ref, data, f"output '{wanted.name}'")
            tensor.parameters[SHM_REGION].string_param = ref.region
            tensor.parameters[SHM_BYTE_SIZE].int64_param = len(data)
            tensor.parameters[SHM_OFFSET].int64_param = ref.offset
            data = b""
        response.raw_output_contents.append(data)
    return response


async def infer(
    request: pb.ModelInferRequest,
    manager: ModelManager,
    limits: InputLimits,
    deadline: float | None,
    regions: SharedMemoryRegistry,
) -> pb.ModelInferResponse:
    """Find the model; decode, run through its batcher, encode, counted as one request of it. Raises the
    core's domain errors."""
    model = manager.get(request.model_name, parse_version(request.model_version))
    with model.request(deadline):
        decoded = await decode_request(request, model, limits, regions)
        outputs = await model.infer(decoded.inputs, deadline)
        return encode_response(decoded, outputs, regions)

