"""Build each served model's task object once from its config parameters, and hand it out per request.

A task object (Classifier, Detector, Captioner, Generator, Warper, Aligner, Explainer) holds what its
model's `parameters` say (docs/MODEL_REPOSITORY.md) already parsed: preprocessing, labels, vocabulary,
latent size, explained layers. It is cached per ServedModel object, so a reloaded model gets a fresh one.
It runs inference straight through its ServedModel: the transport's `model.request` block counts the request.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Mapping
from typing import TypeVar

import numpy as np

from contract.names import (
    ALIGN,
    CAPTION,
    CLASSIFY,
    DECODER_MODEL_PARAMETER,
    DEFAULT_TRANSFORM,
    DETECT,
    END_TOKEN_PARAMETER,
    EXPLAIN,
    GENERATE,
    LATENT,
    MAX_LENGTH_PARAMETER,
    MAX_WORDS_PARAMETER,
    OUTPUT_RANGE_PARAMETER,
    PAD_TOKEN_PARAMETER,
    REGIONS_PARAMETER,
    SENTENCE_MODEL_PARAMETER,
    START_TOKEN_PARAMETER,
    TRANSFORM_PARAMETER,
    VOCABULARY_PARAMETER,
    WARP,
)
from serving.deferred import DeferredRows
from serving.errors import Unavailable
from serving.images import ImageLimits
from serving.models import ModelManager, ServedModel
from serving.repository import ConfigError
from serving.tasks.align import Aligner
from serving.tasks.caption import Captioner
from serving.tasks.classify import Classifier
from serving.tasks.common import json_parameter, preprocessing_from
from serving.tasks.detect import Detector
from serving.tasks.explain import Explainer, class_count, layers_from
from serving.tasks.generate import Generator
from serving.tasks.warp import Warper

Task = Classifier | Detector | Captioner | Generator | Warper | Aligner | Explainer
T = TypeVar("T")


class StartedModel:
    """A TensorModel looked up by name once, when a request starts, and used for all of its calls (a
    caption's decoder steps): a draining server refuses new lookups, and a request it admitted must
    still finish. Looked up again only when that version stopped serving (a reload replaced it).
    Each call counts as one request of that model (its own `request` block)."""

    def __init__(self, models: ModelManager, name: str) -> None:
        self._models = models
        self._name = name
        self._model = models.get(name)

    async def infer(
        self, inputs: Mapping[str, np.ndarray | DeferredRows], deadline: float | None
    ) -> Mapping[str, np.ndarray]:
        if not self._model.ready:
            self._model = self._models.get(self._name)
        model = self._model
        with model.request(deadline):
            return await model.infer(inputs, deadline)


class TaskFactory:
    """Parses a model's task parameters on first use and caches the task object per ServedModel."""

    def __init__(self, models: ModelManager, limits: ImageLimits) -> None:
        self._models = models
        self._limits = limits
        self._cache: weakref.WeakKeyDictionary[ServedModel, Task] = weakref.WeakKeyDictionary()

    def task_for(self, model: ServedModel, kind: type[T]) -> T:
        """`model`'s task object (of `kind`, matching model.task), built on first use."""
        task = self._cache.get(model)
        if task is None:
            task = self._cache[model] = self._build(model)
        if not isinstance(task, kind):
            raise TypeError(f"model {model.name} builds a {type(task).__name__}, not a {kind.__name__}")
        return task

    def _build(self, model: ServedModel) -> Task:
        parameters, name = model.parameters, model.name
        if model.task == CLASSIFY:
            return Classifier(model, preprocessing_from(parameters, name), model.labels, self._limits)
        if model.task == DETECT:
            return Detector(model, preprocessing_from(parameters, name), model.labels, self._limits)
        if model.task == WARP:
            transform = parameters.get(TRANSFORM_PARAMETER, DEFAULT_TRANSFORM)
            return Warper(model, preprocessing_from(parameters, name), model.labels, self._limits, transform)
        if model.task == EXPLAIN:
            return Explainer(
                model=model,
                preprocessing=preprocessing_from(parameters, name),
                layers=layers_from(parameters, name),
                limits=self._limits,
                name=name,
                classes=class_count(name, model.inputs, model.outputs),
                labels=model.labels,
            )
        if model.task == GENERATE:
            return _generator(model)
        if model.task == CAPTION:
            return self._captioner(model)
        if model.task == ALIGN:
            return self._aligner(model)
        raise Unavailable(f"model '{name}' has task '{model.task}', which the task API does not serve")

    def _captioner(self, model: ServedModel) -> Captioner:
        parameters, name = model.parameters, model.name
        numbers = (START_TOKEN_PARAMETER, END_TOKEN_PARAMETER, MAX_LENGTH_PARAMETER)
        _require(model, CAPTION, (DECODER_MODEL_PARAMETER, VOCABULARY_PARAMETER, *numbers))
        start, end, longest = _integers(model, numbers)
        return Captioner(
            model=model,
            decoder=functools.partial(StartedModel, self._models, parameters[DECODER_MODEL_PARAMETER]),
            preprocessing=preprocessing_from(parameters, name),
            vocabulary=_vocabulary(model),
            start_token=start,
            end_token=end,
            max_length=longest,
            limits=self._limits,
        )

    def _aligner(self, model: ServedModel) -> Aligner:
        parameters, name = model.parameters, model.name
        _require(
            model,
            ALIGN,
            (
                SENTENCE_MODEL_PARAMETER,
                VOCABULARY_PARAMETER,
                PAD_TOKEN_PARAMETER,
                MAX_WORDS_PARAMETER,
                REGIONS_PARAMETER,
            ),
        )
        pad, max_words = _integers(model, (PAD_TOKEN_PARAMETER, MAX_WORDS_PARAMETER))
        try:
            regions = np.array(json_parameter(parameters, REGIONS_PARAMETER, name), dtype=np.float32)
            if regions.ndim != 2 or regions.shape[1] != 4 or not len(regions):
                raise ValueError
        except (TypeError, ValueError):
            raise Unavailable(f"model '{name}': regions must be a list of [x1, y1, x2, y2] fractions") from None
        return Aligner(
            model=model,
            sentence_model=functools.partial(StartedModel, self._models, parameters[SENTENCE_MODEL_PARAMETER]),
            preprocessing=preprocessing_from(parameters, name),
            vocabulary=_vocabulary(model),
            pad_token=pad,
            max_words=max_words,
            regions=regions,
            limits=self._limits,
        )


def _require(model: ServedModel, task: str, keys: tuple[str, ...]) -> None:
    """Unavailable naming the task parameters `model`'s config.pbtxt lacks."""
    missing = [key for key in keys if key not in model.parameters]
    if missing:
        raise Unavailable(f"model '{model.name}' lacks {task} parameters {missing} in its config.pbtxt; re-export it")


def _integers(model: ServedModel, keys: tuple[str, ...]) -> list[int]:
    try:
        return [int(model.parameters[key]) for key in keys]
    except ValueError:
        raise Unavailable(f"model '{model.name}': {', '.join(keys)} must be integers") from None


def _vocabulary(model: ServedModel) -> tuple[str, ...]:
    """The words of the `vocabulary` file in the model's folder (line i = token id i)."""
    vocabulary_file = model.directory / model.parameters[VOCABULARY_PARAMETER]
    if vocabulary_file.parent != model.directory or not vocabulary_file.is_file():
        raise Unavailable(
            f"model '{model.name}': vocabulary '{model.parameters['vocabulary']}' is not a file in its folder"
        )
    try:
        return tuple(model.files.read_text(vocabulary_file).splitlines())
    except ConfigError as error:
        raise Unavailable(f"model '{model.name}': {error}") from None


def _generator(model: ServedModel) -> Generator:
    name = model.name
    latent = next((tensor for tensor in model.inputs if tensor.name == LATENT), None)
    if latent is None or len(latent.shape) != 1 or latent.shape[0] < 1:
        raise Unavailable(f"model '{name}' must take input 'z' of shape [B, Z] with a fixed Z to serve generate")
    has_range = OUTPUT_RANGE_PARAMETER in model.parameters
    value = json_parameter(model.parameters, OUTPUT_RANGE_PARAMETER, name) if has_range else [-1, 1]
    try:
        if not isinstance(value, list):
            raise TypeError
        low, high = (float(bound) for bound in value)
        if not high > low:
            raise ValueError
    except (TypeError, ValueError):
        raise Unavailable(f"model '{name}': output_range must be [low, high] with high > low") from None
    return Generator(model=model, latent_size=int(latent.shape[0]), output_range=(low, high))
