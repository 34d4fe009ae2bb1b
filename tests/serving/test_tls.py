"""TLS and mutual TLS on the gRPC port, with certificates made at test time: a plaintext client cannot talk
to a TLS port, a client without (or with a foreign) certificate cannot talk to an mTLS port, a client with
a certificate the configured CA signed can, through the library and the CLI."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from clients import cli
from clients.channel import TlsFiles
from clients.client import VisionClient
from clients.errors import VisionError
from clients.server_process import ServerProcess
from serving.config import load_config
from serving.tls import TlsSettingsError, server_credentials
from tests.protocols.repositories import write_tiny_classifier

Key = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Authority:
    """A certificate authority that writes PEM files signed by it."""

    name: str
    key: Key
    certificate: x509.Certificate

    @classmethod
    def create(cls, name: str) -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        certificate = (
            _builder(subject, subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(name, key, certificate)

    def write(self, folder: Path) -> Path:
        path = folder / f"{self.name}.crt"
        path.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))
        return path

    def issue(self, folder: Path, name: str, *, server: bool) -> tuple[Path, Path]:
        """A leaf certificate and its key: for 127.0.0.1/localhost (server) or a client; returns (cert, key)."""
        key = ec.generate_private_key(ec.SECP256R1())
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = _builder(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), self.certificate.subject, key.public_key()
        ).add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if server:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert, key_path = folder / f"{name}.crt", folder / f"{name}.key"
        cert.write_bytes(builder.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ))
        return cert, key_path


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
    )


@dataclass(frozen=True)
class Pki:
    ca: Path
    server: tuple[Path, Path]
    client: tuple[Path, Path]
    foreign_client: tuple[Path, Path]  # signed by a CA the server does not trust


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    authority, stranger = Authority.create("test-ca"), Authority.create("other-ca")
    return Pki(
        ca=authority.write(folder),
        server=authority.issue(folder, "server", server=True),
        client=authority.issue(folder, "client", server=False),
        foreign_client=stranger.issue(folder, "stranger", server=False),
    )


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("tls_repository")
    write_tiny_classifier(repository)
    return repository


@pytest.fixture(scope="module")
def tls_server(repository: Path, pki: Pki) -> Iterator[ServerProcess]:
    cert, key = pki.server
    with ServerProcess.start(repository, extra_args=["--tls-cert", str(cert), "--tls-key", str(key)],
                             tls=TlsFiles(ca=pki.ca)) as server:
        yield server


@pytest.fixture(scope="module")
def mtls_server(repository: Path, pki: Pki) -> Iterator[ServerProcess]:
    """Started with Triton's spelling of the flags."""
    (cert, key), (client_cert, client_key) = pki.server, pki.client
    args = ["--grpc-server-cert", str(cert), "--grpc-server-key", str(key), "--grpc-root-cert", str(pki.ca)]
    with ServerProcess.start(repository, extra_args=args, tls=TlsFiles(pki.ca, client_cert, client_key)) as server:
        yield server


def _models(target: str, tls: TlsFiles | None) -> list[str]:
    with VisionClient(target, timeout=5, tls=tls) as client:
        return [model.name for model in client.list_models()]


def test_tls_port_serves_tls_clients_and_refuses_plaintext(tls_server: ServerProcess, pki: Pki) -> None:
    assert _models(tls_server.target, TlsFiles(ca=pki.ca)) == ["tiny_classifier"]
    with pytest.raises(VisionError) as refused:
        _models(tls_server.target, None)
    assert refused.value.code.name == "UNAVAILABLE"
    assert "listening on" in tls_server.log() and "(TLS;" in tls_server.log()


def test_mutual_tls_needs_a_client_certificate_the_ca_signed(mtls_server: ServerProcess, pki: Pki) -> None:
    assert _models(mtls_server.target, TlsFiles(pki.ca, *pki.client)) == ["tiny_classifier"]
    for refused_tls in (None, TlsFiles(ca=pki.ca), TlsFiles(pki.ca, *pki.foreign_client)):
        with pytest.raises(VisionError) as refused:
            _models(mtls_server.target, refused_tls)
        assert refused.value.code.name == "UNAVAILABLE", refused_tls
    assert "(mutual TLS;" in mtls_server.log()


def test_cli_connects_with_tls_files(mtls_server: ServerProcess, pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    cert, key = pki.client
    assert cli.main(["models", "--server", mtls_server.target, "--tls-ca", str(pki.ca),
                     "--tls-cert", str(cert), "--tls-key", str(key)]) == 0
    assert "tiny_classifier" in capsys.readouterr().out
    assert cli.main(["models", "--server", mtls_server.target, "--timeout", "3", "--tls-ca", str(pki.ca)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("ninefold: error: no ninefold server answers") and "UNAVAILABLE" in error


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tls-cert", "{cert}"], "--tls-cert and --tls-key go together"),
        (["--tls-client-ca", "{ca}"], "--tls-client-ca needs --tls-cert and --tls-key"),
        (["--tls-cert", "{cert}", "--tls-key", "{missing}"], "--tls-key '{missing}' cannot be read"),
        (["--tls-cert", "{ca}", "--tls-key", "{repository}/tiny_classifier/config.pbtxt"], "is not a PEM file"),
    ],
    ids=["cert-without-key", "client-ca-without-cert", "missing-key", "not-pem"],
)
def test_tls_settings_that_cannot_work_are_refused(
    flags: list[str], message: str, pki: Pki, repository: Path, tmp_path: Path
) -> None:
    names = {"cert": pki.server[0], "ca": pki.ca, "missing": tmp_path / "absent.key", "repository": repository}
    argv = ["--model-repository", str(repository), *(flag.format(**names) for flag in flags)]
    with pytest.raises(TlsSettingsError, match=message.format(**names)):
        server_credentials(load_config(argv, {}))


def test_plaintext_without_tls_flags(repository: Path) -> None:
    assert server_credentials(load_config(["--model-repository", str(repository)], {})) is None
