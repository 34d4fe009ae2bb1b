"""The model repository on disk: discovery, versions, config.pbtxt parsing and validation.

Layout and format are Triton's (docs/MODEL_REPOSITORY.md). Nothing here loads a runtime: the
functions read files and return immutable descriptions, or raise ConfigError with a message that
names the file (relative to the repository, so no server paths leak to clients) and the field.
Every file of a model is read through a FileReader, which can confine reads to the repository.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format

from protos.inference import model_config_pb2 as mc
from serving.backends import ONNX_PLATFORMS, TENSORRT_PLATFORMS
from serving.batching import BatchPolicy
from serving.tensors import NUMPY_DTYPES, TensorSpec

log = logging.getLogger(__name__)

CONFIG_FILE = "config.pbtxt"
#: Values of the `task` parameter (docs/MODEL_REPOSITORY.md).
TASKS = ("classify", "detect", "caption", "generate", "warp", "explain")
DECODER_TASK = "caption_decoder"
#: Parameter `ninefold export --allow-below-threshold` writes into a model that missed a quality bar (the
#: bars it missed); the server logs it as a warning when it loads the model.
BELOW_THRESHOLD_PARAMETER = "below_threshold"


class ConfigError(ValueError):
    """A model folder or its config.pbtxt is unusable; the message names file and field."""


@dataclass(frozen=True)
class FileReader:
    """Reads a model's files, with `confined_to` (a resolved repository root) only files inside it.

    Model control promises that a load reads nothing outside the repository. Checking a path and
    reading it later leaves a window in which a symlink can be swapped; so each file is opened once,
    the kernel is asked where the opened file really is (/proc/self/fd, Linux), and the bytes read from
    that same descriptor are what the loader parses or hands to the runtime.
    """

    confined_to: Path | None = None
    repository: Path | None = None  # as the server was given it, to name files in messages

    @classmethod
    def confined(cls, repository: Path) -> FileReader:
        return cls(repository.resolve(), repository)

    def read_bytes(self, path: Path) -> bytes:
        """The file's bytes; raises ConfigError when it cannot be read or (confined) lies outside."""
        try:
            descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as error:
            raise ConfigError(f"{self._name(path)} cannot be read ({error.strerror})") from None
        try:
            if self.confined_to is not None:
                opened = Path(os.readlink(f"/proc/self/fd/{descriptor}"))
                if not opened.is_relative_to(self.confined_to):
                    raise ConfigError(f"{self._name(path)} is outside the model repository (a symlink?); refused")
            with os.fdopen(descriptor, "rb", closefd=False) as file:
                return file.read()
        finally:
            os.close(descriptor)

    def read_text(self, path: Path) -> str:
        return self.read_bytes(path).decode()

    def _name(self, path: Path) -> str:
        if self.repository is not None and path.is_relative_to(self.repository):
            return str(path.relative_to(self.repository))
        return path.name


#: Reads whatever a path leads to: the operator's own repository (links to an engine cache included).
UNCONFINED = FileReader()


@dataclass(frozen=True)
class ModelSource:
    """One model folder: its name, where it is, and the integer version folders it holds."""

    name: str
    directory: Path
    versions: tuple[int, ...]  # ascending


@dataclass(frozen=True)
class ModelSpec:
    """What config.pbtxt says about a model, validated. Shapes exclude the batch axis when it batches."""

    name: str
    config: mc.ModelConfig
    platform: str
    task: str  # "" = plain tensor model
    family: str
    parameters: dict[str, str]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    labels: tuple[str, ...]
    policy: BatchPolicy


def discover(repository: Path) -> list[ModelSource]:
    """Every model folder (a directory holding config.pbtxt or a version folder), sorted by name.

    Raises ConfigError when the repository itself is missing.
    """
    if not repository.is_dir():
        raise ConfigError(f"model repository '{repository}' is not a directory")
    sources = []
    for directory in sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith(".")):
        versions = tuple(sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and is_version_name(p.name)))
        if versions or (directory / CONFIG_FILE).exists():
            sources.append(ModelSource(directory.name, directory, versions))
    return sources


def is_version_name(name: str) -> bool:
    """A version folder's name: ASCII digits only (str.isdigit also takes "١", which int() reads as 1)."""
    return name.isascii() and name.isdigit()


def read_config(source: ModelSource, files: FileReader = UNCONFINED) -> mc.ModelConfig:
    """Parse `<model>/config.pbtxt`. Fields outside ninefold's subset are skipped and logged."""
    where = f"{source.name}/{CONFIG_FILE}"
    path = source.directory / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{where} is missing")
    text = _colon_before_lists(files.read_text(path))
    config = mc.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as strict_error:
        config = mc.ModelConfig()
        try:
            text_format.Parse(text, config, allow_unknown_field=True)
        except text_format.ParseError as error:
            raise ConfigError(f"{where}: {error}") from None
        log.info("%s: ignoring fields ninefold does not use (first: %s)", where, strict_error)
    if not config.name:
        config.name = source.name
    return config


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


def model_spec(source: ModelSource, config: mc.ModelConfig, files: FileReader = UNCONFINED) -> ModelSpec:
    """Validate a parsed config against the folder it came from."""
    where = f"{source.name}/{CONFIG_FILE}"

    def fail(message: str) -> ConfigError:
        return ConfigError(f"{where}: {message}")

    if config.name != source.name:
        raise fail(f"name '{config.name}' must match the folder name '{source.name}'")
    for key, value in (("platform", config.platform), ("backend", config.backend)):
        if value and value not in ONNX_PLATFORMS + TENSORRT_PLATFORMS:
            raise fail(f"{key} '{value}' is not supported; use onnxruntime_onnx or tensorrt_plan")
    platform = config.platform or config.backend
    if not platform:
        raise fail("platform is missing; use onnxruntime_onnx or tensorrt_plan")
    if config.max_batch_size < 0:
        raise fail(f"max_batch_size must be >= 0, got {config.max_batch_size}")
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    task = parameters.get("task", "")
    if task and task not in TASKS + (DECODER_TASK,):
        raise fail(f"parameters.task '{task}' is unknown; expected one of {', '.join(TASKS + (DECODER_TASK,))}")
    inputs = tuple(_tensor(where, "input", t.name, t.data_type, t.dims, t.reshape.shape) for t in config.input)
    outputs = tuple(
        _tensor(where, "output", t.name, t.data_type, t.dims, t.reshape.shape, t.label_filename)
        for t in config.output
    )
    labels: tuple[str, ...] = ()
    for output in outputs:
        if output.label_filename:
            label_path = source.directory / output.label_filename
            if not label_path.is_file() or Path(output.label_filename).name != output.label_filename:
                raise fail(
                    f"output '{output.name}' label_filename '{output.label_filename}' is not a file in the model folder"
                )
            labels = labels or tuple(line.strip() for line in files.read_text(label_path).splitlines() if line.strip())
    return ModelSpec(
        name=source.name,
        config=config,
        platform=platform,
        task=task,
        family=parameters.get("family", ""),
        parameters=parameters,
        inputs=inputs,
        outputs=outputs,
        labels=labels,
        policy=batch_policy(where, config),
    )


def batch_policy(where: str, config: mc.ModelConfig) -> BatchPolicy:
    """The batcher's policy from max_batch_size and dynamic_batching.

    Without a `dynamic_batching` block every request runs alone (Triton's default scheduler):
    a request may still carry up to max_batch_size items, but requests are never combined.
    """
    if not config.HasField("dynamic_batching"):
        return BatchPolicy(max_batch_size=config.max_batch_size, combines=False)
    batching = config.dynamic_batching
    if config.max_batch_size == 0:
        raise ConfigError(f"{where}: dynamic_batching needs max_batch_size > 0")
    preferred = tuple(sorted(set(batching.preferred_batch_size)))
    bad = [size for size in preferred if not 0 < size <= config.max_batch_size]
    if bad:
        raise ConfigError(
            f"{where}: dynamic_batching.preferred_batch_size {bad} must be within 1..max_batch_size "
            f"({config.max_batch_size})"
        )
    queue = batching.default_queue_policy
    return BatchPolicy(
        max_batch_size=config.max_batch_size,
        preferred_batch_sizes=preferred,
        max_queue_delay_s=batching.max_queue_delay_microseconds * 1e-6,
        max_queue_size=queue.max_queue_size,
        default_timeout_s=queue.default_timeout_microseconds * 1e-6,
    )


def _tensor(
    where: str, kind: str, name: str, data_type: int, dims: Sequence[int], reshape: Sequence[int], labels: str = ""
) -> TensorSpec:
    def fail(message: str) -> ConfigError:
        return ConfigError(f"{where}: {message}")

    if not name:
        raise fail(f"an {kind} has no name")
    if data_type not in NUMPY_DTYPES:
        raise fail(f"{kind} '{name}' data_type {mc.DataType.Name(data_type)} is not supported")
    if any(dim == 0 or dim < -1 for dim in dims):
        raise fail(f"{kind} '{name}' dims {list(dims)} must be positive or -1")
    if reshape and -1 not in dims and _count(reshape) != _count(dims):
        raise fail(f"{kind} '{name}' reshape {list(reshape)} must hold as many elements as dims {list(dims)}")
    return TensorSpec(name, data_type, tuple(dims), labels)


def _count(shape: Sequence[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def served_versions(source: ModelSource, config: mc.ModelConfig) -> tuple[int, ...]:
    """The versions `version_policy` selects (default: the latest), ascending."""
    where = f"{source.name}/{CONFIG_FILE}"
    if not source.versions:
        raise ConfigError(f"{source.name}: no version folder (expected {source.name}/1/)")
    policy = config.version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return source.versions
    if choice == "specific":
        missing = sorted(set(policy.specific.versions) - set(source.versions))
        if missing:
            raise ConfigError(f"{where}: version_policy.specific lists versions {missing} with no folder")
        return tuple(sorted(policy.specific.versions))
    keep = policy.latest.num_versions if choice == "latest" and policy.latest.num_versions > 0 else 1
    return source.versions[-keep:]
