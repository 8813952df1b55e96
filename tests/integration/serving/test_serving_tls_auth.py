"""Authentication and TLS on a live server: a bearer token on REST and gRPC (health probes open),
HTTPS and TLS gRPC with the server's CA, and mutual TLS that refuses a client without a certificate.

Certificates are made here, per test session, with ``cryptography``: no key is ever committed."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import httpx
import pytest

from edgeloop.serving.client import ClientError, ClientSecurity, GrpcClient, RestClient
from edgeloop.serving.launcher import ServerHandle, running_server
from edgeloop.serving.security import TlsFiles
from edgeloop.testing.media import random_frames

TOKEN = "data-plane-token-for-tests"
ADMIN_TOKEN = "admin-token-for-tests"


def _issue(directory: Path, name: str, issuer: tuple | None, ca: bool = False, server: bool = False) -> tuple:
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


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca = _issue(d, "ca", None, ca=True)
    server = _issue(d, "server", ca[:2], server=True)
    client = _issue(d, "client", ca[:2])
    rogue_ca = _issue(d, "rogue-ca", None, ca=True)
    rogue = _issue(d, "rogue-client", rogue_ca[:2])
    return {
        "ca": ca[2],
        "server_cert": server[2],
        "server_key": server[3],
        "client_cert": client[2],
        "client_key": client[3],
        "rogue_cert": rogue[2],
        "rogue_key": rogue[3],
    }


@pytest.fixture(scope="module")
def auth_server(model_dirs) -> ServerHandle:
    with running_server([model_dirs["1"]], auth_token=TOKEN, admin=True, admin_token=ADMIN_TOKEN) as srv:
        yield srv


def test_without_the_token_rest_answers_401_and_with_it_200(auth_server):
    frames = random_frames(1, 64)
    with RestClient(auth_server.rest_url) as anonymous:
        with pytest.raises(ClientError) as e:
            anonymous.infer_frames(frames)
        assert e.value.status == 401
    r = httpx.get(auth_server.rest_url + "/v2/models/inspection")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(auth_server.rest_url + "/metrics").status_code == 401
    bad = {"Authorization": "Bearer not-the-token"}
    assert httpx.post(auth_server.rest_url + "/v1/models/inspection:predict", headers=bad).status_code == 401
    with auth_server.rest_client() as client:  # the handle's clients carry the token
        assert client.infer_frames(frames).labels
    ok = httpx.get(
        auth_server.rest_url + "/v2/models/inspection", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert ok.status_code == 200
    for probe in ("/v2/health/live", "/v2/health/ready", "/"):  # kubelet probes carry no token
        assert httpx.get(auth_server.rest_url + probe).status_code == 200, probe
    metrics = httpx.get(auth_server.rest_url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    assert 'edgeloop_serving_errors_total{kind="unauthenticated",model="unknown",protocol="rest"}' in metrics


def test_without_the_token_grpc_answers_unauthenticated(auth_server):
    frames = random_frames(1, 64)
    with GrpcClient(auth_server.grpc_target) as anonymous:
        with pytest.raises(ClientError) as e:
            anonymous.infer_frames(frames)
        assert e.value.status == "UNAUTHENTICATED"
        assert anonymous.ready()  # ServerReady is a health probe: open
        with pytest.raises(ClientError) as e:
            anonymous.metadata()
        assert e.value.status == "UNAUTHENTICATED"
    wrong = GrpcClient(auth_server.grpc_target, security=ClientSecurity(token="wrong"))
    with wrong, pytest.raises(ClientError, match="UNAUTHENTICATED"):
        wrong.infer_frames(frames)
    with auth_server.grpc_client() as client:
        assert client.infer_frames(frames).labels
        assert client.metadata()["name"] == "inspection"


def test_admin_routes_take_the_admin_token_not_the_client_token(auth_server):
    url = auth_server.rest_url + "/edgeloop/admin/models/inspection/aliases/champion"
    assert (
        httpx.put(url, json={"version": "1"}, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 403
    )
    ok = httpx.put(url, json={"version": "1"}, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert ok.status_code == 200, ok.text


def test_https_and_tls_grpc_with_the_servers_ca_and_plain_http_refused(model_dirs, pki):
    tls = TlsFiles(pki["server_cert"], pki["server_key"])
    trust = ClientSecurity(ca=pki["ca"])
    with running_server([model_dirs["1"]], tls=tls, client=trust) as srv:
        assert srv.rest_url.startswith("https://")
        frames = random_frames(2, 64)
        with srv.rest_client() as rest, srv.grpc_client() as g:
            assert rest.infer_frames(frames).labels == g.infer_frames(frames).labels
        plain = f"http://127.0.0.1:{srv.http_port}/v2/health/ready"
        with pytest.raises(httpx.HTTPError):
            httpx.get(plain, timeout=5)
        with pytest.raises(httpx.ConnectError):  # a client that does not trust the CA
            httpx.get(srv.rest_url + "/v2/health/ready", timeout=5)
        with GrpcClient(srv.grpc_target, timeout_s=5) as insecure:
            with pytest.raises(ClientError) as e:
                insecure.infer_frames(frames)
            assert e.value.status == "UNAVAILABLE"


def test_mutual_tls_refuses_a_client_without_a_certificate_signed_by_the_client_ca(model_dirs, pki):
    tls = TlsFiles(pki["server_cert"], pki["server_key"], client_ca=pki["ca"])
    mutual = ClientSecurity(ca=pki["ca"], cert=pki["client_cert"], key=pki["client_key"])
    with running_server([model_dirs["1"]], tls=tls, client=mutual) as srv:
        frames = random_frames(1, 64)
        with srv.rest_client() as rest, srv.grpc_client() as g:
            assert rest.infer_frames(frames).labels and g.infer_frames(frames).labels
        no_cert = ClientSecurity(ca=pki["ca"])
        rogue = ClientSecurity(ca=pki["ca"], cert=pki["rogue_cert"], key=pki["rogue_key"])
        for security in (no_cert, rogue):
            with pytest.raises(httpx.HTTPError):
                httpx.get(srv.rest_url + "/v2/health/ready", verify=security.ssl_context(), timeout=5)
            with GrpcClient(srv.grpc_target, security=security, timeout_s=5) as g:
                with pytest.raises(ClientError) as e:
                    g.infer_frames(frames)
                assert e.value.status == "UNAVAILABLE"


def test_tls_and_token_together(model_dirs, pki):
    tls = TlsFiles(pki["server_cert"], pki["server_key"])
    with running_server(
        [model_dirs["1"]], tls=tls, auth_token=TOKEN, client=ClientSecurity(ca=pki["ca"], token=TOKEN)
    ) as srv:
        with srv.grpc_client() as g, srv.rest_client() as r:
            assert g.infer_frames(random_frames(1, 64)).labels and r.infer_frames(random_frames(1, 64)).labels
        no_token = GrpcClient(srv.grpc_target, security=ClientSecurity(ca=pki["ca"]))
        with no_token, pytest.raises(ClientError, match="UNAUTHENTICATED"):
            no_token.infer_frames(random_frames(1, 64))
