"""The model server as deployed is closed by default: TLS from the cert-manager Secret, a bearer
token from a Secret, probes over HTTPS without a token, metrics scraped with both."""

from __future__ import annotations

import copy
import fnmatch

import pytest

from edgeloop.deploy.render import render_release
from edgeloop.deploy.validate import find_problems

from .conftest import DIGEST, STORAGE, needs_kubectl

OVERLAYS = ["edge-cpu", "edge-gpu", "staging", "keda"]


def _one(objs, kind):
    (found,) = [o for o in objs if o["kind"] == kind]
    return found


def _runtime_secrets(runtime) -> dict[str, str]:
    """mount path -> Secret name for the runtime container's secret volumes."""
    volumes = {v["name"]: v.get("secret", {}).get("secretName") for v in runtime["spec"]["volumes"]}
    (container,) = runtime["spec"]["containers"]
    return {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_tls_and_the_token_come_from_secrets(overlay, rendered_overlays):
    objs = rendered_overlays[overlay]
    runtime = _one(objs, "ServingRuntime")
    mounts = _runtime_secrets(runtime)
    assert mounts == {
        "/etc/edgeloop/tls": "edgeloop-serving-tls",
        "/etc/edgeloop/auth": "edgeloop-serving-auth",
    }
    env = {e["name"]: e.get("value") for e in runtime["spec"]["containers"][0]["env"]}
    assert env["KSERVE_TLS_CERT_FILE"] == "/etc/edgeloop/tls/tls.crt"
    assert env["KSERVE_TLS_KEY_FILE"] == "/etc/edgeloop/tls/tls.key"
    assert env["EDGELOOP_SERVING_AUTH_TOKEN_FILE"] == "/etc/edgeloop/auth/token"
    assert not [o for o in objs if o["kind"] == "Secret"]  # token and key never in Git


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_cert_manager_issues_the_certificate_for_the_namespaces_services(overlay, rendered_overlays):
    objs = rendered_overlays[overlay]
    cert = _one(objs, "Certificate")
    ns = cert["metadata"]["namespace"]
    assert cert["spec"]["secretName"] == "edgeloop-serving-tls"
    assert "server auth" in cert["spec"]["usages"]
    isvc = _one(objs, "InferenceService")
    service = f"{isvc['metadata']['name']}-predictor.{ns}.svc"
    assert any(fnmatch.fnmatch(service, n) for n in cert["spec"]["dnsNames"])
    scrape = _one(objs, "ServiceMonitor")["spec"]["endpoints"][0]
    assert scrape["scheme"] == "https"
    assert scrape["tlsConfig"]["ca"]["secret"] == {"name": "edgeloop-serving-tls", "key": "ca.crt"}
    assert any(fnmatch.fnmatch(scrape["tlsConfig"]["serverName"], n) for n in cert["spec"]["dnsNames"])
    assert scrape["authorization"]["credentials"] == {"name": "edgeloop-serving-auth", "key": "token"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_use_https_and_nothing_scrapes_in_clear_text(overlay, rendered_overlays):
    objs = rendered_overlays[overlay]
    isvc = _one(objs, "InferenceService")
    model = isvc["spec"]["predictor"]["model"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert model[probe]["httpGet"]["scheme"] == "HTTPS", probe
        assert model[probe]["httpGet"]["path"].startswith("/v2/health/")  # open without a token
    for obj in (isvc, _one(objs, "ServingRuntime")):
        ann = obj["metadata"].get("annotations") or {}
        assert not [k for k in ann if "prometheus" in k], ann


def test_a_certificate_typo_is_caught(rendered_overlays, schemas_dir):
    cert = copy.deepcopy(_one(rendered_overlays["edge-cpu"], "Certificate"))
    cert["spec"]["dnsName"] = cert["spec"].pop("dnsNames")
    cert["spec"]["usages"] = ["server-auth"]
    problems = find_problems([cert], schemas_dir=schemas_dir)
    assert len(problems) >= 2, problems


@needs_kubectl
def test_a_release_in_another_namespace_moves_the_certificate_names(schemas_dir):
    objs = render_release("edgeloop-inspection", "7", STORAGE, DIGEST, overlay="edge-cpu", namespace="vision")
    assert find_problems(objs, schemas_dir=schemas_dir) == []
    cert = _one(objs, "Certificate")
    assert cert["spec"]["dnsNames"] == ["*.vision.svc", "*.vision.svc.cluster.local"]
    scrape = _one(objs, "ServiceMonitor")["spec"]["endpoints"][0]
    assert scrape["tlsConfig"]["serverName"] == "metrics.vision.svc"
