"""Validate rendered Kubernetes objects before they reach a cluster.

Three layers, all reported together (:class:`ManifestValidationError` lists every problem):

1. **Core kinds** (Deployment, HPA, NetworkPolicy, RBAC, CronJob, ...) against the Kubernetes
   OpenAPI schema shipped by ``kubernetes-validate`` (strict variant: unknown fields fail),
   for :data:`KUBERNETES_VERSION`.
2. **CRD kinds** (KServe, KEDA, Kubeflow Trainer) against the ``openAPIV3Schema`` of the
   served version in the upstream CRDs vendored in :mod:`edgeloop.schemas`. On top of the JSON
   schema, fields the schema does not declare are reported: the API server would silently
   prune them, so a typo (``storageUrl``) would otherwise deploy a broken object.
   CEL rules (``x-kubernetes-validations``) are not evaluated.
3. **Kinds with no upstream schema at hand** (cert-manager's Certificate, Prometheus Operator's ServiceMonitor and
   PrometheusRule, Flux's GitRepository and Kustomization) get a *structural* check only:
   a hand-written subset of their schema (required fields and types of the parts we use).
   A cluster can still reject what passes here.

Then edgeloop's own rules: Pod Security "restricted" settings on every pod template,
volume mounts that name declared volumes, no Secret values, rendered InferenceServices that
carry a well-formed model digest and a real storage URI, and autoscalers that point at the
predictor Deployment KServe creates with the InferenceService's replica bounds.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from edgeloop.deploy.errors import ManifestValidationError, Problem, SchemaUnavailableError

KUBERNETES_VERSION = "1.32.0"

#: (apiVersion, kind) -> CRD file under the schemas directory.
CRD_FILES: dict[tuple[str, str], str] = {
    ("serving.kserve.io/v1beta1", "InferenceService"): "kserve/serving.kserve.io_inferenceservices.yaml",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "kserve/serving.kserve.io_servingruntimes.yaml",
    (
        "serving.kserve.io/v1alpha1",
        "ClusterServingRuntime",
    ): "kserve/serving.kserve.io_clusterservingruntimes.yaml",
    ("keda.sh/v1alpha1", "ScaledObject"): "keda/keda.sh_scaledobjects.yaml",
    ("trainer.kubeflow.org/v1alpha1", "TrainJob"): "kubeflow/trainer.kubeflow.org_trainjobs.yaml",
    (
        "trainer.kubeflow.org/v1alpha1",
        "ClusterTrainingRuntime",
    ): "kubeflow/trainer.kubeflow.org_clustertrainingruntimes.yaml",
    # TrainingRuntime (namespaced) and ClusterTrainingRuntime share one spec type
    # (TrainingRuntimeSpec) in Kubeflow Trainer; only the scope differs.
    (
        "trainer.kubeflow.org/v1alpha1",
        "TrainingRuntime",
    ): "kubeflow/trainer.kubeflow.org_clustertrainingruntimes.yaml",
    ("kubeflow.org/v1", "PyTorchJob"): "kubeflow/kubeflow.org_pytorchjobs.yaml",
}

_STR = {"type": "string", "minLength": 1}
_META = {"type": "object", "required": ["name"], "properties": {"name": _STR, "namespace": _STR}}
_SECRET_KEY = {
    "type": "object",
    "required": ["name", "key"],
    "properties": {"name": _STR, "key": _STR, "optional": {"type": "boolean"}},
    "additionalProperties": False,
}
_DURATION = {"type": "string", "pattern": r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$"}
# cert-manager.io/v1 CertificateSpec: every field name it has; types for the ones edgeloop uses.
_CERTIFICATE_FIELDS = (
    "subject literalSubject commonName duration renewBefore renewBeforePercentage dnsNames ipAddresses "
    "uris otherNames emailAddresses secretName secretTemplate keystores issuerRef isCA usages privateKey "
    "encodeUsagesInRequest revisionHistoryLimit additionalOutputFormats nameConstraints"
).split()
_KEY_USAGES = [
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
    "netscape sgc",
]
_LABEL_SELECTOR = {
    "type": "object",
    "properties": {"matchLabels": {"type": "object"}, "matchExpressions": {"type": "array"}},
    "additionalProperties": False,
}

#: Structural schemas (subsets of upstream) for kinds whose CRDs are not vendored in edgeloop.schemas.
STRUCTURAL_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {
            "metadata": _META,
            "spec": {
                "type": "object",
                "required": ["selector", "endpoints"],
                "properties": {
                    "selector": _LABEL_SELECTOR,
                    "namespaceSelector": {
                        "type": "object",
                        "properties": {
                            "any": {"type": "boolean"},
                            "matchNames": {"type": "array", "items": _STR},
                        },
                        "additionalProperties": False,
                    },
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "properties": {
                                "port": _STR,
                                "targetPort": {"type": ["integer", "string"]},
                                "path": {"type": "string", "pattern": "^/"},
                                "interval": {"type": "string", "pattern": r"^(\d+(ms|s|m|h))+$"},
                                "scrapeTimeout": {"type": "string", "pattern": r"^(\d+(ms|s|m|h))+$"},
                                "scheme": {"enum": ["http", "https"]},
                                "tlsConfig": {
                                    "type": "object",
                                    "properties": {
                                        "ca": {
                                            "type": "object",
                                            "properties": {"secret": _SECRET_KEY, "configMap": _SECRET_KEY},
                                            "additionalProperties": False,
                                        },
                                        "cert": {"type": "object"},
                                        "keySecret": _SECRET_KEY,
                                        "serverName": _STR,
                                        "insecureSkipVerify": {"type": "boolean"},
                                    },
                                    "additionalProperties": False,
                                },
                                "authorization": {
                                    "type": "object",
                                    "required": ["credentials"],
                                    "properties": {"type": _STR, "credentials": _SECRET_KEY},
                                    "additionalProperties": False,
                                },
                            },
                            "anyOf": [{"required": ["port"]}, {"required": ["targetPort"]}],
                        },
                    },
                },
            },
        },
    },
    ("monitoring.coreos.com/v1", "PrometheusRule"): {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {
            "metadata": _META,
            "spec": {
                "type": "object",
                "required": ["groups"],
                "properties": {
                    "groups": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name", "rules"],
                            "properties": {
                                "name": _STR,
                                "interval": {"type": "string"},
                                "rules": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["expr"],
                                        "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                                        "properties": {
                                            "alert": _STR,
                                            "record": {
                                                "type": "string",
                                                "pattern": r"^[a-zA-Z_:][a-zA-Z0-9_:]*$",
                                            },
                                            "expr": _STR,
                                            "for": {"type": "string", "pattern": r"^(\d+(ms|s|m|h|d|w|y))+$"},
                                            "labels": {
                                                "type": "object",
                                                "additionalProperties": {"type": "string"},
                                            },
                                            "annotations": {
                                                "type": "object",
                                                "additionalProperties": {"type": "string"},
                                            },
                                        },
                                        "additionalProperties": False,
                                    },
                                },
                            },
                            "additionalProperties": False,
                        },
                    }
                },
            },
        },
    },
    ("cert-manager.io/v1", "Certificate"): {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {
            "metadata": _META,
            "spec": {
                "type": "object",
                "required": ["secretName", "issuerRef"],
                "properties": {
                    **{f: {} for f in _CERTIFICATE_FIELDS},
                    "secretName": _STR,
                    "commonName": {"type": "string", "maxLength": 64},
                    "dnsNames": {"type": "array", "minItems": 1, "items": _STR},
                    "ipAddresses": {"type": "array", "items": _STR},
                    "duration": _DURATION,
                    "renewBefore": _DURATION,
                    "isCA": {"type": "boolean"},
                    "usages": {"type": "array", "items": {"enum": _KEY_USAGES}},
                    "issuerRef": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {"name": _STR, "kind": _STR, "group": _STR},
                        "additionalProperties": False,
                    },
                    "privateKey": {
                        "type": "object",
                        "properties": {
                            "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                            "size": {"type": "integer"},
                            "encoding": {"enum": ["PKCS1", "PKCS8"]},
                            "rotationPolicy": {"enum": ["Never", "Always"]},
                        },
                        "additionalProperties": False,
                    },
                },
                "additionalProperties": False,
            },
        },
    },
    ("source.toolkit.fluxcd.io/v1", "GitRepository"): {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {
            "metadata": _META,
            "spec": {
                "type": "object",
                "required": ["url", "interval"],
                "properties": {
                    "url": {"type": "string", "pattern": "^(http|https|ssh)://"},
                    "interval": {"type": "string", "pattern": r"^(\d+(ms|s|m|h))+$"},
                    "ref": {"type": "object"},
                    "secretRef": {"type": "object", "required": ["name"]},
                    "ignore": {"type": "string"},
                },
            },
        },
    },
    ("kustomize.toolkit.fluxcd.io/v1", "Kustomization"): {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {
            "metadata": _META,
            "spec": {
                "type": "object",
                "required": ["interval", "prune", "sourceRef"],
                "properties": {
                    "interval": {"type": "string", "pattern": r"^(\d+(ms|s|m|h))+$"},
                    "path": {"type": "string"},
                    "prune": {"type": "boolean"},
                    "wait": {"type": "boolean"},
                    "sourceRef": {
                        "type": "object",
                        "required": ["kind", "name"],
                        "properties": {"kind": {"enum": ["GitRepository", "OCIRepository", "Bucket"]}},
                    },
                },
            },
        },
    },
}

DIGEST_ANNOTATION = "edgeloop.io/model-digest"
VERSION_ANNOTATION = "edgeloop.io/model-version"
TEMPLATE_LABEL = "edgeloop.io/template"
MODEL_LABEL = "edgeloop.io/model"
DIGEST_ENV = "EDGELOOP_MODEL_DIGEST"
TEMPLATE_STORAGE_URI = "https://edgeloop.blob.core.windows.net/models/template"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def default_schemas_dir() -> Path:
    """The upstream CRDs vendored in :mod:`edgeloop.schemas` (package data)."""
    from edgeloop.schemas import schemas_dir

    return schemas_dir()


# -- schema loading ------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _crd_schema(path: str, version: str) -> dict[str, Any]:
    """The openAPIV3Schema of ``version`` in a CRD file.

    Parsing the 2 MB InferenceService CRD takes seconds with PyYAML, so the extracted schema
    is cached as JSON in the temp dir, keyed by the file's path, size and mtime.
    """
    import hashlib
    import tempfile

    st = Path(path).stat()
    key = hashlib.sha256(
        f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}|{version}".encode()
    ).hexdigest()[:24]
    cache = Path(tempfile.gettempdir()) / "edgeloop-crd-schemas" / f"{key}.json"
    if cache.exists():
        try:
            return json.loads(cache.read_text())
        except ValueError:
            pass  # a torn write: rebuild below
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(Path(path).read_text(), Loader=loader)  # noqa: S506 - safe loader (C or Python)
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            if not v.get("served", True):
                raise SchemaUnavailableError(f"{path}: version {version} is not served")
            schema = v["schema"]["openAPIV3Schema"]
            try:
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(schema))
                tmp.replace(cache)
            except OSError:
                pass  # caching is an optimisation only
            return schema
    raise SchemaUnavailableError(f"{path} has no version {version}")


@functools.lru_cache(maxsize=256)
def _core_validator(kind: str, api_version: str, k8s_version: str) -> Any | None:
    """A jsonschema validator for a core kind from kubernetes-validate's strict schemas, or None."""
    import jsonschema
    from kubernetes_validate import utils as kv
    from referencing import Registry, Resource

    version = [v for v in kv.all_versions() if kv.major_minor(v) <= kv.major_minor(k8s_version)][-1]
    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema_dir = f"kubernetes-json-schema/v{version}-local-strict"
    try:
        schema = kv.schema_contents(f"{schema_dir}/{kind.lower()}-{api}.json", version)
    except FileNotFoundError:
        return None
    defs = kv.schema_contents(f"{schema_dir}/_definitions.json", version)
    registry = Resource.from_contents(defs) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


# -- checks ----------------------------------------------------------------------------------


def _ident(obj: dict[str, Any]) -> tuple[str, str]:
    return str(obj.get("kind", "?")), str((obj.get("metadata") or {}).get("name", "?"))


def _path(parts: Iterable[Any]) -> str:
    return ".".join(str(p) for p in parts)


def _unknown_fields(value: Any, schema: dict[str, Any], path: list[Any]) -> Iterator[tuple[str, str]]:
    """Fields the API server would prune: present in the object, absent from a structural schema."""
    if not isinstance(schema, dict) or schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(value, dict):
        props = schema.get("properties")
        addl = schema.get("additionalProperties")
        if props is not None:
            for key, sub in value.items():
                if key in props:
                    yield from _unknown_fields(sub, props[key], [*path, key])
                elif not addl:
                    yield _path(path), f"unknown field {key!r} (the API server would drop it)"
        elif isinstance(addl, dict):
            for key, sub in value.items():
                yield from _unknown_fields(sub, addl, [*path, key])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            yield from _unknown_fields(item, schema["items"], [*path, i])


def schema_problems(
    obj: dict[str, Any], schemas_dir: Path, k8s_version: str = KUBERNETES_VERSION
) -> list[Problem]:
    """Schema problems of one object (core, CRD or structural), without edgeloop's own rules."""
    import jsonschema

    kind, name = _ident(obj)
    api_version = str(obj.get("apiVersion", ""))
    if not api_version or kind == "?":
        return [Problem(kind, name, "", "apiVersion and kind are required")]
    key = (api_version, kind)
    problems: list[Problem] = []

    if key in CRD_FILES:
        crd_path = schemas_dir / CRD_FILES[key]
        if not crd_path.exists():
            raise SchemaUnavailableError(
                f"CRD schema {crd_path} not found: the vendored schemas are incomplete: reinstall edgeloop, or pass schemas_dir"
            )
        schema = _crd_schema(str(crd_path), api_version.rsplit("/", 1)[-1])
        validator = jsonschema.Draft4Validator(schema)
        for err in validator.iter_errors(obj):
            problems.append(Problem(kind, name, _path(err.absolute_path), err.message))
        for where, msg in _unknown_fields(obj, schema, []):
            if where.startswith("metadata"):
                continue
            problems.append(Problem(kind, name, where, msg))
        if not (obj.get("metadata") or {}).get("name"):
            problems.append(Problem(kind, name, "metadata.name", "is required"))
        return problems

    if key in STRUCTURAL_SCHEMAS:
        validator = jsonschema.Draft202012Validator(STRUCTURAL_SCHEMAS[key])
        return [Problem(kind, name, _path(e.absolute_path), e.message) for e in validator.iter_errors(obj)]

    core = _core_validator(kind, api_version, k8s_version)
    if core is None:
        return [
            Problem(
                kind, name, "", f"no schema known for {api_version} {kind}; refusing to pass it unchecked"
            )
        ]
    return [Problem(kind, name, _path(e.absolute_path), e.message) for e in core.iter_errors(obj)]


def _pod_specs(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], list[tuple[str, dict[str, Any]]]]]:
    """(path, pod-level spec, [(path, container)]) for every pod template an object carries."""
    kind = obj.get("kind")
    spec = obj.get("spec") or {}

    def pod(path: str, pspec: dict[str, Any]):
        conts = [
            (f"{path}.containers[{c.get('name', i)}]", c) for i, c in enumerate(pspec.get("containers") or [])
        ]
        conts += [
            (f"{path}.initContainers[{c.get('name', i)}]", c)
            for i, c in enumerate(pspec.get("initContainers") or [])
        ]
        return path, pspec, conts

    if kind == "Pod":
        yield pod("spec", spec)
    elif kind in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        yield pod("spec.template.spec", (spec.get("template") or {}).get("spec") or {})
    elif kind == "CronJob":
        yield pod("spec.jobTemplate.spec.template.spec", spec["jobTemplate"]["spec"]["template"]["spec"])
    elif kind == "InferenceService":
        pred = spec.get("predictor") or {}
        path, pspec, conts = pod("spec.predictor", pred)
        if isinstance(pred.get("model"), dict):
            conts.append(("spec.predictor.model", pred["model"]))
        yield path, pspec, conts
    elif kind in ("ServingRuntime", "ClusterServingRuntime"):
        yield pod("spec", spec)
    elif kind in ("TrainingRuntime", "ClusterTrainingRuntime"):
        for i, rj in enumerate(((spec.get("template") or {}).get("spec") or {}).get("replicatedJobs") or []):
            pspec = rj["template"]["spec"]["template"]["spec"]
            yield pod(f"spec.template.spec.replicatedJobs[{i}].template.spec.template.spec", pspec)


def _restricted_problems(obj: dict[str, Any]) -> list[Problem]:
    kind, name = _ident(obj)
    out: list[Problem] = []
    for _where, pspec, containers in _pod_specs(obj):
        psc = pspec.get("securityContext") or {}
        volumes = {v.get("name") for v in pspec.get("volumes") or []}
        for cpath, c in containers:
            csc = c.get("securityContext") or {}
            if csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
                out.append(Problem(kind, name, cpath, "runAsNonRoot must be true (Pod Security restricted)"))
            if csc.get("allowPrivilegeEscalation") is not False:
                out.append(
                    Problem(
                        kind, name, cpath, "allowPrivilegeEscalation must be false (Pod Security restricted)"
                    )
                )
            if "ALL" not in ((csc.get("capabilities") or {}).get("drop") or []):
                out.append(
                    Problem(kind, name, cpath, "capabilities.drop must contain ALL (Pod Security restricted)")
                )
            seccomp = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
            if seccomp not in ("RuntimeDefault", "Localhost"):
                out.append(
                    Problem(
                        kind,
                        name,
                        cpath,
                        "seccompProfile.type must be RuntimeDefault (Pod Security restricted)",
                    )
                )
            if csc.get("readOnlyRootFilesystem") is not True:
                out.append(Problem(kind, name, cpath, "readOnlyRootFilesystem must be true"))
            if csc.get("privileged"):
                out.append(Problem(kind, name, cpath, "privileged containers are not allowed"))
            for m in c.get("volumeMounts") or []:
                if m.get("name") not in volumes:
                    out.append(
                        Problem(
                            kind, name, cpath, f"volumeMount {m.get('name')!r} names no volume of the pod"
                        )
                    )
    return out


def _env(container: dict[str, Any], name: str) -> str | None:
    for e in container.get("env") or []:
        if e.get("name") == name:
            return e.get("value")
    return None


def _edgeloop_problems(objs: list[dict[str, Any]]) -> list[Problem]:
    out: list[Problem] = []
    isvcs: dict[tuple[str | None, str], dict[str, Any]] = {}
    for obj in objs:
        kind, name = _ident(obj)
        meta = obj.get("metadata") or {}
        out += _restricted_problems(obj)
        if kind == "Secret" and (obj.get("data") or obj.get("stringData")):
            out.append(
                Problem(
                    kind, name, "data", "Secret values must not be in manifests; reference secrets by name"
                )
            )
        if kind == "InferenceService":
            isvcs[(meta.get("namespace"), name)] = obj
            ann = meta.get("annotations") or {}
            if ann.get("serving.kserve.io/deploymentMode") not in ("RawDeployment", "Standard"):
                out.append(
                    Problem(
                        kind,
                        name,
                        "metadata.annotations",
                        "serving.kserve.io/deploymentMode must be RawDeployment",
                    )
                )
            if (meta.get("labels") or {}).get(TEMPLATE_LABEL) == "true":
                continue
            digest = ann.get(DIGEST_ANNOTATION, "")
            if not _HEX64.match(digest):
                out.append(
                    Problem(
                        kind,
                        name,
                        f"metadata.annotations[{DIGEST_ANNOTATION}]",
                        f"must be the model card's sha256 digest (64 hex chars), got {digest!r}",
                    )
                )
            model = (obj.get("spec") or {}).get("predictor", {}).get("model") or {}
            if _env(model, DIGEST_ENV) != digest:
                out.append(
                    Problem(
                        kind,
                        name,
                        "spec.predictor.model.env",
                        f"{DIGEST_ENV} must equal the digest annotation",
                    )
                )
            uri = model.get("storageUri", "")
            if not uri or uri == TEMPLATE_STORAGE_URI:
                out.append(
                    Problem(kind, name, "spec.predictor.model.storageUri", "must point at the model version")
                )
            if not ann.get(VERSION_ANNOTATION) or ann.get(VERSION_ANNOTATION) == "unset":
                out.append(
                    Problem(
                        kind,
                        name,
                        f"metadata.annotations[{VERSION_ANNOTATION}]",
                        "must name the model version",
                    )
                )

    for obj in objs:
        kind, name = _ident(obj)
        if kind not in ("HorizontalPodAutoscaler", "ScaledObject"):
            continue
        ns = (obj.get("metadata") or {}).get("namespace")
        spec = obj.get("spec") or {}
        target = (spec.get("scaleTargetRef") or {}).get("name", "")
        isvc = isvcs.get((ns, target.removesuffix("-predictor")))
        if not target.endswith("-predictor") or isvc is None:
            out.append(
                Problem(
                    kind,
                    name,
                    "spec.scaleTargetRef.name",
                    f"{target!r} is not the predictor Deployment of an InferenceService in this set",
                )
            )
            continue
        pred = isvc["spec"]["predictor"]
        lo, hi = (
            (spec.get("minReplicas"), spec.get("maxReplicas"))
            if kind == "HorizontalPodAutoscaler"
            else (spec.get("minReplicaCount"), spec.get("maxReplicaCount"))
        )
        if (lo, hi) != (pred.get("minReplicas"), pred.get("maxReplicas")):
            out.append(
                Problem(
                    kind,
                    name,
                    "spec",
                    f"replica bounds {lo}..{hi} differ from the InferenceService's "
                    f"{pred.get('minReplicas')}..{pred.get('maxReplicas')}",
                )
            )
        if (isvc["metadata"].get("annotations") or {}).get("serving.kserve.io/autoscalerClass") != "external":
            out.append(
                Problem(
                    kind,
                    name,
                    "",
                    "the InferenceService must set serving.kserve.io/autoscalerClass: "
                    "external, or KServe manages a second autoscaler for the same Deployment",
                )
            )
    return out


def find_problems(
    objs: Iterable[dict[str, Any]],
    *,
    schemas_dir: Path | None = None,
    k8s_version: str = KUBERNETES_VERSION,
) -> list[Problem]:
    """Every problem in ``objs`` (empty list when they are valid)."""
    objs = list(objs)
    schemas_dir = Path(schemas_dir) if schemas_dir is not None else default_schemas_dir()
    problems: list[Problem] = []
    for obj in objs:
        if not isinstance(obj, dict):
            problems.append(Problem("?", "?", "", f"not a mapping: {json.dumps(obj)[:80]}"))
            continue
        problems += schema_problems(obj, schemas_dir, k8s_version)
    problems += _edgeloop_problems([o for o in objs if isinstance(o, dict)])
    return problems


def validate_objects(
    objs: Iterable[dict[str, Any]],
    *,
    schemas_dir: Path | None = None,
    k8s_version: str = KUBERNETES_VERSION,
) -> None:
    """Raise :class:`ManifestValidationError` listing every problem, or return if all objects pass.

    ``schemas_dir`` holds the upstream CRDs (default: the vendored :mod:`edgeloop.schemas`);
    :class:`SchemaUnavailableError` if a CRD kind needs a schema that is not there.
    """
    problems = find_problems(objs, schemas_dir=schemas_dir, k8s_version=k8s_version)
    if problems:
        raise ManifestValidationError(problems)
