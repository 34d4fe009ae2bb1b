"""How the client connects: channel options as one constant, round robin over every address.

Targets are gRPC target strings: `host:port`, or `dns:///name:port`. For a Kubernetes
headless Service (`clusterIP: None`) use `dns:///ninefold.NAMESPACE.svc.cluster.local:8001`:
DNS returns one address per ready pod, the `round_robin` policy keeps a connection to each and
sends each call to the next one, so long-lived gRPC connections do not pin all work to one pod.
gRPC re-resolves the name when a connection drops (and at most every
`grpc.dns_min_time_between_resolutions_ms`), so pods that come and go are followed.
With a single address (`localhost:8001`, a ClusterIP Service) round robin is simply one connection.

A server started with --tls-cert/--tls-key speaks TLS only: pass `TlsFiles` (the CA that signed its
certificate; for mutual TLS also this client's certificate and key) and the channel is a secure one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio

from clients.errors import InputError

DEFAULT_TARGET = "localhost:8001"
SERVER_VARIABLE = "NINEFOLD_SERVER"
"""Environment variable naming the server for every client command (`ninefold classify`, `ninefold bench`)."""
NO_SERVER_HINT = (
    "start one with `ninefold serve --model-repository DIR`, or pass --server HOST:PORT (or set NINEFOLD_SERVER)"
)
"""What to do when nothing answers at the target: said by every command that connects."""
DEFAULT_TIMEOUT_S = 10.0
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""Largest request or response: several full-resolution images fit; the server has its own limit."""

SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        # Inference calls are idempotent: a call that found a pod draining (UNAVAILABLE) is retried,
        # on the next pod under round robin, within the call's own deadline.
        "methodConfig": [
            {
                "name": [{"service": "ninefold.v1.Vision"}],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "0.5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
)

CHANNEL_OPTIONS: tuple[tuple[str, str | int], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Keepalive, idle connections included, finds a vanished pod or a silently dropped connection
    # (NAT, L4 load balancer idle timeout) within ~40 s, instead of at a later call's deadline.
    # The ninefold server permits pings this often; a stricter server answers GOAWAY
    # "too_many_pings" and gRPC backs off (doubles the interval) without failing calls.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.enable_retries", 1),
    ("grpc.service_config", SERVICE_CONFIG),
)



def default_target(env: Mapping[str, str] = os.environ) -> str:
    """The server a command talks to unless told otherwise: $NINEFOLD_SERVER, else localhost:8001."""
    return env.get(SERVER_VARIABLE) or DEFAULT_TARGET


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a TLS connection: `ca` verifies the server's certificate (None: the system's roots);
    `cert` and `key` identify this client to a server that asks for a client certificate (mutual TLS)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        """Reads the files now; raises InputError for a certificate without its key, OSError for a missing file."""
        if (self.cert is None) != (self.key is None):
            raise InputError("a TLS client certificate needs its key and the key its certificate")
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca), private_key=_read(self.key), certificate_chain=_read(self.cert)
        )


def _read(path: Path | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()


def open_channel(target: str = DEFAULT_TARGET, tls: TlsFiles | None = None) -> grpc.Channel:
    """A blocking channel to `target` with CHANNEL_OPTIONS (connects lazily, on the first call);
    a TLS one when `tls` is given."""
    if tls is not None:
        return grpc.secure_channel(target, tls.credentials(), options=CHANNEL_OPTIONS)
    return grpc.insecure_channel(target, options=CHANNEL_OPTIONS)


def open_aio_channel(target: str = DEFAULT_TARGET, tls: TlsFiles | None = None) -> grpc.aio.Channel:
    """An asyncio channel to `target` with CHANNEL_OPTIONS, TLS when `tls` is given; create it inside the
    running event loop."""
    if tls is not None:
        return grpc.aio.secure_channel(target, tls.credentials(), options=CHANNEL_OPTIONS)
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
