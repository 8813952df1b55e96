"""Signed decisions: what a signature binds, and which keys count."""

from __future__ import annotations

import base64
import json
import os
import stat

import pytest

from edgeloop.core.config import load_settings
from edgeloop.pipelines import attestation
from edgeloop.pipelines.attestation import AttestationError, Statement


def _statement(**changes) -> Statement:
    base = dict(
        model="edgeloop-inspection",
        version="3",
        model_digest="a" * 64,
        decision="approved",
        approver="alice",
        mode="human",
        decided_at="2026-11-29T10:00:00+00:00",
        evidence_digest="b" * 64,
        storage_uri="az://models/edgeloop-inspection/aaaaaaaaaaaaaaaa",
        note="looks good",
    )
    return Statement(**(base | changes))


@pytest.fixture()
def keys(tmp_path):
    return {name: attestation.generate_key(tmp_path / f"{name}.pem") for name in ("alice", "bob")}


def _trust(keys, *names):
    return {n: keys[n].public_key() for n in names}


def test_a_signed_statement_verifies_as_in_toto_with_the_approvers_key(keys):
    env = attestation.sign(_statement(), keys["alice"])
    assert env["payloadType"] == "application/vnd.in-toto+json"
    doc = json.loads(base64.b64decode(env["payload"]))
    assert doc["_type"] == "https://in-toto.io/Statement/v1"
    assert doc["subject"] == [{"name": "models:/edgeloop-inspection/3", "digest": {"sha256": "a" * 64}}]
    assert doc["predicate"]["evidence"] == {"sha256": "b" * 64} and doc["predicate"]["mode"] == "human"
    assert attestation.verify(json.dumps(env), _trust(keys, "alice", "bob")) == _statement()


@pytest.mark.parametrize(
    "field, value",
    [("model_digest", "c" * 64), ("decision", "rejected"), ("evidence_digest", "d" * 64), ("version", "4")],
)
def test_any_change_to_the_signed_statement_breaks_the_signature(keys, field, value):
    env = attestation.sign(_statement(), keys["alice"])
    forged = json.loads(base64.b64decode(env["payload"]))
    if field == "model_digest":
        forged["subject"][0]["digest"]["sha256"] = value
    elif field == "version":
        forged["subject"][0]["name"] = f"models:/edgeloop-inspection/{value}"
    elif field == "decision":
        forged["predicate"]["decision"] = value
    else:
        forged["predicate"]["evidence"]["sha256"] = value
    env["payload"] = base64.b64encode(json.dumps(forged).encode()).decode()
    with pytest.raises(AttestationError, match="not by 'alice''s trusted key"):
        attestation.verify(env, _trust(keys, "alice"))


def test_only_the_key_configured_for_the_named_approver_counts(keys):
    # bob signs a statement naming alice as the approver: bob's key is trusted, but not for alice
    env = attestation.sign(_statement(approver="alice"), keys["bob"])
    with pytest.raises(AttestationError, match="not by 'alice''s trusted key"):
        attestation.verify(env, _trust(keys, "alice", "bob"))
    with pytest.raises(AttestationError, match="'carol', who is not a trusted approver"):
        attestation.verify(attestation.sign(_statement(approver="carol"), keys["bob"]), _trust(keys, "alice"))


@pytest.mark.parametrize("envelope", ["", "{}", '{"payloadType": "text/plain"}', {"payloadType": "x"}])
def test_malformed_envelopes_are_refused_with_a_reason(envelope):
    with pytest.raises(AttestationError, match="malformed|payload type"):
        attestation.verify(envelope, {})


def test_statements_only_carry_known_decisions_and_modes(keys):
    with pytest.raises(AttestationError, match="malformed decision statement"):
        attestation.verify(
            attestation.sign(_statement(mode="mlflow-ui"), keys["alice"]), _trust(keys, "alice")
        )


def test_trusted_keys_come_from_settings_never_from_the_envelope(tmp_path, keys):
    file = tmp_path / "trusted.json"
    file.write_text(json.dumps({"alice": attestation.public_key_text(keys["alice"])}))
    s = load_settings(
        state_dir=tmp_path / "state",
        approvals={
            "trusted_keys_file": str(file),
            "trusted_keys": {"bob": attestation.public_key_text(keys["bob"])},
        },
    )
    trusted = attestation.trusted_keys(s)
    assert set(trusted) == {"alice", "bob"}
    assert attestation.keyid(trusted["alice"]) == attestation.keyid(keys["alice"].public_key())
    assert attestation.trusted_keys(load_settings(state_dir=tmp_path / "empty")) == {}
    bad = load_settings(state_dir=tmp_path / "state", approvals={"trusted_keys": {"eve": "not-a-key"}})
    with pytest.raises(AttestationError, match="trusted key of 'eve'"):
        attestation.trusted_keys(bad)


def test_local_keys_are_private_and_listed_in_the_local_trust_file(tmp_path):
    s = load_settings(state_dir=tmp_path)
    trust_file = attestation.ensure_local_keys(s, ["edgeloop-approver", "edgeloop-auto"])
    key = attestation.signing_key(s, "edgeloop-approver")
    assert stat.S_IMODE(os.stat(attestation.local_keys_dir(s) / "edgeloop-approver.pem").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(attestation.local_keys_dir(s)).st_mode) == 0o700
    attestation.ensure_local_keys(s, ["edgeloop-approver"])  # again: the key is kept
    assert (
        attestation.public_key_text(attestation.signing_key(s, "edgeloop-approver"))
        == (json.loads(trust_file.read_text())["edgeloop-approver"])
    )
    env = attestation.sign(_statement(approver="edgeloop-approver"), key)
    assert attestation.verify(env, attestation.trusted_keys(s)).approver == "edgeloop-approver"
    with pytest.raises(AttestationError, match="no signing key for 'edgeloop-pipeline'"):
        attestation.signing_key(s, "edgeloop-pipeline")


@pytest.mark.parametrize("env", [{}, {"EDGELOOP_LOCAL_RUNNER": "1", "KUBERNETES_SERVICE_HOST": "10.0.0.1"}])
def test_auto_approve_is_refused_outside_the_local_runner(monkeypatch, tmp_path, env):
    """A Kubeflow UI user may set the auto_approve parameter; the approval step refuses it before anything."""
    from edgeloop.pipelines.registry import RegistryError
    from edgeloop.pipelines.tasks import await_approval_task

    monkeypatch.delenv("EDGELOOP_LOCAL_RUNNER", raising=False)
    monkeypatch.setenv("EDGELOOP_STATE_DIR", str(tmp_path))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(RegistryError, match="only with the local runner"):
        await_approval_task("1", True, 1.0, 1.0, True, "run-1", "", "")
