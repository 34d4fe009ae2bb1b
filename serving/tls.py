"""TLS on the gRPC port: the server's certificate and key, and a client CA that makes it mutual (mTLS).

Without a certificate the port is plaintext (loopback, or TLS terminated by a mesh). With one, the
port speaks TLS only; with a client CA too, a client must present a certificate that CA signed, so
the model-control bearer token never crosses the network in clear text and only known clients connect.
The metrics port stays plain HTTP (scraped inside the cluster). Flags: docs/PROTOCOLS.md.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from serving.config import ServerConfig


class TlsSettingsError(ValueError):
    """The TLS flags do not fit together or a file cannot be read; the message names the flag."""


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """Credentials for the gRPC port, or None for plaintext. Raises TlsSettingsError."""
    cert, key, client_ca = config.tls_cert, config.tls_key, config.tls_client_ca
    if cert is None and key is None:
        if client_ca is not None:
            raise TlsSettingsError("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS first)")
        return None
    if cert is None or key is None:
        raise TlsSettingsError("--tls-cert and --tls-key go together: give both or neither")
    return grpc.ssl_server_credentials(
        [(_read("--tls-key", key), _read("--tls-cert", cert))],
        root_certificates=None if client_ca is None else _read("--tls-client-ca", client_ca),
        require_client_auth=client_ca is not None,
    )


def _read(flag: str, path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise TlsSettingsError(f"{flag} '{path}' cannot be read: {error.strerror}") from None
    if b"-----BEGIN " not in data:
        raise TlsSettingsError(f"{flag} '{path}' is not a PEM file (no '-----BEGIN' line)")
    return data
