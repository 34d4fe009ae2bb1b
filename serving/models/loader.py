"""Bring one model version from its folder to READY: place its instances, open a backend per instance,
check config.pbtxt's signature against the model file, warm every instance up, start its batcher.

The slow part (`open_instances`) runs on the loader's worker threads, never on the event loop; a
version that cannot load becomes UNAVAILABLE with its reason while the other models serve.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np

from contract.model_config import CONFIG_FILE
from contract.names import BELOW_THRESHOLD_PARAMETER, IMAGES, PREPROCESSING_PARAMETER
from contract.preprocessing import Preprocessing, PreprocessingError
from contract.tensors import TensorSpec
from protos.inference import model_config_pb2 as mc
from serving.backends import Backend, BackendSettings, open_backend, select_backend, tensorrt_installed
from serving.backends.fixed_shapes import batcher_ladder, warm_batch_sizes
from serving.batching import DynamicBatcher
from serving.input_ranges import InputRange, input_ranges
from serving.ladder import batch_ladder
from serving.models.served import ModelState, ServedModel
from serving.placement import Gpu, Placement, PlacementError, place
from serving.repository import ConfigError, ModelSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Loaded:
    """What `open_instances` hands the served model: where its instances run, their backends, the
    signature reconciled with the model file, and the input ranges it enforces."""

    placements: list[Placement]
    backends: list[Backend] = field(default_factory=list)
    spec: ModelSpec | None = None
    ranges: tuple[InputRange, ...] = ()


class Loader:
    """Opens model versions with the server's backend settings on its GPUs (none = CPU only)."""

    def __init__(self, settings: BackendSettings, gpus: Sequence[Gpu], gpu_capable: bool | None) -> None:
        self.settings = settings
        self.gpus = tuple(gpus)
        self._gpu_capable = gpu_capable
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="model-load")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def load(self, model: ServedModel) -> None:
        """Open `model`'s instances off the loop and make it READY, or UNAVAILABLE with the reason; never raises
        for a model that cannot load."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            loaded = await loop.run_in_executor(self._pool, self.open_instances, model)
        except (ConfigError, PlacementError, ValueError) as error:
            model._fail(str(error))
            log.error("model %s version %d cannot load: %s", model.name, model.version, error)
            return
        except Exception as error:  # a runtime refused the file; keep the others serving
            log.exception("model %s version %d failed to load", model.name, model.version)
            model._fail(f"the runtime could not load the model: {type(error).__name__}")
            return
        assert loaded.spec is not None
        model.spec = loaded.spec
        batcher = DynamicBatcher(
            f"{model.name}:{model.version}",
            loaded.spec.policy,
            loaded.backends,
            model.statistics,
            ladder=batcher_ladder(loaded.backends),
        )
        batcher.start(loop)
        model._attach(loaded, batcher)
        model.state = ModelState.READY
        log.info(
            "model %s version %d ready: %d instance(s) on %s in %.2f s",
            model.name,
            model.version,
            len(loaded.placements),
            ", ".join(sorted({p.device.label for p in loaded.placements})),
            time.perf_counter() - started,
        )
        if below := loaded.spec.parameters.get(BELOW_THRESHOLD_PARAMETER):
            log.warning(
                "model %s version %d was exported below its quality bar (%s); its answers may be wrong",
                model.name,
                model.version,
                below,
            )

    def _gpu_support(self) -> bool:
        if self._gpu_capable is None:
            import onnxruntime

            self._gpu_capable = bool(self.gpus) and (
                "CUDAExecutionProvider" in onnxruntime.get_available_providers() or tensorrt_installed()
            )
        return self._gpu_capable

    def open_instances(self, model: ServedModel) -> Loaded:
        """Worker thread: place, open one backend per instance, reconcile the signature, warm up."""
        from serving.backends.onnxruntime import intra_op_threads, settled_threads

        spec = model.spec
        version_dir = model.directory / str(model.version)
        placements = place(model.name, list(spec.config.instance_group), self.gpus, self._gpu_support())
        files = [p.name for p in version_dir.iterdir()] if version_dir.is_dir() else []
        cpu_instances = sum(1 for p in placements if not p.device.is_gpu)
        threads = intra_op_threads(self.settings, cpu_instances)
        trt = tensorrt_installed()
        ladder = batch_ladder(spec.policy.max_batch_size, spec.policy.preferred_batch_sizes)
        loaded = Loaded(placements)

        contents: dict[str, bytes] = {}  # each file read (and checked) once, for every instance

        def open_all(threads: int) -> None:
            for placement in placements:
                choice = select_backend(
                    spec.platform, spec.config.default_model_filename, files, placement.device, trt
                )
                path = version_dir / choice.filename
                if choice.filename not in contents:
                    contents[choice.filename] = model.files.read_bytes(path)
                backend = open_backend(
                    choice, path, placement.device, self.settings, threads, ladder, contents[choice.filename]
                )
                loaded.backends.append(backend)

        def warm_all() -> None:
            for backend in loaded.backends:
                warm_up(resolved, backend, warm_batch_sizes(backend))

        try:
            open_all(threads)
            resolved = reconcile(spec, loaded.backends[0])
            ranges = input_ranges(resolved)
            warm_all()
            settled = settled_threads(
                self.settings, threads, cpu_instances == len(placements),
                lambda: batch_one_seconds(resolved, loaded.backends[0]), model.name,
            )
            if settled != threads:
                for backend in loaded.backends:
                    backend.close()
                loaded.backends.clear()
                open_all(settled)
                warm_all()
        except BaseException:
            for backend in loaded.backends:
                backend.close()
            raise
        return replace(loaded, spec=resolved, ranges=ranges)


def reconcile(spec: ModelSpec, backend: Backend) -> ModelSpec:
    """Check config.pbtxt's signature against the model file; fill it in when the config lists none.

    Raises ConfigError naming the tensor and the disagreement.
    """
    where = f"{spec.name}/{CONFIG_FILE}"
    batches = spec.policy.batches

    def from_file(declared: tuple[TensorSpec, ...]) -> tuple[TensorSpec, ...]:
        return tuple(
            TensorSpec(t.name, t.shape[1:] if batches else t.shape, t.data_type) for t in declared
        )

    reshaped = {t.name for t in (*spec.config.input, *spec.config.output) if t.reshape.shape}
    inputs = spec.inputs or from_file(backend.inputs)
    outputs = spec.outputs or from_file(backend.outputs)
    for kind, configured, declared in (("input", inputs, backend.inputs), ("output", outputs, backend.outputs)):
        by_name = {t.name: t for t in declared}
        for tensor in configured:
            actual = by_name.get(tensor.name)
            if actual is None:
                raise ConfigError(
                    f"{where}: {kind} '{tensor.name}' is not in the model file (it has: {', '.join(by_name)})"
                )
            if actual.data_type != tensor.data_type:
                raise ConfigError(
                    f"{where}: {kind} '{tensor.name}' data_type {mc.DataType.Name(tensor.data_type)} does not match "
                    f"the model file ({mc.DataType.Name(actual.data_type)})"
                )
            item_shape = actual.shape[1:] if batches else actual.shape
            if tensor.name not in reshaped and not _compatible(tensor.shape, item_shape):
                raise ConfigError(
                    f"{where}: {kind} '{tensor.name}' dims {list(tensor.shape)} do not match the model file "
                    f"({list(item_shape)}, -1 = any)"
                )
            if batches and actual.shape and actual.shape[0] not in (-1,):
                raise ConfigError(
                    f"{where}: {kind} '{tensor.name}' has a fixed batch axis ({actual.shape[0]}) in the model file; "
                    "export it with a dynamic batch axis or set max_batch_size: 0"
                )
    missing = {t.name for t in backend.inputs} - {t.name for t in inputs}
    if missing:
        raise ConfigError(f"{where}: the model file needs inputs {sorted(missing)} that the config does not list")
    return replace(spec, inputs=inputs, outputs=outputs)


def _compatible(configured: tuple[int, ...], declared: tuple[int, ...]) -> bool:
    return len(configured) == len(declared) and all(
        a == b or -1 in (a, b) for a, b in zip(configured, declared, strict=True)
    )


def batch_one_seconds(spec: ModelSpec, backend: Backend) -> float:
    """The best of three warm batch-1 runs of `backend`, in seconds."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        warm_up(spec, backend)
        best = min(best, time.perf_counter() - started)
    return best


def _typical_image_dims(spec: ModelSpec) -> tuple[int, ...]:
    """(3, H, W) of a typical input image of the model's preprocessing, () when it has none."""
    try:
        return (3, *Preprocessing.from_json(spec.parameters[PREPROCESSING_PARAMETER]).typical_size)
    except (KeyError, PreprocessingError):
        return ()


def warm_up(spec: ModelSpec, backend: Backend, batch_sizes: Sequence[int] = (1,)) -> None:
    """One inference of zeros per batch size (dynamic dims -> 1, an image input's -> a typical image
    size: a detector cannot run on 1 x 1) so the first request pays no lazy setup; a fixed-shape
    instance warms every rung of its ladder before the model is READY."""
    image_dims = _typical_image_dims(spec)
    for size in batch_sizes if spec.policy.batches else (1,):
        lead = (size,) if spec.policy.batches else ()
        feeds = {}
        for tensor in spec.inputs:
            typical = image_dims if tensor.name == IMAGES else ()
            dims = tuple(typical[i] if dim == -1 and i < len(typical) else dim for i, dim in enumerate(tensor.shape))
            shape = lead + tuple(1 if dim == -1 else dim for dim in dims)
            feeds[tensor.name] = np.zeros(shape, dtype=tensor.dtype)
        backend.infer(feeds)
