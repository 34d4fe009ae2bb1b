"""Build each served model's task object once from its config parameters, and hand it out per request.

A task object (Classifier, Detector, Captioner, Generator, Warper) holds what its model's
`parameters` say (docs/MODEL_REPOSITORY.md) already parsed: preprocessing, labels, vocabulary,
latent size. It is cached per ServedModel object, so a reloaded model gets a fresh one.
`for_request` binds the cached object to the model a request goes through (see serving.api.vision).
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Mapping
from dataclasses import replace
from typing import TypeVar

import numpy as np

from serving.deferred import DeferredRows
from serving.errors import Unavailable
from serving.images import ImageLimits
from serving.models import ModelManager, ServedModel
from serving.repository import ConfigError
from serving.tasks.caption import Captioner
from serving.tasks.classify import Classifier
from serving.tasks.common import TensorModel, json_parameter, preprocessing_from
from serving.tasks.detect import Detector
from serving.tasks.generate import Generator
from serving.tasks.warp import DEFAULT_TRANSFORM, TRANSFORM_PARAMETER, Warper

Task = Classifier | Detector | Captioner | Generator | Warper
T = TypeVar("T")


class StartedModel:
    """A TensorModel looked up by name once, when a request starts, and used for all of its calls (a
    caption's decoder steps): a draining server refuses new lookups, and a request it admitted must
    still finish. Looked up again only when that version stopped serving (a reload replaced it)."""

    def __init__(self, models: ModelManager, name: str) -> None:
        self._models = models
        self._name = name
        self._model = models.get(name)

    async def infer(
        self, inputs: Mapping[str, np.ndarray | DeferredRows], deadline: float | None
    ) -> Mapping[str, np.ndarray]:
        if not self._model.ready:
            self._model = self._models.get(self._name)
        return await self._model.infer(inputs, deadline)


class TaskFactory:
    """Parses a model's task parameters on first use and caches the task object per ServedModel."""

    def __init__(self, models: ModelManager, limits: ImageLimits) -> None:
        self._models = models
        self._limits = limits
        self._cache: weakref.WeakKeyDictionary[ServedModel, Task] = weakref.WeakKeyDictionary()

    def for_request(self, model: ServedModel, kind: type[T], through: TensorModel) -> T:
        """`model`'s task object (of `kind`, matching model.task), running its inference `through`."""
        task = self._cache.get(model)
        if task is None:
            task = self._cache[model] = self._build(model)
        if not isinstance(task, kind):
            raise TypeError(f"model {model.name} builds a {type(task).__name__}, not a {kind.__name__}")
        return replace(task, model=through)  # type: ignore[type-var]

    def _build(self, model: ServedModel) -> Task:
        parameters, name = model.parameters, model.name
        if model.task == "classify":
            return Classifier(model, preprocessing_from(parameters, name), model.labels, self._limits)
        if model.task == "detect":
            return Detector(model, preprocessing_from(parameters, name), model.labels, self._limits)
        if model.task == "warp":
            transform = parameters.get(TRANSFORM_PARAMETER, DEFAULT_TRANSFORM)
            return Warper(model, preprocessing_from(parameters, name), model.labels, self._limits, transform)
        if model.task == "generate":
            return _generator(model)
        if model.task == "caption":
            return self._captioner(model)
        raise Unavailable(f"model '{name}' has task '{model.task}', which the task API does not serve")

    def _captioner(self, model: ServedModel) -> Captioner:
        parameters, name = model.parameters, model.name
        required = ("decoder_model", "vocabulary", "start_token", "end_token", "max_length")
        missing = [key for key in required if key not in parameters]
        if missing:
            raise Unavailable(f"model '{name}' lacks caption parameters {missing} in its config.pbtxt; re-export it")
        vocabulary_file = model.directory / parameters["vocabulary"]
        if vocabulary_file.parent != model.directory or not vocabulary_file.is_file():
            raise Unavailable(f"model '{name}': vocabulary '{parameters['vocabulary']}' is not a file in its folder")
        try:
            start, end, longest = (int(parameters[key]) for key in ("start_token", "end_token", "max_length"))
        except ValueError:
            raise Unavailable(f"model '{name}': start_token, end_token and max_length must be integers") from None
        try:
            vocabulary = tuple(model.files.read_text(vocabulary_file).splitlines())
        except ConfigError as error:
            raise Unavailable(f"model '{name}': {error}") from None
        return Captioner(
            model=model,
            decoder=functools.partial(StartedModel, self._models, parameters["decoder_model"]),
            preprocessing=preprocessing_from(parameters, name),
            vocabulary=vocabulary,
            start_token=start,
            end_token=end,
            max_length=longest,
            limits=self._limits,
        )


def _generator(model: ServedModel) -> Generator:
    name = model.name
    latent = next((tensor for tensor in model.inputs if tensor.name == "z"), None)
    if latent is None or len(latent.shape) != 1 or latent.shape[0] < 1:
        raise Unavailable(f"model '{name}' must take input 'z' of shape [B, Z] with a fixed Z to serve generate")
    value = json_parameter(model.parameters, "output_range", name) if "output_range" in model.parameters else [-1, 1]
    try:
        if not isinstance(value, list):
            raise TypeError
        low, high = (float(bound) for bound in value)
        if not high > low:
            raise ValueError
    except (TypeError, ValueError):
        raise Unavailable(f"model '{name}': output_range must be [low, high] with high > low") from None
    return Generator(model=model, latent_size=int(latent.shape[0]), output_range=(low, high))

