"""ModelInfer: an Open Inference Protocol request -> the model's batcher -> a response.

The same `ServedModel.infer` (and so the same dynamic batcher) serves v2 and task requests.
Everything a client sent is checked before any array is built (serving.api.v2_codec). Task
models whose input is `images` also take that input as BYTES, one encoded JPEG/PNG/WebP image
per element (shape [B] or [B, 1]), decoded and preprocessed by the task layer exactly as the
task API does. An output requested with parameter `classification` = k answers Triton's
classification extension (serving.api.v2_classification).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from protos.inference import grpc_service_pb2 as pb
from serving.api.v2_classification import top_k_strings
from serving.api.v2_codec import WireSpec, datatype_of, decode_input, encode_raw
from serving.deferred import DeferredRows
from serving.errors import InvalidArgument, ResourceExhausted
from serving.images import EncodedImage, ImageLimits
from serving.models import ModelManager, ServedModel
from serving.repository import is_version_name
from serving.tasks.common import prepare_images, preprocessing_from
from serving.tensors import TensorSpec

#: The input name a task model's images arrive under (docs/MODEL_REPOSITORY.md).
IMAGE_INPUT = "images"
_SHARED_MEMORY = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")


@dataclass(frozen=True)
class InputLimits:
    """Limits on what a request may carry beyond tensor sizes (those the gRPC message size bounds)."""

    images: ImageLimits
    max_images_per_request: int


@dataclass(frozen=True)
class RequestedOutput:
    """An output to return; `classification` > 0 asks for the top-k "score:index:label" strings."""

    name: str
    classification: int = 0


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
    return bool(model.task) and "preprocessing" in model.parameters and any(
        t.name == IMAGE_INPUT for t in model.inputs
    )


async def decode_request(request: pb.ModelInferRequest, manager: ModelManager, limits: InputLimits) -> DecodedRequest:
    """Find the model and decode every input; raises the core's domain errors (NotFound, InvalidArgument...)."""
    model = manager.get(request.model_name, parse_version(request.model_version))
    try:
        inputs = await _decode_inputs(request, model, limits)
        outputs = _requested_outputs(request.outputs, model)
    except (InvalidArgument, ResourceExhausted) as error:
        model.record_failure(error.reason)
        raise
    return DecodedRequest(model=model, inputs=inputs, outputs=outputs, id=request.id)


async def _decode_inputs(
    request: pb.ModelInferRequest, model: ServedModel, limits: InputLimits
) -> dict[str, np.ndarray | DeferredRows]:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs; send one per input")
    if raw and any(tensor.HasField("contents") for tensor in request.inputs):
        raise InvalidArgument("use either raw_input_contents or contents for every input, not both")
    declared = {t.name: t for t in model.inputs}
    names = [tensor.name for tensor in request.inputs]
    if sorted(names) != sorted(declared):
        raise InvalidArgument(
            f"model '{model.name}' takes inputs {sorted(declared)}, the request has {names}"
        )
    decoded: dict[str, np.ndarray | DeferredRows] = {}
    for index, tensor in enumerate(request.inputs):
        _refuse_shared_memory(f"input '{tensor.name}'", tensor.parameters)
        payload = raw[index] if raw else None
        contents = tensor.contents if tensor.HasField("contents") else None
        if tensor.datatype == "BYTES" and tensor.name == IMAGE_INPUT and takes_encoded_images(model):
            decoded[tensor.name] = await _decode_images(tensor, payload, contents, model, limits)
            continue
        spec = declared[tensor.name]
        decoded[tensor.name] = decode_input(
            tensor.name, tensor.datatype, tensor.shape, wire_spec(model, spec),
            raw=payload, contents=contents,
        )
    return decoded


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
            f"input '{IMAGE_INPUT}': encoded images need shape [B] or [B, 1] (one image per element), got {shape}"
        )
    spec = WireSpec(IMAGE_INPUT, "BYTES", tuple(shape))
    if shape[0] > limits.max_images_per_request:
        raise ResourceExhausted(
            f"input '{IMAGE_INPUT}': {shape[0]} images exceed the limit of {limits.max_images_per_request} per request"
        )
    blobs = decode_input(IMAGE_INPUT, "BYTES", shape, spec, raw=payload, contents=contents).reshape(-1)
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
        _refuse_shared_memory(f"output '{output.name}'", output.parameters)
        count = 0
        if "classification" in output.parameters:
            count = _int_parameter(output.parameters["classification"], f"output '{output.name}' classification")
            if count < 1:
                raise InvalidArgument(f"output '{output.name}': classification count must be at least 1, got {count}")
        outputs.append(RequestedOutput(output.name, count))
    return tuple(outputs)


def _int_parameter(parameter: pb.InferParameter, what: str) -> int:
    choice = parameter.WhichOneof("parameter_choice")
    if choice in ("int64_param", "uint64_param"):
        return int(getattr(parameter, choice))
    raise InvalidArgument(f"{what} must be an integer parameter, got {choice or 'nothing'}")


def _refuse_shared_memory(what: str, parameters: Mapping[str, pb.InferParameter]) -> None:
    if any(key in parameters for key in _SHARED_MEMORY):
        raise InvalidArgument(f"{what}: shared memory is not supported; send the tensor in the request")


def encode_response(request: DecodedRequest, outputs: Mapping[str, np.ndarray]) -> pb.ModelInferResponse:
    """Requested outputs as raw_output_contents, in the order they were requested."""
    model = request.model
    response = pb.ModelInferResponse(model_name=model.name, model_version=str(model.version), id=request.id)
    labelled = {t.name for t in model.outputs if t.label_filename}
    for wanted in request.outputs:
        array = outputs[wanted.name]
        if wanted.classification:
            labels = model.labels if wanted.name in labelled else ()
            array = top_k_strings(wanted.name, array, wanted.classification, labels, model.max_batch_size > 0)
        datatype = datatype_of(array)
        response.outputs.add(name=wanted.name, datatype=datatype, shape=array.shape)
        response.raw_output_contents.append(encode_raw(array, datatype))
    return response


async def infer(
    request: pb.ModelInferRequest, manager: ModelManager, limits: InputLimits, deadline: float | None
) -> pb.ModelInferResponse:
    """Decode, run through the model's batcher, encode. Raises the core's domain errors."""
    decoded = await decode_request(request, manager, limits)
    outputs = await decoded.model.infer(decoded.inputs, deadline)
    return encode_response(decoded, outputs)

