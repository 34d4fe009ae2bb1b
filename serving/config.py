"""The server's configuration: one immutable object built in `main()` from flags and environment.

Every flag `--some-flag` has the environment variable `NINEFOLD_SOME_FLAG` (12-factor, for
Kubernetes); a flag on the command line wins over the variable, the variable over the default.
Importing this module parses nothing.

Transport adapters add their own flags with `add_option` (same env convention) from their
`add_arguments(parser, env)` hook (see serving.api); their values arrive in `ServerConfig.extras`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.backends import FIXED_SHAPES_MODES, BackendSettings
from serving.images import ImageLimits

ENV_PREFIX = "NINEFOLD_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server needs to start; see `build_parser` for meanings and defaults."""

    model_repository: Path
    host: str = "127.0.0.1"
    port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    grace_seconds: float = 10.0
    strict_readiness: bool = True
    max_message_bytes: int = 64 * 1024 * 1024
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    max_image_pixels: int = 40_000_000
    max_request_image_pixels: int = 160_000_000
    max_decoding_bytes: int = 1024 * 1024 * 1024
    max_images_per_request: int = 64
    ort_threads: int = 0
    spin_wait: bool = False
    tensorrt_cache_dir: Path | None = None
    tensorrt_fp16: bool = True
    fixed_shapes: str = "gpu"
    log_level: str = "INFO"
    event_loop: str = "uvloop"
    extras: Mapping[str, Any] = field(default_factory=dict)

    def backend_settings(self) -> BackendSettings:
        return BackendSettings(
            intra_op_threads=self.ort_threads,
            spin_wait=self.spin_wait,
            tensorrt_cache_dir=self.tensorrt_cache_dir,
            tensorrt_fp16=self.tensorrt_fp16,
            fixed_shapes=self.fixed_shapes,
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


def build_parser(
    env: Mapping[str, str], extra: Sequence[Callable[[argparse.ArgumentParser, Mapping[str, str]], None]] = ()
) -> argparse.ArgumentParser:
    """The `python -m serving` / `ninefold serve` command line; `extra` hooks add adapter flags."""
    parser = argparse.ArgumentParser(
        prog="ninefold serve",
        description="Serve a model repository over gRPC (task API + Open Inference Protocol) and HTTP/REST "
        "(Open Inference Protocol) with dynamic batching. Flags use Triton's spellings where Triton has one.",
    )
    server = parser.add_argument_group("Server")
    repository = parser.add_argument_group("Model repository")
    http = parser.add_argument_group("HTTP")
    grpc = parser.add_argument_group("GRPC")
    metrics = parser.add_argument_group("Metrics")
    inputs = parser.add_argument_group("Request limits")
    backend = parser.add_argument_group("Backend (ONNX Runtime)")
    logs = parser.add_argument_group("Logging")
    add_option(repository, env, "--model-repository", default=None, type=Path, required=True,
               help="model repository directory (Triton layout, config.pbtxt per model)")
    add_option(server, env, "--host", default="127.0.0.1", help="address to bind (0.0.0.0 in a container)")
    add_option(grpc, env, "--port", default=8001, type=int, aliases=("--grpc-port",), help="gRPC port")
    add_option(http, env, "--http-port", default=8000, type=int,
               help="Open Inference Protocol HTTP/REST port; 0 = off")
    add_option(metrics, env, "--metrics-port", default=8002, type=int, help="Prometheus /metrics HTTP port; 0 = off")
    add_option(server, env, "--grace-seconds", default=10.0, type=float,
               help="on SIGTERM/SIGINT, how long in-flight requests may take to finish before exit")
    add_option(server, env, "--strict-readiness", default=True, type=bool,
               help="health service \"\" (and v2 ServerReady) is SERVING only when every model is ready, as "
               "Triton's; --no-strict-readiness: when at least one is (default: strict)")
    add_option(grpc, env, "--max-message-bytes", default=64 * 1024 * 1024, type=int,
               help="largest gRPC message accepted or sent (and largest HTTP request body)")
    add_option(grpc, env, "--tls-cert", default=None, type=Path, aliases=("--grpc-server-cert",),
               help="PEM certificate (chain) of the gRPC port; with --tls-key the port speaks TLS only")
    add_option(grpc, env, "--tls-key", default=None, type=Path, aliases=("--grpc-server-key",),
               help="PEM private key of --tls-cert")
    add_option(grpc, env, "--tls-client-ca", default=None, type=Path, aliases=("--grpc-root-cert",),
               help="PEM CA certificate(s): clients must present a certificate it signed (mutual TLS)")
    add_option(inputs, env, "--max-image-pixels", default=40_000_000, type=int,
               help="largest width*height of one input image (decompression-bomb guard)")
    add_option(inputs, env, "--max-request-image-pixels", default=160_000_000, type=int,
               help="largest width*height summed over the images of one request")
    add_option(inputs, env, "--max-decoding-bytes", default=1024 * 1024 * 1024, type=int,
               help="memory that decoding request images may hold at once, summed over all requests "
               "(RESOURCE_EXHAUSTED past it)")
    add_option(inputs, env, "--max-images-per-request", default=64, type=int, help="most images in one request")
    add_option(backend, env, "--ort-threads", default=0, type=int,
               help="ONNX Runtime intra-op threads per CPU instance; 0 = cores / instances of the model, "
               "or 1 for a model whose batch-1 run takes under 2 ms")
    add_option(backend, env, "--spin-wait", default=False, type=bool,
               help="let ONNX Runtime threads spin between runs (lower latency, burns CPU while idle)")
    add_option(backend, env, "--tensorrt-cache-dir", default=None, type=Path,
               help="TensorRT EP engine cache directory (default: trt_cache/ beside each model file)")
    add_option(backend, env, "--tensorrt-fp16", default=True, type=bool, help="allow fp16 in the TensorRT EP")
    add_option(backend, env, "--fixed-shapes", default="gpu", choices=FIXED_SHAPES_MODES,
               help="which ONNX Runtime instances run only fixed batch sizes (1, 2, 4, ... max_batch_size, one "
               "warmed session each; batches padded up): gpu, all (CPU too) or off")
    add_option(logs, env, "--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
               type=str.upper, help="log verbosity")
    add_option(server, env, "--event-loop", default="uvloop", choices=("uvloop", "asyncio"),
               help="event loop implementation")
    for hook in extra:
        hook(parser, env)
    return parser


_CORE_FIELDS = frozenset(f for f in ServerConfig.__dataclass_fields__ if f != "extras")


def load_config(
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    extra: Sequence[Callable[[argparse.ArgumentParser, Mapping[str, str]], None]] = (),
) -> ServerConfig:
    """Parse flags (argv, default sys.argv[1:]) over environment variables into a ServerConfig."""
    env = os.environ if env is None else env
    namespace = vars(build_parser(env, extra).parse_args(argv))
    core = {key: value for key, value in namespace.items() if key in _CORE_FIELDS}
    extras = {key: value for key, value in namespace.items() if key not in _CORE_FIELDS}
    return ServerConfig(**core, extras=extras)
