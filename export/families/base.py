"""The contract every model family implements, and the value types the export pipeline passes around.

A family turns a configuration name (``small`` / ``full``) into trained (or loaded) PyTorch modules and
describes, declaratively, the graphs to export: the pipeline (``export.pipeline``) does the rest the same
way for every family (ONNX export, checker, parity against PyTorch, config.pbtxt, report, TensorRT).

Life cycle of one family export, as the pipeline drives it::

    config = family.configs[config_name]
    model  = family.build(config)                              # nn.Module, random init
    model  = family.load(model, config, state_dict)            # --weights FAMILY=PATH given
        or   family.train(model, config, seed)                 # otherwise, when config.trainable
    quality = family.evaluate(model, config, seed)             # held-out synthetic data, or None
    graphs  = family.graphs(model, config, seed)               # one GraphSpec per model folder
    # pipeline: export + check + parity of each graph, then:
    extra   = family.system_parity(model, config, graphs, run) # cross-graph checks (captioner decoding)
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

import numpy as np
import torch
from torch import nn

from contract.names import MODEL_TASKS
from contract.preprocessing import Preprocessing
from contract.tensors import TensorSpec


@dataclass(frozen=True)
class FamilyConfig:
    """What every family's small / full configuration dataclass provides (families subclass this).

    name: "small" or "full" (the model folder is ``<family>_<name>``).
    trainable: True when the pipeline trains it on synthetic data without ``--weights``; a config that is
        not trainable needs ``--weights`` (full configs: user checkpoints, e.g. torchvision state_dicts).
    max_batch_size: config.pbtxt max_batch_size and the TensorRT profile's upper bound.
    SETTINGS: the fields a checkpoint (its CONFIG_KEY entry, see ``checkpoint``) or the command line may set,
        for what the weights alone cannot say (a caption vocabulary) or a user's model sizes; none by default.
    """

    SETTINGS: ClassVar[tuple[str, ...]] = ()

    name: str
    trainable: bool
    max_batch_size: int


@dataclass(frozen=True)
class Tolerance:
    """Parity bound for one output: pass when ``|onnx - torch| <= atol + rtol * |torch| + row_rtol * max|torch row|``
    element-wise, the last term over the element's row (its batch item).

    ``Tolerance.exact()`` (atol = rtol = 0) for integer outputs such as labels and counts. row_rtol is for
    outputs served scaled to their row's maximum (Explain's projections become 8-bit pictures), where an error
    far below the row's largest value cannot show.
    """

    atol: float
    rtol: float = 0.0
    row_rtol: float = 0.0

    @staticmethod
    def exact() -> Tolerance:
        return Tolerance(atol=0.0, rtol=0.0)


DEFAULT_TOLERANCE = Tolerance(atol=1e-4)
"""The parity bound of an output a GraphSpec names no tolerance for."""


@dataclass(frozen=True)
class ParityCase:
    """Named inputs (batch axis first, numpy) on which the ONNX graph must match PyTorch.

    Families give at least one ``real`` case (synthetic scenes) and one ``random`` case.
    """

    name: str
    inputs: Mapping[str, np.ndarray]


@dataclass(frozen=True)
class GraphSpec:
    """One exported graph = one model folder in the repository.

    module: eval-mode nn.Module; ``module(*inputs in the order of `inputs`)`` returns one tensor or a
        tuple of tensors in the order of ``outputs``. It is what gets exported, so keep training-only
        parts (auxiliary heads, discriminators) out of it.
    suffix: appended to ``<family>_<config>`` for the model name ("" for the main graph, "_decoder" for
        the captioner's step graph).
    inputs, outputs: the graph's tensors (contract.tensors.TensorSpec: shapes without the batch axis, which is
        dynamic in every exported graph; -1 marks a further dynamic axis).
    tolerances: output name -> its parity bound; outputs not named get DEFAULT_TOLERANCE.
    reference: the module parity compares the graph with when it is not ``module`` itself (an fp16 graph,
        export.precision: the fp32 model it approximates); None: ``module``.
    task: the config.pbtxt ``task`` parameter (one of contract.names.MODEL_TASKS), or None for a plain
        tensor model.
    parameters: further config.pbtxt parameters (string values; see docs/MODEL_REPOSITORY.md), e.g.
        ``preprocessing_parameter(...)``, "output_range", "decoder_model", "vocabulary".
    labels: written to labels.txt (line i = class i) when given; outputs refer to it by label_filename.
    extra_files: file name -> text content, written into the model folder (e.g. a caption vocabulary).
    parity_cases: the inputs parity is checked on (see ParityCase).
    max_batch_size: config.pbtxt max_batch_size; also the upper end of the TensorRT profile.
    """

    module: nn.Module
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    parity_cases: tuple[ParityCase, ...]
    max_batch_size: int
    task: str | None
    suffix: str = ""
    parameters: Mapping[str, str] = field(default_factory=dict)
    labels: tuple[str, ...] | None = None
    extra_files: Mapping[str, str] = field(default_factory=dict)
    tolerances: Mapping[str, Tolerance] = field(default_factory=dict)
    reference: nn.Module | None = None

    def __post_init__(self) -> None:
        if self.task is not None and self.task not in MODEL_TASKS:
            raise ValueError(f"graph task {self.task!r} is not one of {MODEL_TASKS}")
        unknown = set(self.tolerances) - {tensor.name for tensor in self.outputs}
        if unknown:
            raise ValueError(f"tolerances for {sorted(unknown)}, which are not outputs of the graph")

    def tolerance(self, output: str) -> Tolerance:
        """The parity bound of `output`."""
        return self.tolerances.get(output, DEFAULT_TOLERANCE)


@dataclass(frozen=True)
class Bar:
    """One figure a model must clear: ``value`` against ``threshold`` (``higher_is_better`` decides the way)."""

    metric: str
    value: float
    threshold: float
    higher_is_better: bool = True

    @property
    def passed(self) -> bool:
        return self.value >= self.threshold if self.higher_is_better else self.value <= self.threshold

    def describe(self) -> str:
        """E.g. ``top1 0.926 < 0.95``: the figure, the way it misses (or clears) and the bar."""
        relation = (">=" if self.higher_is_better else "<=") if self.passed else ("<" if self.higher_is_better else ">")
        return f"{self.metric} {self.value:.3f} {relation} {self.threshold:g}"


@dataclass(frozen=True)
class Quality:
    """A trained model's measured quality on held-out synthetic data.

    The main figure (metric, value, threshold) is what tables show; ``gates`` are further bars the model
    must clear as well (the captioner's per-word accuracies beside BLEU-4, the generator's diversity beside its
    confidence), because one aggregate can pass a broken model.
    passed: every bar cleared; the export refuses a model that misses any (see ``misses``).
    details: any further figures worth keeping in the report (per-class accuracy, loss, ...), JSON-serialisable.
    """

    metric: str
    value: float
    threshold: float
    higher_is_better: bool = True
    details: Mapping[str, object] = field(default_factory=dict)
    gates: tuple[Bar, ...] = ()

    @property
    def bars(self) -> tuple[Bar, ...]:
        """The main figure's bar, then the gates."""
        return (Bar(self.metric, self.value, self.threshold, self.higher_is_better), *self.gates)

    @property
    def passed(self) -> bool:
        return all(bar.passed for bar in self.bars)

    def misses(self) -> tuple[str, ...]:
        """One line per bar not cleared, e.g. ``("top1 0.926 < 0.95",)``; empty when passed."""
        return tuple(bar.describe() for bar in self.bars if not bar.passed)


@dataclass(frozen=True)
class ParityCheck:
    """One parity figure for the report: a named comparison, its worst deviation and its verdict."""

    name: str
    max_abs_diff: float
    passed: bool
    detail: str = ""


OnnxRunner = Callable[[str, Mapping[str, np.ndarray]], dict[str, np.ndarray]]
"""Runs the exported graph of the given suffix ("" = main graph) on named inputs -> named outputs."""


ConfigT = TypeVar("ConfigT", bound=FamilyConfig)


class Family(Protocol[ConfigT]):
    """What the pipeline needs from a model family (see the module docstring for the life cycle).

    Generic in the family's own config type, so that its methods take that type; the registry and the
    pipeline hold ``Family[Any]``.
    """

    @property
    def name(self) -> str:
        """Registry name (lower-case, e.g. "resnet")."""
        ...

    @property
    def task(self) -> str:
        """The task of the main graph (one of contract.names.TASKS)."""
        ...

    @property
    def configs(self) -> Mapping[str, ConfigT]:
        """The "small" and "full" configurations: frozen dataclasses derived from FamilyConfig."""
        ...

    # Optional: ``variants`` (Mapping[str, ConfigT]), the configs ``--variant NAME`` picks.

    def build(self, config: ConfigT) -> nn.Module:
        """The model with random weights (full configs: torchvision's layout where torchvision has it)."""
        ...

    def train(self, model: nn.Module, config: ConfigT, seed: int) -> nn.Module:
        """Train on synthetic data (deterministic from seed; show a tqdm bar); returns the eval-mode model."""
        ...

    def load(self, model: nn.Module, config: FamilyConfig, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
        """Load user weights (already read with weights_only=True). Raise WeightsError on a mismatch."""
        ...

    def evaluate(self, model: nn.Module, config: ConfigT, seed: int) -> Quality | None:
        """Quality on held-out synthetic data, or None where it means nothing (user weights, full model)."""
        ...

    def graphs(self, model: nn.Module, config: ConfigT, seed: int) -> Sequence[GraphSpec]:
        """The graphs to export; the first one is the main model (task = family.task)."""
        ...

    def system_parity(
        self, model: nn.Module, config: ConfigT, graphs: Sequence[GraphSpec], run: OnnxRunner
    ) -> Sequence[ParityCheck]:
        """Checks across graphs beyond per-output tolerances (captioner: identical greedy captions).

        Return () when per-graph parity says it all.
        """
        ...


class ExportError(Exception):
    """A problem the user can fix (bad family, weights, output directory); its message says how."""


class ParityError(ExportError):
    """An exported graph whose outputs differ from PyTorch beyond tolerance; it is not written."""


class QualityError(ExportError):
    """A trained or loaded model below its quality bar; it is not written unless the user allows it."""


class WeightsError(ExportError):
    """A weights file that is missing, unreadable or does not fit the family's architecture."""


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], family: str) -> nn.Module:
    """Load a state_dict exactly (same keys, same shapes) or raise WeightsError naming what differs."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{key} {tuple(state_dict[key].shape)} != {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state_dict and tuple(state_dict[key].shape) != tuple(value.shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches (e.g. {mismatched[0]})")
        raise WeightsError(f"weights do not fit {family}: " + "; ".join(parts))
    model.load_state_dict(dict(state_dict), strict=True)
    return model.eval()


CONFIG_KEY = "ninefold_config"
"""The entry of a checkpoint file beside its "state_dict" that holds a family's SETTINGS (see ``checkpoint``)."""


def checkpoint(state_dict: Mapping[str, torch.Tensor], config: FamilyConfig) -> dict[str, object]:
    """What to ``torch.save`` so that ``ninefold export --weights`` reads the weights and their settings back:
    ``{"state_dict": ..., CONFIG_KEY: {setting: value}}`` (tuples, ints and strings: weights_only can read them)."""
    return {"state_dict": dict(state_dict), CONFIG_KEY: {name: getattr(config, name) for name in config.SETTINGS}}


def configured(config: ConfigT, settings: Mapping[str, object], source: str) -> ConfigT:
    """``config`` with ``settings`` applied (lists become tuples); ExportError naming ``source`` (the checkpoint
    or the command line) for a field that is not in SETTINGS, a value of the wrong type or one the config refuses."""
    allowed = type(config).SETTINGS
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise ExportError(f"{source}: cannot set {', '.join(unknown)} (settable: {', '.join(allowed) or 'nothing'})")
    values: dict[str, Any] = {name: tuple(v) if isinstance(v, list) else v for name, v in settings.items()}
    for name, value in values.items():
        if _kind(value) != _kind(getattr(config, name)):
            raise ExportError(f"{source}: {name} must be {_kind(getattr(config, name))}, got {value!r}")
    try:
        return dataclasses.replace(config, **values)
    except ValueError as error:
        raise ExportError(f"{source}: {error}") from None


def _kind(value: object) -> str:
    """The type a setting is checked against: ``int``, ``str``, ``tuple of int`` ..."""
    if isinstance(value, tuple):
        return "tuple of " + "/".join(sorted({type(item).__name__ for item in value}) or ["anything"])
    return type(value).__name__


def square_preprocessing(size: tuple[int, int], mean: Sequence[float], std: Sequence[float]) -> Preprocessing:
    """Resize to `size` without keeping the aspect (bilinear, antialiased), then ``(x / 255 - mean) / std``:
    the models trained here on square scenes."""
    return Preprocessing(size=size, mean=_three(mean), std=_three(std))


def _three(values: Sequence[float]) -> tuple[float, float, float]:
    first, second, third = (float(value) for value in values)
    return first, second, third


def preprocessing_parameter(size: tuple[int, int], mean: Sequence[float], std: Sequence[float]) -> str:
    """The config.pbtxt ``preprocessing`` parameter of `square_preprocessing` (contract.preprocessing JSON)."""
    return square_preprocessing(size, mean, std).to_json()


def read_labels(path: str, num_classes: int) -> tuple[str, ...]:
    """``--labels FILE``: one class name a line, exactly as many as the head has classes."""
    try:
        labels = tuple(line.strip() for line in Path(path).read_text().splitlines() if line.strip())
    except OSError as error:
        raise ExportError(f"cannot read --labels {path}: {error.strerror}") from None
    if len(labels) != num_classes:
        raise ExportError(f"--labels {path} has {len(labels)} names; the checkpoint's head has {num_classes} classes")
    return labels


def input_ranges_parameter(ranges: Mapping[str, tuple[float, float]]) -> str:
    """The config.pbtxt ``input_ranges`` parameter: JSON {"input": [low, high]}, the values the graph can take
    (the server refuses others before batching, so that they cannot fail a whole batch)."""
    return json.dumps({name: [low, high] for name, (low, high) in ranges.items()})


def pixel_range(mean: Sequence[float], std: Sequence[float], margin: float = 1.0) -> tuple[float, float]:
    """What ``(pixel / 255 - mean) / std`` spans over pixels 0..255 and every channel, widened by `margin`
    (a client's own resampling may overshoot a little): the ``images`` entry of ``input_ranges``."""
    low = min(-m / s for m, s in zip(mean, std, strict=True))
    high = max((1 - m) / s for m, s in zip(mean, std, strict=True))
    return round(low - margin, 3), round(high + margin, 3)
