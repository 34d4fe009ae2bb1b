"""The export pipeline, the same for every family: build -> train or load -> evaluate -> per graph
ONNX export + checker + parity (+ TensorRT) -> staged model folders -> atomic rename into the repository.

``build_repository`` is the Python API (tests, demo); ``export.__main__`` is the command line over it.
All user errors (unknown family, weights, output directory) are found before any training starts and
raise ExportError with a message that says what to change.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import multiprocessing
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from contract.names import BELOW_THRESHOLD_PARAMETER, FP16, FP32, precision_model_name
from export import onnx as onnx_export
from export import precision as precision_export
from export import repository, tensorrt
from export.families import family_names, get_family
from export.families.base import (
    CONFIG_KEY,
    Bar,
    ExportError,
    Family,
    FamilyConfig,
    GraphSpec,
    ParityCheck,
    ParityError,
    Quality,
    QualityError,
    WeightsError,
    configured,
)
from export.families.reference import PREFIX as REFERENCE_PREFIX
from export.train import set_threads

#: torch's weights_only refusal names the class a checkpoint pickled (a whole model, an optimizer...).
_PICKLED_CLASS = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
#: ... or, for bytes that are no pickle of tensors, what its unpickler tripped on (after pages of advice).
_UNPICKLER_REASON = re.compile(r"WeightsUnpickler error:\s*([^\n]+)")


@dataclass(frozen=True)
class ModelResult:
    """One written model folder: its name, the family's quality, its parity checks and timings (seconds)."""

    name: str
    family: str
    config: str
    task: str | None
    quality: Quality | None
    parity: tuple[ParityCheck, ...]
    tensorrt: tuple[ParityCheck, ...]
    train_seconds: float
    export_seconds: float
    path: Path

    @property
    def parity_passed(self) -> bool:
        return all(check.passed for check in self.parity)

    @property
    def worst_parity(self) -> float:
        return max((check.max_abs_diff for check in self.parity), default=0.0)


def parse_weights(specs: Sequence[str]) -> dict[str, Path]:
    """``FAMILY=PATH`` strings -> {family: path}; a malformed one raises ExportError."""
    weights: dict[str, Path] = {}
    for spec in specs:
        family, separator, path = spec.partition("=")
        if not separator or not family or not path:
            raise ExportError(f"--weights expects FAMILY=PATH, got {spec!r}")
        weights[family] = Path(path)
    return weights


def resolve_families(requested: Sequence[str] | None) -> tuple[Family[Any], ...]:
    """Families by name (None or ["all"] = every registered one, in registry order)."""
    if requested is None or list(requested) == ["all"]:
        return tuple(get_family(name) for name in family_names())
    if not requested:
        raise ExportError("no families given; use --families all or a comma-separated list")
    return tuple(get_family(name) for name in requested)


@dataclass(frozen=True)
class Checkpoint:
    """A weights file as read: its state_dict and the family settings stored beside it (CONFIG_KEY)."""

    state_dict: dict[str, torch.Tensor]
    settings: Mapping[str, object]


def read_state_dict(path: Path, family: str) -> dict[str, torch.Tensor]:
    """A checkpoint as a state_dict, read with weights_only=True (never unpickles arbitrary objects).

    Accepts a plain state_dict or a dict holding one under "state_dict" or "model".
    """
    return read_checkpoint(path, family).state_dict


def read_checkpoint(path: Path, family: str) -> Checkpoint:
    """``read_state_dict``, and the settings a checkpoint of ``export.families.base.checkpoint`` stores."""
    if not path.is_file():
        raise WeightsError(f"weights file for {family} not found: {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or unsafe pickles
        raise WeightsError(f"cannot read weights for {family} from {path}: {_unreadable(error)}") from None
    settings = loaded.get(CONFIG_KEY, {}) if isinstance(loaded, dict) else {}
    if not isinstance(settings, dict):
        raise WeightsError(f"{path}: its {CONFIG_KEY!r} entry is not a mapping of settings")
    if isinstance(loaded, dict):
        for key in ("state_dict", "model"):
            if isinstance(loaded.get(key), dict):
                loaded = loaded[key]
                break
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise WeightsError(f"{path} is not a state_dict (a mapping of parameter names to tensors)")
    return Checkpoint(state_dict=loaded, settings=settings)


def _unreadable(error: Exception) -> str:
    """What the checkpoint is instead of a state_dict, in one line. Never torch's own advice to retry
    with weights_only=False: that runs whatever code the file carries, unsafe for a file you did not make."""
    pickled = _PICKLED_CLASS.search(str(error))
    if pickled:
        return (
            f"it is a pickled {pickled.group(1)} object, not a state_dict; where the model was made, "
            "save `model.state_dict()` with torch.save and pass that file"
        )
    reason = _UNPICKLER_REASON.search(str(error))
    if reason:
        detail = reason.group(1).strip()
    else:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else "no message"
    return f"not a PyTorch checkpoint of tensors ({type(error).__name__}: {detail})"


@dataclass(frozen=True)
class ExportOptions:
    """Command-line choices applied to every exported family's config (each must have the field it sets).

    preprocess: ``--preprocess KEY=VALUE`` (contract.preprocessing fields) over the family's default;
    labels: ``--labels FILE``; variant: ``--variant NAME`` (a family's ``variants``, e.g. Faster R-CNN's
    mobilenet_v3_large_320_fpn); settings: ``--set FIELD=VALUE``, any other config field (e.g. GoogLeNet's
    transform_input).
    """

    preprocess: tuple[tuple[str, str], ...] = ()
    labels: str | None = None
    variant: str | None = None
    settings: tuple[tuple[str, str], ...] = ()


def parse_pairs(specs: Sequence[str], flag: str) -> tuple[tuple[str, str], ...]:
    """``KEY=VALUE`` strings -> pairs; a malformed one raises ExportError naming the flag."""
    pairs = []
    for spec in specs:
        key, separator, value = spec.partition("=")
        if not separator or not key.strip():
            raise ExportError(f"{flag} expects KEY=VALUE, got {spec!r}")
        pairs.append((key.strip(), value.strip()))
    return tuple(pairs)


def _config_of(
    family: Family[Any], config_name: str, has_weights: bool, options: ExportOptions = ExportOptions()
) -> FamilyConfig:
    if config_name not in family.configs:
        raise ExportError(f"{family.name} has no {config_name!r} config; choose one of {sorted(family.configs)}")
    config = family.configs[config_name]
    if options.variant is not None:
        variants: Mapping[str, FamilyConfig] = getattr(family, "variants", {})
        if options.variant not in variants:
            raise ExportError(f"--variant {options.variant}: {family.name} has variants {sorted(variants) or 'none'}")
        if variants[options.variant].name != config_name:
            raise ExportError(f"--variant {options.variant} is a {variants[options.variant].name} config's variant")
        config = variants[options.variant]
    if not config.trainable and not has_weights:
        raise ExportError(
            f"{family.name} {config_name} loads a checkpoint and cannot train here; pass --weights {family.name}=PATH"
        )
    changes: dict[str, object] = {key: _setting(config, family.name, key, text) for key, text in options.settings}
    if options.preprocess:
        changes["preprocess"] = options.preprocess
    if options.labels is not None:
        changes["labels_file"] = options.labels
    fields = {field.name for field in dataclasses.fields(config)}
    for key in changes:
        if key not in fields:
            flag = {"preprocess": "--preprocess", "labels_file": "--labels"}.get(key, f"--set {key}")
            raise ExportError(f"{flag}: {family.name} {config.name} has no such setting")
    return dataclasses.replace(config, **changes)


def _setting(config: FamilyConfig, family: str, key: str, text: str) -> object:
    """``--set KEY=VALUE`` as the type of the config's current value (bool, int, float or str)."""
    current = getattr(config, key, None)
    if current is None or not isinstance(current, bool | int | float | str):
        raise ExportError(f"--set {key}: {family} {config.name} has no such plain setting")
    if isinstance(current, bool):
        if text.lower() not in ("true", "false"):
            raise ExportError(f"--set {key}: expected true or false, got {text!r}")
        return text.lower() == "true"
    try:
        return type(current)(text)
    except ValueError:
        raise ExportError(f"--set {key}: expected {type(current).__name__}, got {text!r}") from None


def _report(
    name: str,
    family: Family[Any],
    config: FamilyConfig,
    graph: GraphSpec,
    quality: Quality | None,
    parity: Sequence[ParityCheck],
    engine_checks: Sequence[ParityCheck],
    timings: Mapping[str, float],
    seed: int,
    weights: Path | None,
    below_threshold: Sequence[str],
    agreement: Sequence[Bar] = (),
) -> dict[str, object]:
    return {
        "model": name,
        "family": family.name,
        "config": config.name,
        "task": graph.task,
        "weights": str(weights) if weights else "trained on synthetic scenes",
        "seed": seed,
        "opset": onnx_export.OPSET,
        "exporter": onnx_export.EXPORTER,
        "torch": torch.__version__,
        "max_batch_size": graph.max_batch_size,
        "precision": precision_export.precision_of(graph),
        **({"agreement": [{**asdict(bar), "passed": bar.passed} for bar in agreement]} if agreement else {}),
        "inputs": repository.signature(graph.inputs),
        "outputs": repository.signature(graph.outputs),
        "parity": {"passed": all(c.passed for c in parity), "checks": [asdict(c) for c in parity]},
        "quality": None if quality is None else {**asdict(quality), "passed": quality.passed},
        **({"below_threshold": list(below_threshold)} if below_threshold else {}),
        "tensorrt": None if not engine_checks else {"checks": [asdict(c) for c in engine_checks]},
        "seconds": dict(timings),
    }


def _tensorrt_checks(graph: GraphSpec, folder: Path, session) -> tuple[ParityCheck, ...]:
    """Build this graph's fp16 engine into the staged version folder and compare it with ONNX Runtime."""
    case = graph.parity_cases[0]
    shapes = {name: tuple(array.shape) for name, array in case.inputs.items()}
    profile = tensorrt.optimisation_profile(graph.inputs, graph.max_batch_size, shapes)
    plan = folder / repository.VERSION / tensorrt.engine_file_name(tensorrt.compute_capability())
    tensorrt.build_engine(folder / repository.VERSION / repository.MODEL_FILE, plan, profile)
    reference = onnx_export.run_session(session, case.inputs)
    produced = tensorrt.run_engine(plan, case.inputs)
    return tuple(tensorrt.agreement(f"{case.name}/{name}", reference[name], produced[name]) for name in reference)


def _require_passed(name: str, what: str, checks: Sequence[ParityCheck]) -> None:
    """Raise ParityError naming the first failed checks (``what`` says which outputs disagree)."""
    failed = [c for c in checks if not c.passed]
    if failed:
        worst = ", ".join(f"{c.name} max|diff|={c.max_abs_diff:.3g} ({c.detail})" for c in failed[:3])
        raise ParityError(f"{name}: {what} beyond tolerance: {worst}")


def trained_model(
    family: Family[Any], config: FamilyConfig, seed: int, state_dict: Mapping[str, torch.Tensor] | None
) -> tuple[torch.nn.Module, Quality | None]:
    """Build, then load ``state_dict`` or train (deterministic from seed), then evaluate: the eval-mode model."""
    set_threads()
    torch.manual_seed(seed)
    np.random.seed(seed)
    model = family.build(config)
    model = family.train(model, config, seed) if state_dict is None else family.load(model, config, state_dict)
    model.eval()
    return model, family.evaluate(model, config, seed)


def export_family(
    family: Family[Any],
    config: FamilyConfig,
    out: Path,
    *,
    seed: int,
    weights: Path | None,
    build_tensorrt: bool,
    allow_below_threshold: bool = False,
    settings: Mapping[str, object] | None = None,
    precisions: Sequence[str] = (FP32,),
) -> tuple[ModelResult, ...]:
    """Train or load one family and write its model folder(s); nothing is written unless all succeed.

    settings: config fields to set (FamilyConfig.SETTINGS); they take precedence over those the checkpoint stores.
    A model that misses a quality bar raises QualityError (nothing written) unless allow_below_threshold,
    which writes it with the misses in its report and a ``below_threshold`` config.pbtxt parameter.
    precisions: FP32 writes the family's graphs; FP16 its main graph at half precision beside them
    (export.precision: ``<model>_fp16``, its answer agreement with the fp32 model gated like a quality bar).
    """
    started, cpu_started = time.perf_counter(), time.process_time()
    loaded = read_checkpoint(weights, family.name) if weights is not None else None
    if loaded is not None:
        config = configured(config, loaded.settings, f"{weights} ({CONFIG_KEY})")
    config = configured(config, settings or {}, f"{family.name} settings")
    model, quality = trained_model(family, config, seed, loaded.state_dict if loaded is not None else None)
    graphs = family.graphs(model, config, seed)
    exported = list(graphs) if FP32 in precisions else []
    if FP16 in precisions:
        exported.append(precision_export.half_graph(graphs[0]))
    train_seconds = time.perf_counter() - started
    # CPU seconds as well as wall seconds: on a shared machine the wall clock measures the neighbours.
    train_cpu_seconds = time.process_time() - cpu_started

    with contextlib.ExitStack() as stack:
        staged = []
        for graph in exported:
            graph_started = time.perf_counter()
            precision = precision_export.precision_of(graph)
            name = precision_model_name(repository.model_name(family.name, config.name, graph.suffix), precision)
            folder = stack.enter_context(repository.staged_model(out, name))
            onnx_path = folder / repository.VERSION / repository.MODEL_FILE
            onnx_export.export_graph(graph, onnx_path)
            session = onnx_export.open_session(onnx_path)
            parity = onnx_export.graph_parity(graph, session)
            engine_checks = _tensorrt_checks(graph, folder, session) if build_tensorrt else ()
            staged.append((graph, name, folder, session, parity, engine_checks, time.perf_counter() - graph_started))

        sessions: dict[str, dict[str, Any]] = {precision: {} for precision in precisions}  # suffix -> session
        for graph, _, _, session, *_ in staged:
            sessions[precision_export.precision_of(graph)][graph.suffix] = session
        # Checks across graphs (the reference agreement on photos, the captioner's captions) judge the checkpoint
        # and the preprocessing, not the arithmetic: on the fp32 graphs, exported for them alone when not written.
        with contextlib.ExitStack() as fp32_graphs:
            if FP32 in precisions:
                run = onnx_export.runner(sessions[FP32])
            else:
                run = fp32_graphs.enter_context(onnx_export.exported_runner(graphs))
            system = tuple(family.system_parity(model, config, graphs, run))
        agreement: tuple[Bar, ...] = ()
        if FP16 in precisions:
            run = onnx_export.runner(sessions[FP16])
            agreement = getattr(family, precision_export.AGREEMENT)(model, config, seed, run)
        results: list[ModelResult] = []
        for graph, name, folder, _, parity, engine_checks, export_seconds in staged:
            precision = precision_export.precision_of(graph)
            main = graph.suffix == graphs[0].suffix
            checks = parity + (system if main else ())
            reference = tuple(c for c in checks if c.name.startswith(REFERENCE_PREFIX))
            _require_passed(name, "ONNX output differs from PyTorch", tuple(c for c in checks if c not in reference))
            _require_passed(
                name,
                "decode + served preprocessing + ONNX disagree with torchvision's transforms + PyTorch "
                "(the reference agreement gate; check --preprocess)",
                reference,
            )
            _require_passed(name, "the TensorRT engine's output differs from ONNX Runtime", engine_checks)
            bars = agreement if precision == FP16 else ()
            misses = (() if quality is None else quality.misses()) + tuple(b.describe() for b in bars if not b.passed)
            if misses and not allow_below_threshold:
                raise QualityError(f"{family.name} ({name}) is below its quality bar: {'; '.join(misses)}")
            if misses:
                graph = dataclasses.replace(
                    graph, parameters={**graph.parameters, BELOW_THRESHOLD_PARAMETER: "; ".join(misses)}
                )
            timings = {
                "train_and_evaluate": round(train_seconds, 3),
                "train_and_evaluate_cpu": round(train_cpu_seconds, 3),
                "export": round(export_seconds, 3),
            }
            report = _report(
                name, family, config, graph, quality, checks, engine_checks, timings, seed, weights, misses, bars
            )
            repository.write_metadata(folder, name, family.name, graph, report)
            results.append(
                ModelResult(
                    name=name,
                    family=family.name,
                    config=config.name,
                    task=graph.task,
                    quality=quality if main else None,
                    parity=checks,
                    tensorrt=engine_checks,
                    train_seconds=train_seconds if not results else 0.0,
                    export_seconds=export_seconds,
                    path=out / name,
                )
            )
    return tuple(results)


@dataclass(frozen=True)
class SeedRun:
    """One family trained and evaluated on one seed, nothing exported: its quality and CPU seconds."""

    family: str
    seed: int
    quality: Quality | None
    cpu_seconds: float


def measure_seeds(
    families: Sequence[str] | None,
    seeds: Sequence[int],
    *,
    config: str = "small",
    on_run: Callable[[SeedRun], None] | None = None,
) -> tuple[SeedRun, ...]:
    """Train and evaluate each family once per seed in this process: how much margin a recipe has.

    Seed by seed, so that the classifiers of one seed share its (cached) training scenes.
    """
    chosen = resolve_families(families)
    configs = {family.name: _config_of(family, config, has_weights=False) for family in chosen}
    runs = []
    for seed in seeds:
        for family in chosen:
            started = time.process_time()
            _, quality = trained_model(family, configs[family.name], seed, None)
            run = SeedRun(family.name, seed, quality, time.process_time() - started)
            runs.append(run)
            if on_run is not None:
                on_run(run)
    return tuple(runs)


JOBS_ENV = "NINEFOLD_EXPORT_JOBS"


def default_jobs() -> int:
    """Families exported at once: NINEFOLD_EXPORT_JOBS, else one per core up to two.

    Each family trains single-threaded (see export.train), so two families on two cores use both
    without the thread contention that made two-thread training slower.
    """
    return max(1, int(os.environ.get(JOBS_ENV, min(2, os.cpu_count() or 1))))


def _export_named(
    name: str,
    config: FamilyConfig,
    out: Path,
    seed: int,
    weights: Path | None,
    build_tensorrt: bool,
    allow_below_threshold: bool,
    settings: Mapping[str, object],
    precisions: Sequence[str],
) -> tuple[ModelResult, ...]:
    """Export one family given by name (a worker process looks the family up in its own registry)."""
    return export_family(
        get_family(name),
        config,
        out,
        seed=seed,
        weights=weights,
        build_tensorrt=build_tensorrt,
        allow_below_threshold=allow_below_threshold,
        settings=settings,
        precisions=precisions,
    )


def build_repository(
    out: Path | str,
    *,
    families: Sequence[str] | None = None,
    config: str = "small",
    seed: int = 0,
    weights: Mapping[str, Path | str] | None = None,
    build_tensorrt: bool = False,
    jobs: int | None = None,
    on_model: Callable[[ModelResult], None] | None = None,
    allow_below_threshold: bool = False,
    settings: Mapping[str, Mapping[str, object]] | None = None,
    options: ExportOptions = ExportOptions(),
    precisions: Sequence[str] = (FP32,),
) -> tuple[ModelResult, ...]:
    """Export ``families`` (None = all registered) in ``config`` into the repository at ``out``.

    weights: {family: checkpoint path}; required for configs that do not train (full).
    settings: {family: {config field: value}} (the fields a family's config lists in SETTINGS, e.g. the
    captioner's vocabulary), over what a checkpoint stores. With
    build_tensorrt, engines are built too, and a machine without TensorRT or a GPU raises ExportError.
    jobs: families exported at once in worker processes (default ``default_jobs()``); one family, or
    jobs=1, runs in this process. on_model: called with each written model as soon as it is in place.
    Input is checked before any work; each family's folders appear atomically when it is done.
    Returns the written models in family order. A family below its quality bar is not written (unless
    allow_below_threshold, see export_family); the others are, then QualityError names every miss.
    precisions: FP32 and/or FP16 (export_family); FP16 of a family that has no fp16 export raises ExportError.
    """
    out = Path(out)
    chosen = resolve_families(families)
    weight_paths = {family: Path(path) for family, path in (weights or {}).items()}
    unknown = sorted(set(weight_paths) - {family.name for family in chosen})
    if unknown:
        raise ExportError(f"--weights given for {', '.join(unknown)}, which is not among the families exported")
    for family_name, path in weight_paths.items():
        if not path.is_file():
            raise WeightsError(f"weights file for {family_name} not found: {path}")
    family_settings = {family: dict(values) for family, values in (settings or {}).items()}
    unknown = sorted(set(family_settings) - {family.name for family in chosen})
    if unknown:
        raise ExportError(f"settings given for {', '.join(unknown)}, which is not among the families exported")
    configs = {family.name: _config_of(family, config, family.name in weight_paths, options) for family in chosen}
    for name, values in family_settings.items():
        configured(configs[name], values, f"{name} settings")  # refused now, before any training
    if FP16 in precisions and (reason := precision_export.refusal(chosen)) is not None:
        raise ExportError(reason)
    if build_tensorrt and (reason := tensorrt.unavailable_reason()) is not None:
        raise ExportError(f"cannot build TensorRT engines: {reason}")
    repository.check_writable(out)

    names = [family.name for family in chosen]
    arguments = {
        name: (
            name,
            configs[name],
            out,
            seed,
            weight_paths.get(name),
            build_tensorrt,
            allow_below_threshold,
            family_settings.get(name, {}),
            tuple(precisions),
        )
        for name in names
    }
    written: dict[str, tuple[ModelResult, ...]] = {}
    below: list[str] = []
    with tqdm(total=len(names), desc="export", unit="family", dynamic_ncols=True, disable=None) as bar:

        def finished(name: str, results: tuple[ModelResult, ...]) -> None:
            written[name] = results
            bar.update(1)
            bar.set_postfix(done=name)
            for result in results:
                if on_model is not None:
                    on_model(result)

        def collect(name: str, export: Callable[[], tuple[ModelResult, ...]]) -> None:
            try:
                finished(name, export())
            except QualityError as error:  # the other families still get written
                written[name] = ()
                below.append(str(error))
                bar.update(1)

        workers = min(jobs or default_jobs(), len(names))
        if workers <= 1:
            for name in names:
                collect(name, functools.partial(_export_named, *arguments[name]))
        else:
            with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = {pool.submit(_export_named, *arguments[name]): name for name in names}
                try:
                    for future in as_completed(futures):
                        collect(futures[future], future.result)
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)  # families already running still finish
                    raise
    if below:
        raise QualityError(
            "; ".join(below) + " (not written; --allow-below-threshold writes them with a warning stamp)"
        )
    return tuple(result for name in names for result in written[name])
