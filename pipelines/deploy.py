"""Deploy an approved model version: render its InferenceService, apply it or write it for Flux,
then (and only then) move the ``champion`` alias.

Targets:

* ``cluster``: server-side apply with the Kubernetes client (in-cluster service
  account, else the kubeconfig), field manager ``edgeloop``;
* ``gitops``: write the release into a GitOps directory that Flux reconciles
  (default ``<state_dir>/gitops/<overlay>``);
* ``auto``: ``cluster`` when running inside a cluster (``KUBERNETES_SERVICE_HOST``),
  else ``gitops``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeloop.core.errors import EdgeloopError

if TYPE_CHECKING:
    from edgeloop.core.config import Settings
    from edgeloop.pipelines.registry import Verification

log = logging.getLogger(__name__)
FIELD_MANAGER = "edgeloop"
DEFAULT_OVERLAY = "edge-cpu"


class DeployFailed(EdgeloopError):
    """Rendering, validating or applying the release failed; champion was not moved."""


@dataclass
class DeployResult:
    version: str
    target: str  # cluster:<namespace> | gitops:<dir>
    objects: list[str]
    previous_champion: str | None
    image: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def storage_url(settings: Settings, az_uri: str) -> str:
    """``az://container/path`` -> the blob URL KServe's storage initializer fetches."""
    from edgeloop.core.blob import BlobStore, BlobUri

    u = BlobUri.parse(az_uri)
    base = BlobStore.from_settings(settings).client.url.rstrip("/")
    return f"{base}/{u.container}/{u.path}"


def render_version(
    settings: Settings,
    version: str,
    image: str = "",
    overlay: str = DEFAULT_OVERLAY,
    namespace: str | None = None,
    model_only: bool = False,
    verified: Verification | None = None,
) -> list[dict[str, Any]]:
    """The manifests for one registered version: the whole release (for GitOps) or, with
    ``model_only``, just the InferenceService and its autoscaler (what the pipeline's Role may apply).

    Only for a version with a valid signed approval of its artifacts (:func:`registry.verify_version`,
    done here unless ``verified`` is given): the storage URI and the digest come from the signed
    statement, never from the version's (editable) tags, and the InferenceService pins that digest."""
    from edgeloop.deploy.render import render_inference_service, render_release
    from edgeloop.pipelines import registry

    if verified is None or verified.version != str(version):
        verified = registry.verify_version(settings, str(version))
    st = verified.require("deployable")
    render = render_inference_service if model_only else render_release
    return render(
        settings.mlflow.registered_model,
        str(version),
        storage_url(settings, st.storage_uri),
        st.model_digest,
        image or None,
        overlay,
        namespace=namespace,
    )


def write_release(
    objs: list[dict[str, Any]], settings: Settings, gitops_dir: str | Path, overlay: str
) -> tuple[Path, list[Path]]:
    """The GitOps writer for a verified release (``<state_dir>/gitops/<overlay>`` by default)."""
    from edgeloop.deploy.render import write_gitops

    directory = Path(gitops_dir) if gitops_dir else settings.state_dir / "gitops" / overlay
    return directory, write_gitops(objs, directory)


def resolve_target(deploy_target: str) -> str:
    if deploy_target not in ("auto", "cluster", "gitops"):
        raise DeployFailed(f"deploy_target must be auto, cluster or gitops, not {deploy_target!r}")
    if deploy_target == "auto":
        return "cluster" if os.environ.get("KUBERNETES_SERVICE_HOST") else "gitops"
    return deploy_target


def apply_objects(objs: list[dict[str, Any]]) -> list[str]:
    """Server-side apply every object (in-cluster config, else kubeconfig)."""
    from kubernetes import config as kconfig
    from kubernetes import dynamic
    from kubernetes.client import ApiClient

    try:
        kconfig.load_incluster_config()
    except kconfig.ConfigException:
        kconfig.load_kube_config()
    dyn = dynamic.DynamicClient(ApiClient())
    done = []
    for obj in objs:
        res = dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        meta = obj["metadata"]
        kwargs = {"namespace": meta.get("namespace")} if res.namespaced else {}
        res.server_side_apply(
            body=obj, name=meta["name"], field_manager=FIELD_MANAGER, force_conflicts=True, **kwargs
        )
        done.append(f"{obj['kind']}/{meta['name']}")
    return done


def deploy_version(
    settings: Settings,
    version: str,
    *,
    image: str = "",
    deploy_target: str = "auto",
    namespace: str = "",
    gitops_dir: str | Path = "",
    overlay: str = DEFAULT_OVERLAY,
    validate: bool = True,
) -> DeployResult:
    from edgeloop.pipelines import registry

    target = resolve_target(deploy_target)
    try:
        verified = registry.verify_version(settings, str(version))
        objs = render_version(
            settings,
            version,
            image,
            overlay,
            namespace or None,
            model_only=target == "cluster",
            verified=verified,
        )
        if validate:
            from edgeloop.deploy.errors import SchemaUnavailableError
            from edgeloop.deploy.validate import validate_objects

            try:
                validate_objects(objs)
            except SchemaUnavailableError as e:
                log.warning("manifests not schema-validated: %s", e)
        if target == "cluster":
            names = apply_objects(objs)
            where = f"cluster:{namespace or objs[0]['metadata'].get('namespace', 'default')}"
        else:
            directory, paths = write_release(objs, settings, gitops_dir, overlay)
            names = [p.name for p in paths]
            where = f"gitops:{directory}"
    except EdgeloopError as e:
        raise DeployFailed(f"deploying version {version} failed, champion unchanged: {e}") from e
    except Exception as e:  # the Kubernetes client's errors
        raise DeployFailed(
            f"deploying version {version} to {target} failed, champion unchanged: " f"{type(e).__name__}: {e}"
        ) from e
    previous = registry.promote_champion(settings, version, where)
    return DeployResult(
        version=str(version), target=where, objects=names, previous_champion=previous, image=image
    )


def rollback_and_deploy(
    settings: Settings,
    deploy_target: str = "auto",
    gitops_dir: str | Path = "",
    overlay: str = DEFAULT_OVERLAY,
    to: str | None = None,
) -> tuple[str, str, str]:
    """``edgeloop rollback``: redeploy the previous champion (or ``to``), then move the alias back.
    Refused unless the target carries a valid signed approval matching its artifacts."""
    from edgeloop.pipelines import registry

    _, target_version = registry.rollback_target(settings, to)
    verified = registry.verify_version(settings, target_version)
    verified.require("a rollback target")
    target = resolve_target(deploy_target)
    objs = render_version(
        settings, target_version, overlay=overlay, model_only=target == "cluster", verified=verified
    )
    if target == "cluster":
        apply_objects(objs)
        where = "cluster"
    else:
        where = f"gitops:{write_release(objs, settings, gitops_dir, overlay)[0]}"
    old, new = registry.rollback(settings, target_version, verified=verified)
    return old, new, where
