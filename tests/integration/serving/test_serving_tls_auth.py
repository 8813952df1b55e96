"""Authentication and TLS on a live server: a bearer token on REST and gRPC (health probes open),
HTTPS and TLS gRPC with the server's CA, and mutual TLS that refuses a client without a certificate.

Certificates come from the ``tls_pki`` fixture (made per session with ``cryptography``; no key is
ever committed)."""

from __future__ import annotations

import httpx
import pytest

from edgeloop.serving.client import ClientError, ClientSecurity, GrpcClient, RestClient
from edgeloop.serving.launcher import ServerHandle, running_server
from edgeloop.serving.security import TlsFiles
from edgeloop.testing.media import random_frames

TOKEN = "data-plane-token-for-tests"
ADMIN_TOKEN = "admin-token-for-tests"


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


def test_https_and_tls_grpc_with_the_servers_ca_and_plain_http_refused(model_dirs, tls_pki):
    tls = TlsFiles(tls_pki["server_cert"], tls_pki["server_key"])
    trust = ClientSecurity(ca=tls_pki["ca"])
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


def test_mutual_tls_refuses_a_client_without_a_certificate_signed_by_the_client_ca(model_dirs, tls_pki):
    tls = TlsFiles(tls_pki["server_cert"], tls_pki["server_key"], client_ca=tls_pki["ca"])
    mutual = ClientSecurity(ca=tls_pki["ca"], cert=tls_pki["client_cert"], key=tls_pki["client_key"])
    with running_server([model_dirs["1"]], tls=tls, client=mutual) as srv:
        frames = random_frames(1, 64)
        with srv.rest_client() as rest, srv.grpc_client() as g:
            assert rest.infer_frames(frames).labels and g.infer_frames(frames).labels
        no_cert = ClientSecurity(ca=tls_pki["ca"])
        rogue = ClientSecurity(ca=tls_pki["ca"], cert=tls_pki["rogue_cert"], key=tls_pki["rogue_key"])
        for security in (no_cert, rogue):
            with pytest.raises(httpx.HTTPError):
                httpx.get(srv.rest_url + "/v2/health/ready", verify=security.ssl_context(), timeout=5)
            with GrpcClient(srv.grpc_target, security=security, timeout_s=5) as g:
                with pytest.raises(ClientError) as e:
                    g.infer_frames(frames)
                assert e.value.status == "UNAVAILABLE"


def test_tls_and_token_together(model_dirs, tls_pki):
    tls = TlsFiles(tls_pki["server_cert"], tls_pki["server_key"])
    with running_server(
        [model_dirs["1"]], tls=tls, auth_token=TOKEN, client=ClientSecurity(ca=tls_pki["ca"], token=TOKEN)
    ) as srv:
        with srv.grpc_client() as g, srv.rest_client() as r:
            assert g.infer_frames(random_frames(1, 64)).labels and r.infer_frames(random_frames(1, 64)).labels
        no_token = GrpcClient(srv.grpc_target, security=ClientSecurity(ca=tls_pki["ca"]))
        with no_token, pytest.raises(ClientError, match="UNAUTHENTICATED"):
            no_token.infer_frames(random_frames(1, 64))
