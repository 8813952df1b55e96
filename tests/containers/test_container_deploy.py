"""The deploy steps' render inside the pipeline image: its kubectl (kustomize built in), as user 1000.

The deploy-model step renders the overlay with ``kubectl kustomize`` in edgeloop-pipeline; the image
carries the kubectl ``make images`` was given (the host's by default), root-owned and read-only, its
sha256 in a label. Containers run as user 1000 with no capabilities, no privilege escalation, no
network and a read-only root filesystem (a writable /tmp only where named: the schema validation
caches the CRD schemas there, as a pod's emptyDir would hold them).
"""

from __future__ import annotations

import pytest
import yaml

from edgeloop.testing.containers import run

pytestmark = [pytest.mark.containers, pytest.mark.slow]

DIGEST = "3f" * 32
STORAGE = "https://edgeloopprod.blob.core.windows.net/models/edgeloop-inspection/7"
LOCKED = ["--rm", "--network", "none", "--user", "1000:1000", "--cap-drop", "ALL"]
LOCKED += ["--security-opt", "no-new-privileges", "--read-only", "--read-only-tmpfs=false"]


@pytest.fixture(scope="module")
def pipeline_image(engine, images) -> str:
    from edgeloop.pipelines.image_build import KUBECTL_LABEL, _image_label

    image = images("edgeloop-pipeline")
    if _image_label(engine, image, KUBECTL_LABEL) in ("", "none"):
        pytest.skip("edgeloop-pipeline was built without kubectl (none on this machine's PATH)")
    return image


def test_the_pipeline_image_holds_the_given_kubectl_read_only_and_labelled(engine, pipeline_image):
    from edgeloop.pipelines.image_build import KUBECTL_LABEL, _image_label, kubectl_source

    assert _image_label(engine, pipeline_image, KUBECTL_LABEL) == kubectl_source().sha256
    r = run(engine, "run", *LOCKED, pipeline_image, "stat", "-c", "%u:%g %a", "/usr/local/bin/kubectl")
    assert r.stdout.split() == ["0:0", "555"]  # root's, nobody may replace it
    # sha256 inside matches the label: the binary the label names is the one that runs
    r = run(engine, "run", *LOCKED, pipeline_image, "sha256sum", "/usr/local/bin/kubectl")
    assert r.stdout.split()[0] == kubectl_source().sha256
    r = run(engine, "run", *LOCKED, pipeline_image, "kubectl", "version", "--client")
    assert "Client Version" in r.stdout and "Kustomize Version" in r.stdout
    # kustomize with nothing writable at all (no /tmp, HOME=/tmp read-only)
    r = run(
        engine,
        "run",
        *LOCKED,
        pipeline_image,
        "kubectl",
        "kustomize",
        "/app/edgeloop/manifests/overlays/edge-cpu",
    )
    kinds = {o["kind"] for o in yaml.safe_load_all(r.stdout) if o}
    assert {"InferenceService", "ServingRuntime", "Namespace"} <= kinds


@pytest.mark.parametrize("overlay", ["edge-cpu", "staging"])
def test_deploy_render_in_the_pipeline_image_gives_valid_manifests(engine, pipeline_image, overlay):
    from edgeloop.deploy.render import is_template
    from edgeloop.deploy.validate import validate_objects
    from edgeloop.schemas import schemas_dir

    opts = [*LOCKED, "--tmpfs", "/tmp:rw,size=64m,mode=1777"]
    cmd = ["edgeloop", "deploy", "render", "edgeloop-inspection", "7", "--overlay", overlay]
    cmd += ["--digest", DIGEST, "--storage-uri", STORAGE]
    r = run(engine, "run", *opts, pipeline_image, *cmd, timeout=300)
    objs = [o for o in yaml.safe_load_all(r.stdout) if o]
    isvc = next(o for o in objs if o["kind"] == "InferenceService")
    assert isvc["metadata"]["name"] == "edgeloop-inspection"
    assert isvc["metadata"]["annotations"]["edgeloop.io/model-digest"] == DIGEST
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == STORAGE
    assert not any(is_template(o) for o in objs)
    validate_objects(objs, schemas_dir=schemas_dir())  # against the vendored schemas, on the host

    # without kubectl the same render fails with the error deploy-model used to give
    r = run(
        engine, "run", *opts, "--env", "PATH=/opt/venv/bin:/usr/bin:/bin", pipeline_image, *cmd, check=False
    )
    assert r.returncode != 0 and "neither kubectl nor kustomize" in r.stderr
