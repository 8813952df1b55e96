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
) -> list[dict[str, Any]]:
    """The manifests for one registered version: the whole release (for GitOps) or, with
    ``model_only``, just the InferenceService and its autoscaler (what the pipeline's Role may apply)."""
    from edgeloop.deploy.render import render_inference_service, render_release
    from edgeloop.pipelines import registry

    tags = registry.version_tags(settings, version)
    az = tags.get(registry.STORAGE_URI)
    digest = tags.get(registry.MODEL_DIGEST)
    if not az or not digest:
        raise DeployFailed(
            f"version {version} records no storage URI/model digest (tags "
            f"{registry.STORAGE_URI}, {registry.MODEL_DIGEST}); register it through the pipeline"
        )
    render = render_inference_service if model_only else render_release
    return render(
        settings.mlflow.registered_model,
        str(version),
        storage_url(settings, az),
        digest,
        image or None,
        overlay,
        namespace=namespace,
    )


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
        objs = render_version(
            settings, version, image, overlay, namespace or None, model_only=target == "cluster"
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
            from edgeloop.deploy.render import write_gitops

            directory = Path(gitops_dir) if gitops_dir else settings.state_dir / "gitops" / overlay
            paths = write_gitops(objs, directory)
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
) -> tuple[str, str, str]:
    """``edgeloop rollback``: redeploy the previous champion, then move the alias back."""
    from edgeloop.pipelines import registry

    name = settings.mlflow.registered_model
    c = registry.client(settings)
    current = registry.champion_version(settings)
    if current is None:
        raise registry.RegistryError(f"model '{name}' has no champion: nothing to roll back")
    previous = c.get_model_version(name, current).tags.get(registry.PREVIOUS_CHAMPION)
    if not previous:
        raise registry.RegistryError(
            f"{name} champion version {current} records no previous champion: " "nothing to roll back to"
        )
    target = resolve_target(deploy_target)
    objs = render_version(settings, previous, overlay=overlay, model_only=target == "cluster")
    if target == "cluster":
        apply_objects(objs)
        where = "cluster"
    else:
        from edgeloop.deploy.render import write_gitops

        directory = Path(gitops_dir) if gitops_dir else settings.state_dir / "gitops" / overlay
        write_gitops(objs, directory)
        where = f"gitops:{directory}"
    old, new = registry.rollback(settings)
    return old, new, where
