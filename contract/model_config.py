"""config.pbtxt: Triton's ModelConfig in protobuf text format, written and read here only.

The export builds a `model_config_pb2.ModelConfig` and `render`s it; the server `parse`s the file back into
the same message. Going through the message (never string templates) keeps what is written what is read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format

from contract.tensors import TensorSpec
from protos.inference import model_config_pb2 as mc

CONFIG_FILE = "config.pbtxt"
LABELS_FILE = "labels.txt"

ConfigSyntaxError = text_format.ParseError
"""What `parse` raises for text that is no ModelConfig (its message gives line and column)."""


@dataclass(frozen=True)
class ParsedConfig:
    """A parsed config.pbtxt; `ignored` describes the first field skipped as outside ninefold's subset of
    ModelConfig ("" when none was)."""

    config: mc.ModelConfig
    ignored: str = ""


def render(config: mc.ModelConfig) -> str:
    """The text of config.pbtxt for `config` (protobuf text format, Triton's reader's too)."""
    return text_format.MessageToString(config)


def parse(text: str) -> ParsedConfig:
    """Read config.pbtxt text. Fields outside ninefold's subset (protos/inference/model_config.proto) are
    skipped, so a full Triton config still loads; anything else unreadable raises ConfigSyntaxError."""
    text = _colon_before_lists(text)
    config = mc.ModelConfig()
    try:
        text_format.Parse(text, config)
        return ParsedConfig(config)
    except text_format.ParseError as strict_error:
        config = mc.ModelConfig()
        text_format.Parse(text, config, allow_unknown_field=True)
        return ParsedConfig(config, str(strict_error))


def read(folder: Path) -> mc.ModelConfig:
    """The ModelConfig of model folder `folder` (tools and tests; the server reads through its FileReader)."""
    return parse((folder / CONFIG_FILE).read_text()).config


# A quoted string, a comment, or a field name directly followed by "[" (list of messages).
_LIST_WITHOUT_COLON = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|#[^\n]*|\b([A-Za-z_]\w*)(\s*)\[')


def _colon_before_lists(text: str) -> str:
    """Write `field [ {...} ]` as `field: [ {...} ]` (same meaning).

    protobuf can skip an unknown field only in the colon form, and Triton configs often use the
    other (`model_warmup [ ... ]`, `control_input [ ... ]`); strings and comments are left alone.
    """
    return _LIST_WITHOUT_COLON.sub(
        lambda match: f"{match.group(1)}:{match.group(2)}[" if match.group(1) else match.group(0), text
    )


def parameters(config: mc.ModelConfig) -> dict[str, str]:
    """The config's `parameters` as plain strings (Triton keeps every value in string_value)."""
    return {key: value.string_value for key, value in config.parameters.items()}


def set_parameters(config: mc.ModelConfig, values: Mapping[str, str]) -> None:
    """Add `values` to the config's `parameters`, in their order."""
    for key, value in values.items():
        config.parameters[key].string_value = value


def add_inputs(config: mc.ModelConfig, tensors: Iterable[TensorSpec]) -> None:
    """Declare `tensors` as the config's inputs (shapes without the batch axis)."""
    for tensor in tensors:
        config.input.add(name=tensor.name, data_type=tensor.data_type, dims=tensor.shape)


def add_outputs(config: mc.ModelConfig, tensors: Iterable[TensorSpec]) -> None:
    """Declare `tensors` as the config's outputs, with their label files."""
    for tensor in tensors:
        config.output.add(
            name=tensor.name, data_type=tensor.data_type, dims=tensor.shape, label_filename=tensor.label_filename
        )
