"""Closed by default: kserve's repository load/unload need admin with a token, readiness follows the
models, and admin on a reachable address without a token does not start."""

from __future__ import annotations

import grpc
import httpx
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

from edgeloop.serving.client import ClientError
from edgeloop.serving.launcher import ServerStartError, running_server
from edgeloop.testing.media import random_frames

UNLOAD = "/v2/repository/models/inspection/unload"
LOAD = "/v2/repository/models/inspection/load"
TOKEN = "admin-token-for-tests"


def _stub(srv) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(srv.grpc_target))


def _still_serving(srv) -> None:
    assert httpx.get(srv.rest_url + "/v2/health/ready").status_code == 200
    with srv.grpc_client() as g:
        assert g.ready()
        assert g.infer_frames(random_frames(1, 64)).labels


def test_with_defaults_unload_is_refused_over_rest_and_grpc_and_the_model_stays_ready(model_dirs):
    with running_server([model_dirs["1"]]) as srv:
        for path in (UNLOAD, LOAD):
            r = httpx.post(srv.rest_url + path)
            assert r.status_code == 403, r.text
            assert "--enable-admin" in r.json()["error"]
        traffic = srv.rest_url + "/edgeloop/admin/models/inspection/traffic"
        r = httpx.put(traffic, json={"canary": "champion=50"})
        assert r.status_code == 403 and "--enable-admin" in r.json()["error"]
        stub = _stub(srv)
        with pytest.raises(grpc.RpcError) as e:
            stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="inspection"))
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as e:
            stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="inspection"))
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        _still_serving(srv)


def test_admin_without_a_token_still_refuses_repository_unload(model_dirs):
    with running_server([model_dirs["1"]], admin=True) as srv:
        r = httpx.post(srv.rest_url + UNLOAD)
        assert r.status_code == 403 and "admin token" in r.json()["error"]
        with pytest.raises(grpc.RpcError) as e:
            _stub(srv).RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="inspection"))
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        _still_serving(srv)


def test_readiness_is_false_while_an_admin_has_the_model_unloaded(model_dirs):
    with running_server([model_dirs["1"]], admin=True, admin_token=TOKEN) as srv:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert httpx.post(srv.rest_url + UNLOAD).status_code == 403  # no token
        assert httpx.post(srv.rest_url + UNLOAD, headers={"Authorization": "Bearer wrong"}).status_code == 403
        _still_serving(srv)

        r = httpx.post(srv.rest_url + UNLOAD, headers=auth)
        assert r.status_code == 200, r.text
        ready = httpx.get(srv.rest_url + "/v2/health/ready")
        assert ready.status_code == 503 and ready.json()["not_ready"] == ["inspection"]
        assert httpx.get(srv.rest_url + "/v2/health/live").status_code == 200
        with srv.grpc_client() as g:
            assert not g.ready()
            with pytest.raises(ClientError) as err:
                g.infer_frames(random_frames(1, 64))
            assert err.value.status == "UNAVAILABLE"

        r = httpx.post(srv.rest_url + LOAD, headers=auth)
        assert r.status_code == 200, r.text
        _still_serving(srv)

        # the same over gRPC, with the token in the call's metadata
        stub, md = _stub(srv), (("authorization", f"Bearer {TOKEN}"),)
        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="inspection"), metadata=md)
        assert not stub.ServerReady(pb.ServerReadyRequest()).ready
        assert httpx.get(srv.rest_url + "/v2/health/ready").status_code == 503
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="inspection"), metadata=md)
        assert stub.ServerReady(pb.ServerReadyRequest()).ready


def test_admin_on_every_interface_without_a_token_does_not_start(model_dirs):
    with (
        pytest.raises(ServerStartError, match="without an admin token"),
        running_server([model_dirs["1"]], admin=True, extra_args=["--bind_host", "0.0.0.0"]),
    ):
        pass
