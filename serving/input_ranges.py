"""The values a model's inputs may hold (config parameter `input_ranges`), checked before batching.

A graph can fail on values it cannot take: a detector's RoiAlign on boxes made of NaN or huge
numbers, an embedding lookup on an id past its vocabulary. Inside a batch that failure would hit
every request batched with it, so a config may name, per input, the closed range its values must
lie in (JSON `{"images": [-3.0, 3.0], "token": [0, 999]}`, docs/MODEL_REPOSITORY.md); a request
outside it fails alone, before batching, with INVALID_ARGUMENT naming the tensor. NaN is outside
every range.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from contract.model_config import CONFIG_FILE
from contract.names import INPUT_RANGES_PARAMETER
from serving.errors import InvalidArgument
from serving.repository import ConfigError, ModelSpec


@dataclass(frozen=True)
class InputRange:
    """Every value of input `name` must satisfy low <= value <= high."""

    name: str
    low: float
    high: float

    def check(self, array: np.ndarray, model: str) -> None:
        """InvalidArgument naming the input when a value is outside the range (or NaN)."""
        if array.size == 0:
            return
        smallest, largest = array.min(), array.max()  # NaN propagates, and fails both comparisons
        if smallest >= self.low and largest <= self.high:
            return
        found = "NaN" if np.isnan(smallest) or np.isnan(largest) else f"values from {smallest} to {largest}"
        raise InvalidArgument(
            f"input '{self.name}' of model '{model}' takes values within [{self.low:g}, {self.high:g}] "
            f"only (the model's input_ranges); the request holds {found}"
        )


def input_ranges(spec: ModelSpec) -> tuple[InputRange, ...]:
    """The `input_ranges` parameter of `spec`, checked against its numeric inputs; () when absent."""
    text = spec.parameters.get(INPUT_RANGES_PARAMETER)
    if text is None:
        return ()
    where = f"{spec.name}/{CONFIG_FILE}: parameter '{INPUT_RANGES_PARAMETER}'"
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise ConfigError(f"{where} is not valid JSON") from None
    if not isinstance(value, dict):
        raise ConfigError(f'{where} must be a JSON object {{"input name": [low, high]}}')
    numeric = {t.name for t in spec.inputs if t.dtype.kind in "iuf"}
    ranges = []
    for name, bounds in value.items():
        if name not in numeric:
            raise ConfigError(f"{where} names '{name}', which is no numeric input of the model")
        if (
            not isinstance(bounds, list)
            or len(bounds) != 2
            or not all(isinstance(b, int | float) and np.isfinite(b) for b in bounds)
            or bounds[0] > bounds[1]
        ):
            raise ConfigError(f"{where}: '{name}' must be [low, high], two finite numbers with low <= high")
        ranges.append(InputRange(name, float(bounds[0]), float(bounds[1])))
    return tuple(ranges)
