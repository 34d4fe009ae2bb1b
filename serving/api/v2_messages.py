"""The core's descriptions of models -> Open Inference Protocol messages (metadata, config, statistics, index).

Pure functions over `ServedModel`, its statistics snapshot and the repository index: the
servicer stays a list of one-liners, and ModelStatistics reads the same accumulator as
/metrics (serving.stats), so the two agree by construction.
"""

from __future__ import annotations

from collections.abc import Sequence

from protos.inference import grpc_service_pb2 as pb
from protos.inference import model_config_pb2 as mc
from serving.api.v2_infer import wire_spec
from serving.models import ModelState, RepositoryEntry, ServedModel
from serving.stats import Duration, ModelStatsSnapshot

#: Extensions of the protocol that ninefold implements (ServerMetadata.extensions, Triton's names).
EXTENSIONS = ("classification", "model_configuration", "model_repository", "statistics", "system_shared_memory",
              "binary_tensor_data")


def model_metadata(model: ServedModel, versions: Sequence[int]) -> pb.ModelMetadataResponse:
    """Name, served versions, platform and tensor signature (batch axis -1 when the model batches)."""
    response = pb.ModelMetadataResponse(
        name=model.name, versions=[str(v) for v in versions], platform=model.spec.platform
    )
    for side, tensors in ((response.inputs, model.inputs), (response.outputs, model.outputs)):
        for tensor in tensors:
            spec = wire_spec(model, tensor)
            side.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
    return response


def model_config(model: ServedModel) -> pb.ModelConfigResponse:
    """config.pbtxt as parsed, with the signature filled in from the model file when it listed none."""
    config = mc.ModelConfig()
    config.CopyFrom(model.config)
    config.platform = config.platform or model.spec.platform
    if not config.input:
        for tensor in model.inputs:
            config.input.add(name=tensor.name, data_type=mc.DataType.Name(tensor.data_type), dims=tensor.shape)
    if not config.output:
        for tensor in model.outputs:
            config.output.add(name=tensor.name, data_type=mc.DataType.Name(tensor.data_type), dims=tensor.shape)
    return pb.ModelConfigResponse(config=config)


def _duration(value: Duration) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=value.count, ns=value.ns)


def model_statistics(snapshot: ModelStatsSnapshot) -> pb.ModelStatistics:
    """Triton's ModelStatistics from one snapshot (requests, queue/compute time, executions per batch size)."""
    return pb.ModelStatistics(
        name=snapshot.name,
        version=str(snapshot.version),
        last_inference=snapshot.last_inference_ms,
        inference_count=snapshot.inference_count,
        execution_count=snapshot.execution_count,
        inference_stats=pb.InferStatistics(
            success=_duration(snapshot.success),
            fail=_duration(snapshot.fail),
            queue=_duration(snapshot.queue),
            compute_input=_duration(snapshot.compute_input),
            compute_infer=_duration(snapshot.compute_infer),
            compute_output=_duration(snapshot.compute_output),
        ),
        batch_stats=[
            pb.InferBatchStatistics(
                batch_size=batch.batch_size,
                compute_input=_duration(batch.compute_input),
                compute_infer=_duration(batch.compute_infer),
                compute_output=_duration(batch.compute_output),
            )
            for batch in snapshot.batch_stats
        ],
    )


def repository_index(entries: Sequence[RepositoryEntry], ready_only: bool) -> pb.RepositoryIndexResponse:
    """Every model folder with the state of each version; a folder that never loaded has version ""."""
    return pb.RepositoryIndexResponse(
        models=[
            pb.RepositoryIndexResponse.ModelIndex(
                name=entry.name,
                version="" if entry.version is None else str(entry.version),
                state=entry.state.value,
                reason=entry.reason,
            )
            for entry in entries
            if not ready_only or entry.state is ModelState.READY
        ]
    )
