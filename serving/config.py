"""The server's configuration: one immutable object built in `main()` from flags and environment.

Every field of `ServerConfig` is a flag (`model_control_mode` -> `--model-control-mode`) whose help,
--help group and Triton spellings are the field's metadata (`option`); its default is the field's
default, written once: `build_parser` makes the command line from the fields. Every flag
`--some-flag` has the environment variable `NINEFOLD_SOME_FLAG` (12-factor, for Kubernetes); a flag
on the command line wins over the variable, the variable over the default. Importing this module
parses nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.backends import FIXED_SHAPES_MODES, IO_BINDING_MODES, BackendSettings
from serving.images import ImageLimits
from serving.model_control import MODES, ModelControl

ENV_PREFIX = "NINEFOLD_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


#: The --help groups, in the order they are shown (Triton's titles where Triton has the group).
SERVER, REPOSITORY, MODEL_CONTROL, HTTP, GRPC, METRICS, LIMITS, BACKEND, LOGGING = (
    "Server", "Model repository", "Model control", "HTTP", "GRPC", "Metrics", "Request limits",
    "Backend (ONNX Runtime)", "Logging",
)
GROUPS = (SERVER, REPOSITORY, HTTP, GRPC, METRICS, LIMITS, BACKEND, LOGGING, MODEL_CONTROL)


@dataclass(frozen=True)
class Flag:
    """A ServerConfig field's flag: its --help group and text, other spellings (Triton's), the values
    allowed, and the parser of its text when not the field's type (e.g. str.upper)."""

    group: str
    help: str
    aliases: tuple[str, ...] = ()
    choices: tuple[str, ...] | None = None
    parse: Callable[[str], Any] | None = None


def option(
    group: str,
    help: str,
    *,
    aliases: Sequence[str] = (),
    choices: Sequence[str] | None = None,
    parse: Callable[[str], Any] | None = None,
) -> dict[str, Flag]:
    """A field's metadata: its Flag."""
    return {"flag": Flag(group, help, tuple(aliases), None if choices is None else tuple(choices), parse)}


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server needs to start; each field's `option` says what it means."""

    model_repository: Path = field(
        metadata=option(REPOSITORY, "model repository directory (Triton layout, config.pbtxt per model)")
    )
    host: str = field(default="127.0.0.1", metadata=option(SERVER, "address to bind (0.0.0.0 in a container)"))
    port: int = field(default=8001, metadata=option(GRPC, "gRPC port", aliases=("--grpc-port",)))
    http_port: int = field(default=8000, metadata=option(HTTP, "Open Inference Protocol HTTP/REST port; 0 = off"))
    metrics_port: int = field(default=8002, metadata=option(METRICS, "Prometheus /metrics HTTP port; 0 = off"))
    grace_seconds: float = field(default=10.0, metadata=option(
        SERVER, "on SIGTERM/SIGINT, how long in-flight requests may take to finish before exit"))
    strict_readiness: bool = field(default=True, metadata=option(
        SERVER, "health service \"\" (and v2 ServerReady) is SERVING only when every model is ready, as "
        "Triton's; --no-strict-readiness: when at least one is (default: strict)"))
    max_message_bytes: int = field(default=64 * 1024 * 1024, metadata=option(
        GRPC, "largest gRPC message accepted or sent (and largest HTTP request body)"))
    tls_cert: Path | None = field(default=None, metadata=option(
        GRPC, "PEM certificate (chain) of the gRPC port; with --tls-key the port speaks TLS only",
        aliases=("--grpc-server-cert",)))
    tls_key: Path | None = field(default=None, metadata=option(
        GRPC, "PEM private key of --tls-cert", aliases=("--grpc-server-key",)))
    tls_client_ca: Path | None = field(default=None, metadata=option(
        GRPC, "PEM CA certificate(s): clients must present a certificate it signed (mutual TLS)",
        aliases=("--grpc-root-cert",)))
    max_image_pixels: int = field(default=40_000_000, metadata=option(
        LIMITS, "largest width*height of one input image (decompression-bomb guard)"))
    max_request_image_pixels: int = field(default=160_000_000, metadata=option(
        LIMITS, "largest width*height summed over the images of one request"))
    max_decoding_bytes: int = field(default=1024 * 1024 * 1024, metadata=option(
        LIMITS, "memory that decoding request images may hold at once, summed over all requests "
        "(RESOURCE_EXHAUSTED past it)"))
    max_images_per_request: int = field(default=64, metadata=option(LIMITS, "most images in one request"))
    ort_threads: int = field(default=0, metadata=option(
        BACKEND, "ONNX Runtime intra-op threads per CPU instance; 0 = cores / instances of the model, "
        "or 1 for a model whose batch-1 run takes under 2 ms"))
    spin_wait: bool = field(default=False, metadata=option(
        BACKEND, "let ONNX Runtime threads spin between runs (lower latency, burns CPU while idle)"))
    tensorrt_cache_dir: Path | None = field(default=None, metadata=option(
        BACKEND, "TensorRT EP engine cache directory (default: trt_cache/ beside each model file)"))
    tensorrt_fp16: bool = field(default=True, metadata=option(BACKEND, "allow fp16 in the TensorRT EP"))
    fixed_shapes: str = field(default="gpu", metadata=option(
        BACKEND, "which ONNX Runtime instances run only fixed batch sizes (1, 2, 4, ... max_batch_size, one "
        "warmed session each; batches padded up): gpu, all (CPU too) or off", choices=FIXED_SHAPES_MODES))
    io_binding: str = field(default="gpu", metadata=option(
        BACKEND, "which fixed-shape instances run each batch size through an ONNX Runtime IOBinding of "
        "buffers allocated once (inputs copied to the device before the run, outputs fetched once): "
        "gpu, all (CPU too, with --fixed-shapes all) or off", choices=IO_BINDING_MODES))
    log_level: str = field(default="INFO", metadata=option(
        LOGGING, "log verbosity", choices=("DEBUG", "INFO", "WARNING", "ERROR"), parse=str.upper))
    event_loop: str = field(default="uvloop", metadata=option(
        SERVER, "event loop implementation", choices=("uvloop", "asyncio")))
    model_control_mode: str = field(default="none", metadata=option(
        MODEL_CONTROL, "'explicit' enables RepositoryModelLoad/Unload for callers presenting the token",
        choices=MODES))
    load_model: str = field(default="", metadata=option(
        MODEL_CONTROL, "explicit mode: models to load at start, comma-separated, or '*' for all (default: none)"))
    model_control_token: str = field(default="", metadata=option(
        MODEL_CONTROL, "bearer token required by RepositoryModelLoad/Unload (prefer the environment variable)"))

    def model_control(self) -> ModelControl:
        """The checked model-control settings; raises ValueError with a message fit for the command line."""
        return ModelControl.create(
            self.model_control_mode, self.model_control_token, self.model_repository, self.load_model
        )

    def backend_settings(self) -> BackendSettings:
        return BackendSettings(
            intra_op_threads=self.ort_threads,
            spin_wait=self.spin_wait,
            tensorrt_cache_dir=self.tensorrt_cache_dir,
            tensorrt_fp16=self.tensorrt_fp16,
            fixed_shapes=self.fixed_shapes,
            io_binding=self.io_binding,
        )

    def image_limits(self) -> ImageLimits:
        """The limits every transport decodes request images under."""
        return ImageLimits(
            max_pixels=self.max_image_pixels,
            max_encoded_bytes=self.max_message_bytes,
            max_request_pixels=self.max_request_image_pixels,
            max_decoding_bytes=self.max_decoding_bytes,
        )


def env_name(flag: str) -> str:
    """`--metrics-port` -> `NINEFOLD_METRICS_PORT`."""
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def parse_bool(text: str) -> bool:
    """Environment spelling of a boolean (1/0, true/false, yes/no, on/off)."""
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (1/0, true/false), got '{text}'")


def add_option(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    env: Mapping[str, str],
    flag: str,
    *,
    default: Any,
    help: str,
    type: Callable[[str], Any] = str,
    choices: Sequence[Any] | None = None,
    required: bool = False,
    aliases: Sequence[str] = (),
) -> None:
    """Add `flag` whose default comes from NINEFOLD_<FLAG> when set. Booleans get --flag/--no-flag.

    `aliases`: other spellings of the flag (Triton's), same value, no environment variable of their own.
    """
    variable = env_name(flag)
    if type is bool:
        value = parse_bool(env[variable]) if variable in env else default
        parser.add_argument(
            flag, action=argparse.BooleanOptionalAction, default=value, help=f"{help} [env {variable}]"
        )
        return
    value = type(env[variable]) if variable in env else default
    parser.add_argument(
        flag,
        *aliases,
        type=type,
        default=value,
        choices=choices,
        required=required and value is None,
        help=f"{help}{'' if default in (None, '') else f' (default: {default})'} [env {variable}]",
    )


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """The `python -m serving` / `ninefold serve` command line: one flag per ServerConfig field, in field
    order, under its group."""
    parser = argparse.ArgumentParser(
        prog="ninefold serve",
        description="Serve a model repository over gRPC (task API + Open Inference Protocol) and HTTP/REST "
        "(Open Inference Protocol) with dynamic batching. Flags use Triton's spellings where Triton has one.",
    )
    groups = {title: parser.add_argument_group(title) for title in GROUPS}
    hints = typing.get_type_hints(ServerConfig)
    for spec in dataclasses.fields(ServerConfig):
        flag: Flag = spec.metadata["flag"]
        required = spec.default is dataclasses.MISSING
        add_option(
            groups[flag.group],
            env,
            "--" + spec.name.replace("_", "-"),
            default=None if required else spec.default,
            help=flag.help,
            type=flag.parse or _value_type(hints[spec.name]),
            choices=flag.choices,
            required=required,
            aliases=flag.aliases,
        )
    return parser


def _value_type(hint: Any) -> Callable[[str], Any]:
    """The type a field's text is parsed as: its annotation, without `| None`."""
    if isinstance(hint, types.UnionType):
        return next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return typing.cast(Callable[[str], Any], hint)


def load_config(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> ServerConfig:
    """Parse flags (argv, default sys.argv[1:]) over environment variables into a ServerConfig."""
    env = os.environ if env is None else env
    return ServerConfig(**vars(build_parser(env).parse_args(argv)))
