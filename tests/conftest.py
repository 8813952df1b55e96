"""Shared fixtures: the real local stack, started once per session on free ports in a temp state dir."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeloop.core.config import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu = _has_cuda() if any("gpu" in item.keywords for item in items) else False
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
        if "e2e" in parts:
            item.add_marker(pytest.mark.e2e)
        if "browser" in parts:
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.integration)
        if "gpu" in item.keywords and not gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


def _has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings pointing at a real stack (Azurite, MLflow, Label Studio, Mosquitto) on free ports.

    Set EDGELOOP_TEST_STATE_DIR to reuse a stack you already started (it is then left running).
    """
    from edgeloop.testing.stack import running_stack

    reuse = os.environ.get("EDGELOOP_TEST_STATE_DIR")
    state_dir = Path(reuse) if reuse else tmp_path_factory.mktemp("edgeloop-state")
    with running_stack(load_settings(state_dir=state_dir), "stack", keep=bool(reuse)) as settings:
        yield settings


@pytest.fixture(scope="session")
def blob_store(stack_settings: Settings):
    from edgeloop.core.blob import BlobStore

    return BlobStore.from_settings(stack_settings)


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seeded sample dataset (small), generated once per session."""
    from edgeloop.local.sample_data import generate_dataset

    out = tmp_path_factory.mktemp("sample")
    generate_dataset(out, per_class=24, seed=7, size=128)
    return out


@pytest.fixture(scope="session")
def mon_assets(tmp_path_factory):
    """Sample sets (train/ref/same/shifted) and a tiny model with its reference profile, once per session."""
    from edgeloop.testing.monitoring import MonitorAssets

    return MonitorAssets(tmp_path_factory.getbasetemp() / "monitoring-assets").build()


# ------------------------------------------------------------------ TLS test certificates
def _issue_certificate(
    directory: Path, name: str, issuer: tuple | None, ca: bool = False, server: bool = False
) -> tuple:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    )
    if ca:
        b = b.add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        b = b.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    cert = b.sign(issuer_key, hashes.SHA256())
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    return cert, key, cert_path, key_path


@pytest.fixture(scope="session")
def tls_pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A test CA with a server certificate (localhost, 127.0.0.1), a client certificate, and a client
    certificate from another CA: PEM files made with ``cryptography`` for this session only."""
    d = tmp_path_factory.mktemp("pki")
    ca = _issue_certificate(d, "ca", None, ca=True)
    server = _issue_certificate(d, "server", ca[:2], server=True)
    client = _issue_certificate(d, "client", ca[:2])
    rogue_ca = _issue_certificate(d, "rogue-ca", None, ca=True)
    rogue = _issue_certificate(d, "rogue-client", rogue_ca[:2])
    return {
        "ca": ca[2],
        "server_cert": server[2],
        "server_key": server[3],
        "client_cert": client[2],
        "client_key": client[3],
        "rogue_cert": rogue[2],
        "rogue_key": rogue[3],
    }


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny torch classifier (3 classes, 64 px) exported like the training path: the stream tests' model."""
    from edgeloop.testing.models import build_model_dir

    return build_model_dir(
        tmp_path_factory.mktemp("stream-model"),
        size=64,
        architecture="tiny",
        labels=["ok", "scratch", "dent"],
        name="stream-test",
        version="1",
    )
