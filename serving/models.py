"""The serving core's front door: which models exist, which are ready, and how to run one.

Transports (serving.api.vision, serving.api.inference) only ever talk to this module:

    model = manager.get("resnet_small")          # or manager.default_for("classify")
    outputs = await model.infer({"images": batch}, deadline=time.monotonic() + 2.0)

`ModelManager` loads the repository (every model in parallel, each version's instances per
`instance_group`, a warm-up inference of zeros on every instance) and reports per-model state;
a model that fails to load is UNAVAILABLE with its reason while the others serve.
`ServedModel` is one loaded model version: its validated config, signature, labels, state,
statistics, and `infer`, which validates the tensors and awaits the model's dynamic batcher.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from contract.preprocessing import Preprocessing, PreprocessingError
from protos.inference import model_config_pb2 as mc
from serving import repository
from serving.backends import Backend, BackendSettings, open_backend, select_backend, tensorrt_installed
from serving.backends.fixed_shapes import batcher_ladder, warm_batch_sizes
from serving.batching import DynamicBatcher, Tensors
from serving.deferred import DeferredRows
from serving.errors import InvalidArgument, NotFound, NotReady, ServingError, Unavailable, cancellation_reason
from serving.input_ranges import InputRange, input_ranges
from serving.ladder import batch_ladder
from serving.placement import Gpu, Placement, PlacementError, place
from serving.repository import (
    BELOW_THRESHOLD_PARAMETER,
    DECODER_TASK,
    ConfigError,
    FileReader,
    ModelSource,
    ModelSpec,
)
from serving.stats import ModelStatistics, ModelStatsSnapshot
from serving.tensors import TensorSpec

log = logging.getLogger(__name__)


class ModelState(str, enum.Enum):
    """Triton's model states (RepositoryIndex spells them the same)."""

    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    UNLOADING = "UNLOADING"


@dataclass(frozen=True)
class RepositoryEntry:
    """One row of the repository index: a model version known on disk, and its state."""

    name: str
    version: int | None  # None = a model folder that is not loaded
    state: ModelState
    reason: str


class ServedModel:
    """One model version: its description, its state, and `infer` through its batcher.

    Attributes a transport reads: name, version, directory (the model folder, for files such as
    a vocabulary), config (the parsed `inference.ModelConfig`), task ("" = plain tensor model),
    family, parameters (str -> str), labels, inputs/outputs (TensorSpec; shapes without the batch
    axis when max_batch_size > 0), max_batch_size, instance_count, placements, state, reason.
    """

    def __init__(self, source: ModelSource, spec: ModelSpec, version: int, files: FileReader) -> None:
        self.name = spec.name
        self.version = version
        self.directory = source.directory
        self.files = files  # read anything else of the model folder (a vocabulary) through this
        self.spec = spec
        self.placements: tuple[Placement, ...] = ()
        self.state = ModelState.LOADING
        self.reason = ""
        self.statistics = ModelStatistics(spec.name, version, spec.task)
        self._batcher: DynamicBatcher | None = None
        self._backends: list[Backend] = []
        self._ranges: tuple[InputRange, ...] = ()
        self._reshape_in = {t.name: tuple(t.reshape.shape) for t in spec.config.input if t.reshape.shape}

    # ------------------------------------------------------------------ description
    @property
    def config(self) -> mc.ModelConfig:
        return self.spec.config

    @property
    def task(self) -> str:
        return self.spec.task

    @property
    def family(self) -> str:
        return self.spec.family

    @property
    def parameters(self) -> Mapping[str, str]:
        return self.spec.parameters

    @property
    def labels(self) -> tuple[str, ...]:
        return self.spec.labels

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.spec.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.spec.outputs

    @property
    def max_batch_size(self) -> int:
        return self.spec.policy.max_batch_size

    @property
    def instance_count(self) -> int:
        return len(self.placements)

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY

    def stats(self) -> ModelStatsSnapshot:
        """Success/failure/queue/compute counts and durations, per-batch-size executions."""
        return self.statistics.snapshot()

    # ------------------------------------------------------------------ inference
    async def infer(
        self, inputs: Tensors, deadline: float | None = None, *, counted: bool = True
    ) -> dict[str, np.ndarray]:
        """Run one request through the model's dynamic batcher.

        inputs: every declared input by name; with max_batch_size > 0 each array is (B, *dims)
          with the same B >= 1 (B > max_batch_size is split and batched in chunks), exactly the
          declared dtype (no silent casts). With max_batch_size 0 the arrays have exactly `dims`.
          An input may be DeferredRows (serving.deferred): its rows are written on the instance
          thread straight into the batch, and a writer's ServingError fails this request only.
        deadline: absolute `time.monotonic()` seconds, None = none; a request still queued at its
          deadline fails with DeadlineExceeded and is never computed.
        Returns every declared output by name, (B, *dims) arrays (read-only views of the batch).
        Raises InvalidArgument (also for values outside the config's `input_ranges`; RejectedInput
        when the backend failed on this request alone in its batch), NotReady, ResourceExhausted
        (queue full), DeadlineExceeded, Internal (the backend failed; details in the server log).
        Counts one request in the stats unless `counted` is False (a caller that counts the whole
        request itself: the task API).
        """
        started = time.perf_counter_ns()
        try:
            batcher = self._batcher
            if batcher is None or self.state is not ModelState.READY:
                raise NotReady(f"model '{self.name}' version {self.version} is not ready ({self.state.value})")
            items = self._check(inputs)
            if self._reshape_in:
                inputs = self._reshaped(inputs, items)
            outputs = await batcher.submit(inputs, items, deadline)
        except ServingError as error:
            if counted:
                self.record_request(time.perf_counter_ns() - started, error.reason)
            raise
        except asyncio.CancelledError:
            if counted:
                self.record_request(time.perf_counter_ns() - started, cancellation_reason(deadline))
            raise
        if counted:
            self.record_request(time.perf_counter_ns() - started)
        return outputs

    def record_request(self, duration_ns: int, failure_reason: str | None = None) -> None:
        """Count one finished request (successful when `failure_reason` is None)."""
        self.statistics.on_request(duration_ns, failure_reason)

    def record_failure(self, reason: str) -> None:
        """Count a request the transport refused before `infer` (e.g. undecodable image bytes)."""
        self.record_request(0, reason)

    def _check(self, inputs: Tensors) -> int:
        """Validate names, dtypes and shapes; return the batch size (1 without a batch axis)."""
        specs = self.spec.inputs
        if len(inputs) != len(specs) or any(spec.name not in inputs for spec in specs):
            expected = ", ".join(spec.name for spec in specs)
            unknown = sorted(set(inputs) - {spec.name for spec in specs})
            missing = [spec.name for spec in specs if spec.name not in inputs]
            raise InvalidArgument(
                f"model '{self.name}' takes inputs [{expected}]"
                + (f"; missing {missing}" if missing else "")
                + (f"; unknown {unknown}" if unknown else "")
            )
        batches = self.spec.policy.batches
        items = 1
        for index, spec in enumerate(specs):
            array = inputs[spec.name]
            if array.dtype != spec.dtype:
                raise InvalidArgument(
                    f"input '{spec.name}' of model '{self.name}' must be {spec.datatype}, got {array.dtype}"
                )
            shape = array.shape[1:] if batches else array.shape
            if (batches and array.ndim == 0) or not spec.accepts(shape):
                want = ("[B, " if batches else "[") + ", ".join(str(d) for d in spec.shape) + "]"
                raise InvalidArgument(
                    f"input '{spec.name}' of model '{self.name}' must have shape {want}, got {list(array.shape)}"
                )
            if batches:
                if array.shape[0] < 1:
                    raise InvalidArgument(
                        f"input '{spec.name}' of model '{self.name}' has batch size 0 (shape {list(array.shape)}); "
                        "send at least one item"
                    )
                if index == 0:
                    items = array.shape[0]
                elif array.shape[0] != items:
                    raise InvalidArgument(f"inputs of model '{self.name}' disagree on the batch size")
        for allowed in self._ranges:  # rows the server decoded itself (DeferredRows) are in range
            value = inputs[allowed.name]
            if isinstance(value, np.ndarray):
                allowed.check(value, self.name)
        return items

    def _reshaped(self, inputs: Tensors, items: int) -> Tensors:
        batches = self.spec.policy.batches
        lead = (items,) if batches else ()
        reshaped: dict[str, np.ndarray | DeferredRows] = {}
        for name, value in inputs.items():
            shape = self._reshape_in.get(name)
            if shape is None:
                reshaped[name] = value
            elif isinstance(value, DeferredRows):
                reshaped[name] = value.reshaped(shape) if batches else value.materialise().reshape(shape)
            else:
                reshaped[name] = value.reshape(lead + shape)
        return reshaped

    # ------------------------------------------------------------------ lifecycle (manager only)
    def _attach(self, loaded: _Loaded, batcher: DynamicBatcher) -> None:
        self.placements = tuple(loaded.placements)
        self._backends = loaded.backends
        self._ranges = loaded.ranges
        self._batcher = batcher

    def _fail(self, reason: str) -> None:
        self.state = ModelState.UNAVAILABLE
        self.reason = reason

    async def _close(self) -> None:
        self.state = ModelState.UNLOADING
        if self._batcher is not None:
            await self._batcher.close()
        for backend in self._backends:
            backend.close()
        self._backends = []
        self._batcher = None
        self.state = ModelState.UNAVAILABLE
        self.reason = "unloaded"


@dataclass(frozen=True)
class _Loaded:
    placements: list[Placement]
    backends: list[Backend] = field(default_factory=list)
    spec: ModelSpec | None = None
    ranges: tuple[InputRange, ...] = ()


Listener = Callable[[], None]

#: With automatic ONNX Runtime threads (--ort-threads 0), a CPU-only model whose warm batch-1 run
#: takes less than this gets one thread per instance: waking pool threads for every operator then
#: costs more than the parallelism saves. Measured on the benchmark's tiny 64x64 classifier
#: (docs/PERFORMANCE.md): server CPU per request 631 vs 758 us at concurrency 1, 499 vs 588 us at
#: 16; ResNet-18 at 224 (about 11 ms) keeps cores / instances threads.
LIGHT_MODEL_RUN_S = 0.002


class ModelManager:
    """Every model version the server knows, keyed by name and version.

    Call `load_all()` (or `load(name)`) from the event loop that will serve requests. State
    changes notify listeners (health, metrics) on that loop. `startup_models` (None = every folder)
    limits what `load_all` loads: model control's explicit mode sets it from --load-model.
    `strict_readiness` (--strict-readiness) says what `serving` requires: every model, or some.
    """

    def __init__(
        self,
        repository_path: Path,
        settings: BackendSettings | None = None,
        gpus: Sequence[Gpu] = (),
        gpu_capable: bool | None = None,
        strict_readiness: bool = True,
    ) -> None:
        self.repository = repository_path
        self.strict_readiness = strict_readiness
        self.settings = settings or BackendSettings()
        self.gpus = tuple(gpus)
        self._gpu_capable = gpu_capable
        self._models: dict[str, dict[int, ServedModel]] = {}
        self._errors: dict[str, str] = {}  # model folders that failed before any version existed
        self._listeners: list[Listener] = []
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="model-load")
        self.loaded = False
        self.draining = False
        self.startup_models: frozenset[str] | None = None
        #: How model files are read; model control's explicit mode confines them to the repository.
        self.files = repository.UNCONFINED

    # ------------------------------------------------------------------ queries
    def get(self, name: str, version: int = 0) -> ServedModel:
        """The model `name` at `version` (0 = the newest READY version).

        Raises NotFound (no such model/version), NotReady (it exists but cannot serve), Unavailable (draining).
        """
        self._refuse_when_draining()
        versions = self._models.get(name)
        if not versions:
            if name in self._errors:
                raise NotReady(f"model '{name}' failed to load: {self._errors[name]}")
            if self._on_disk(name):  # Triton: a known but unloaded model is UNAVAILABLE, not unknown
                raise NotReady(f"model '{name}' is in the repository but not loaded; load it (RepositoryModelLoad)")
            raise NotFound(f"model '{name}' is not in the repository; ListModels shows what is served")
        if version:
            model = versions.get(version)
            if model is None:
                raise NotFound(f"model '{name}' has no version {version} (served: {sorted(versions)})")
        else:
            ready = [m for v, m in sorted(versions.items()) if m.ready]
            model = ready[-1] if ready else versions[max(versions)]
        if not model.ready:
            detail = f": {model.reason}" if model.reason else f" ({model.state.value})"
            raise NotReady(f"model '{name}' version {model.version} is not ready{detail}")
        return model

    def _on_disk(self, name: str) -> bool:
        """Whether the repository holds a model folder `name` (looked up only for names not loaded)."""
        return any(source.name == name for source in repository.discover(self.repository))

    def default_for(self, task: str) -> ServedModel:
        """The model a request without a name gets for `task`.

        The newest version of: a model whose parameter `default` is "true", else the first by name;
        ready models first. Raises NotFound when no model serves the task, NotReady when none is ready.
        """
        self._refuse_when_draining()
        candidate = self._default_name(task)
        if candidate is None:
            raise NotFound(f"no model in the repository serves task '{task}'")
        return self.get(candidate)

    def is_default(self, model: ServedModel) -> bool:
        return bool(model.task) and self._default_name(model.task) == model.name

    def _default_name(self, task: str) -> str | None:
        if task == DECODER_TASK:
            return None
        names = sorted(
            (name for name, versions in self._models.items() if versions[max(versions)].task == task),
            key=lambda name: (
                not any(m.ready for m in self._models[name].values()),
                self._models[name][max(self._models[name])].parameters.get("default", "").lower() != "true",
                name,
            ),
        )
        return names[0] if names else None

    def models(self) -> list[ServedModel]:
        """Every model version that was loaded or tried, by name then version."""
        # One snapshot of the dict: /metrics calls this from its own thread while the loop loads/unloads.
        return [model for _, versions in sorted(self._models.items()) for _, model in sorted(versions.items())]

    def tasks(self) -> list[str]:
        """The tasks some model of the repository serves (caption_decoder excluded), sorted."""
        return sorted({m.task for m in self.models() if m.task and m.task != DECODER_TASK})

    def index(self) -> list[RepositoryEntry]:
        """Every model folder on disk with the state of each version (for RepositoryIndex)."""
        entries = []
        for source in repository.discover(self.repository):
            versions = self._models.get(source.name)
            if versions:
                entries += [RepositoryEntry(m.name, v, m.state, m.reason) for v, m in sorted(versions.items())]
            else:
                reason = self._errors.get(source.name, "not loaded")
                entries.append(RepositoryEntry(source.name, None, ModelState.UNAVAILABLE, reason))
        return entries

    def unready(self) -> list[str]:
        """What is loaded or tried but cannot serve: "name" of a folder that failed before any version
        existed, "name:version" of a version that is loading, failed or unloading; sorted."""
        failed = list(self._errors)  # one snapshot: /metrics may call this from its thread
        return sorted([*failed, *(f"{m.name}:{m.version}" for m in self.models() if not m.ready)])

    @property
    def serving(self) -> bool:
        """The whole server can answer (health service "", v2 ServerReady): the initial load finished,
        not draining, and with `strict_readiness` (Triton's default) every model the server loaded or
        tried is ready, without it some model is. A server asked to load nothing at start (explicit
        model control, no --load-model) is ready with no model."""
        if not self.loaded or self.draining:
            return False
        models = self.models()
        nothing_asked = self.startup_models == frozenset()
        if self.strict_readiness:
            return (bool(models) or nothing_asked) and not self.unready()
        return nothing_asked or any(m.ready for m in models)

    def add_listener(self, listener: Listener) -> None:
        """Call `listener()` on the event loop after any model changes state."""
        self._listeners.append(listener)

    # ------------------------------------------------------------------ lifecycle
    async def load_all(self) -> None:
        """Load every model of the repository (or the `startup_models` of it) in parallel; never raises
        for one bad model."""
        sources = repository.discover(self.repository)
        if self.startup_models is not None:
            sources = [source for source in sources if source.name in self.startup_models]
        await asyncio.gather(*(self._load_source(source) for source in sources))
        self.loaded = True
        self._notify()

    async def load(self, name: str) -> None:
        """(Re)load one model folder by name; the previous versions keep serving until the new ones are ready.

        Raises NotFound when the repository has no such folder. A load failure is reported as the
        model's state (and raised as NotReady so a control RPC can say why).
        """
        source = next((s for s in repository.discover(self.repository) if s.name == name), None)
        if source is None:
            raise NotFound(f"the repository has no model folder named '{name}'")
        await self._load_source(source)
        self._notify()
        self.get(name)  # raises NotReady with the reason when nothing of it is ready

    async def unload(self, name: str) -> None:
        """Stop serving `name`: refuse new requests, finish running batches, release the sessions."""
        versions = self._models.pop(name, None)
        failed = self._errors.pop(name, None)
        if versions is None:
            if failed is None:
                raise NotFound(f"model '{name}' is not loaded")
            self._notify()
            return
        for model in versions.values():
            model.state = ModelState.UNLOADING
        self._notify()
        await asyncio.gather(*(model._close() for model in versions.values()))

    async def close(self) -> None:
        """Unload everything (after a drain)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        for name in list(self._models):
            await self.unload(name)

    def begin_drain(self) -> None:
        """From now on get()/default_for() raise Unavailable; running requests finish."""
        self.draining = True
        self._notify()

    # ------------------------------------------------------------------ loading internals
    def _refuse_when_draining(self) -> None:
        if self.draining:
            raise Unavailable("the server is shutting down; retry on another replica")

    async def _load_source(self, source: ModelSource) -> None:
        """Load every served version of one folder; on a reload the old versions serve until the new
        ones are ready, and stay when none of the new ones is (as Triton does)."""
        try:
            config = repository.read_config(source, self.files)
            spec = repository.model_spec(source, config, self.files)
            versions = repository.served_versions(source, config)
        except ConfigError as error:
            log.error("model %s cannot load: %s", source.name, error)
            if source.name not in self._models:
                self._errors[source.name] = str(error)
                return
            raise NotReady(
                f"model '{source.name}' could not be reloaded ({error}); the loaded versions keep serving"
            ) from None
        fresh = {version: ServedModel(source, spec, version, self.files) for version in versions}
        previous = self._models.get(source.name)
        if previous is None:
            self._errors.pop(source.name, None)
            self._models[source.name] = fresh
        await asyncio.gather(*(self._load_version(model) for model in fresh.values()))
        if previous is None:
            return
        if any(model.ready for model in fresh.values()):
            self._models[source.name] = fresh
            await asyncio.gather(*(model._close() for model in previous.values()))
        else:
            log.error("model %s: the reload failed; the loaded versions keep serving", source.name)
            reasons = "; ".join(m.reason for m in fresh.values() if m.reason)  # before _close() overwrites them
            await asyncio.gather(*(model._close() for model in fresh.values()))
            raise NotReady(f"model '{source.name}' could not be reloaded ({reasons}); the loaded versions keep serving")

    async def _load_version(self, model: ServedModel) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            loaded = await loop.run_in_executor(self._pool, self._open_instances, model)
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

    def _open_instances(self, model: ServedModel) -> _Loaded:
        """Worker thread: place, open one backend per instance, reconcile the signature, warm up."""
        spec = model.spec
        version_dir = model.directory / str(model.version)
        placements = place(model.name, list(spec.config.instance_group), self.gpus, self._gpu_support())
        files = [p.name for p in version_dir.iterdir()] if version_dir.is_dir() else []
        cpu_instances = sum(1 for p in placements if not p.device.is_gpu)
        from serving.backends.onnxruntime import intra_op_threads

        threads = intra_op_threads(self.settings, cpu_instances)
        trt = tensorrt_installed()
        ladder = batch_ladder(spec.policy.max_batch_size, spec.policy.preferred_batch_sizes)
        loaded = _Loaded(placements)

        contents: dict[str, bytes] = {}  # each file read (and checked) once, for every instance

        def open_all(threads: int) -> None:
            for placement in placements:
                choice = select_backend(
                    spec.platform, spec.config.default_model_filename, files, placement.device, trt
                )
                path = version_dir / choice.filename
                if choice.filename not in contents:
                    contents[choice.filename] = self.files.read_bytes(path)
                backend = open_backend(
                    choice, path, placement.device, self.settings, threads, ladder, contents[choice.filename]
                )
                loaded.backends.append(backend)

        try:
            open_all(threads)
            resolved = reconcile(spec, loaded.backends[0])
            ranges = input_ranges(resolved)
            for backend in loaded.backends:
                warm_up(resolved, backend, warm_batch_sizes(backend))
            automatic = threads > 1 and self.settings.intra_op_threads == 0 and cpu_instances == len(placements)
            if automatic and (run_s := _batch_one_seconds(resolved, loaded.backends[0])) < LIGHT_MODEL_RUN_S:
                log.info("model %s: %.2f ms a batch-1 run: one ONNX Runtime thread", model.name, 1e3 * run_s)
                for backend in loaded.backends:
                    backend.close()
                loaded.backends.clear()
                open_all(1)
                for backend in loaded.backends:
                    warm_up(resolved, backend, warm_batch_sizes(backend))
        except BaseException:
            for backend in loaded.backends:
                backend.close()
            raise
        return replace(loaded, spec=resolved, ranges=ranges)

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()


def reconcile(spec: ModelSpec, backend: Backend) -> ModelSpec:
    """Check config.pbtxt's signature against the model file; fill it in when the config lists none.

    Raises ConfigError naming the tensor and the disagreement.
    """
    where = f"{spec.name}/{repository.CONFIG_FILE}"
    batches = spec.policy.batches

    def from_file(declared: tuple[TensorSpec, ...]) -> tuple[TensorSpec, ...]:
        return tuple(
            TensorSpec(t.name, t.data_type, t.shape[1:] if batches else t.shape) for t in declared
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


def _typical_image_dims(spec: ModelSpec) -> tuple[int, ...]:
    """(3, H, W) of a typical input image of the model's preprocessing, () when it has none."""
    try:
        return (3, *Preprocessing.from_json(spec.parameters["preprocessing"]).typical_size)
    except (KeyError, PreprocessingError):
        return ()


def _batch_one_seconds(spec: ModelSpec, backend: Backend) -> float:
    """The best of three warm batch-1 runs of `backend`, in seconds."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        warm_up(spec, backend)
        best = min(best, time.perf_counter() - started)
    return best


def warm_up(spec: ModelSpec, backend: Backend, batch_sizes: Sequence[int] = (1,)) -> None:
    """One inference of zeros per batch size (dynamic dims -> 1, an image input's -> a typical image
    size: a detector cannot run on 1 x 1) so the first request pays no lazy setup; a fixed-shape
    instance warms every rung of its ladder before the model is READY."""
    image_dims = _typical_image_dims(spec)
    for size in batch_sizes if spec.policy.batches else (1,):
        lead = (size,) if spec.policy.batches else ()
        feeds = {}
        for tensor in spec.inputs:
            typical = image_dims if tensor.name == "images" else ()
            dims = tuple(typical[i] if dim == -1 and i < len(typical) else dim for i, dim in enumerate(tensor.shape))
            shape = lead + tuple(1 if dim == -1 else dim for dim in dims)
            feeds[tensor.name] = np.zeros(shape, dtype=tensor.dtype)
        backend.infer(feeds)
