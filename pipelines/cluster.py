"""How each pipeline step runs on a cluster: settings from Secrets, Pod Security, resources, retries.

Compiled into the pipeline YAML by kfp-kubernetes (``platforms.kubernetes``) and KFP's task
settings; ``kfp.local`` ignores all of it. One table, :data:`STEPS`, says per step:

- which ``edgeloop-*`` Secrets it gets as ``EDGELOOP_*`` variables (the same keys the drift
  CronJob and the TrainingRuntime read; least privilege: Label Studio only where labels are read);
- CPU/memory requests and limits;
- whether it is idempotent, and so retried with exponential backoff (registering a version is
  not: a retry would register a second one; the approval wait is bounded by its own deadline).

Every step runs as the non-root user 1000 of the images (``runAsNonRoot``); KFP adds
``allowPrivilegeEscalation: false``, drops every capability and sets seccomp ``RuntimeDefault``
itself (kfp-kubernetes 2.17 cannot set those fields; see manifests/README.md for the namespace's
Pod Security level). Every pod carries the role label the NetworkPolicies allow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from kfp import kubernetes
from kfp.dsl import PipelineTask

RUN_AS_USER = 1000
ROLE_LABEL = ("edgeloop.io/role", "pipeline")
#: The pod deadline of the approval wait. approval_timeout_s (a run-time parameter) ends the wait
#: earlier; this bounds a pod that hangs or a timeout set longer than a week.
APPROVAL_DEADLINE_S = 7 * 24 * 3600 + 600
RETRY = {"num_retries": 3, "backoff_duration": "30s", "backoff_factor": 2.0, "backoff_max_duration": "600s"}
#: On this machine (``kfp.local``, which honours retries too) one quick retry: a local stack that hiccups
#: recovers in seconds, and a step that fails for a reason (a wrong parameter) should say so now, not
#: after the cluster's 30 + 60 + 120 s.
LOCAL_RETRY = {
    "num_retries": 1,
    "backoff_duration": "5s",
    "backoff_factor": 1.0,
    "backoff_max_duration": "5s",
}

# Secret -> {key: environment variable}; required keys, then keys a deployment may leave out.
SecretEnv = tuple[str, dict[str, str], dict[str, str]]
BLOB: SecretEnv = ("edgeloop-blob", {"connection-string": "EDGELOOP_BLOB__CONNECTION_STRING"}, {})
MLFLOW: SecretEnv = (
    "edgeloop-mlflow",
    {"tracking-uri": "EDGELOOP_MLFLOW__TRACKING_URI"},
    {"username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"},
)
LABELSTUDIO: SecretEnv = (
    "edgeloop-labelstudio",
    {"url": "EDGELOOP_LABELSTUDIO__URL", "api-key": "EDGELOOP_LABELSTUDIO__API_KEY"},
    {},
)
# The approvers' public keys (manifests/base/platform/trusted-approvers.yaml): steps that check a signed decision.
TRUSTED_APPROVERS = ("edgeloop-trusted-approvers", {"trusted-keys.json": "EDGELOOP_APPROVALS__TRUSTED_KEYS"})
REGISTRY_AUTH = "edgeloop-registry"  # a kubernetes.io/dockerconfigjson Secret: push rights for the builder
REGISTRY_AUTH_DIR = "/var/run/secrets/edgeloop-registry"


@dataclass(frozen=True)
class StepPolicy:
    cpu: tuple[str, str]  # request, limit
    memory: tuple[str, str]
    secrets: tuple[SecretEnv, ...] = (BLOB, MLFLOW)
    idempotent: bool = True
    checks_approvals: bool = False


STEPS: dict[str, StepPolicy] = {
    "snapshot-labels": StepPolicy(("250m", "1"), ("512Mi", "2Gi"), (BLOB, MLFLOW, LABELSTUDIO)),
    "build-dataset": StepPolicy(("500m", "2"), ("1Gi", "4Gi")),
    "train-model": StepPolicy(("2", "8"), ("4Gi", "16Gi")),
    "export-onnx": StepPolicy(("1", "2"), ("2Gi", "4Gi")),
    "select-precision": StepPolicy(("1", "2"), ("2Gi", "4Gi")),
    "staging-evaluation": StepPolicy(("2", "4"), ("2Gi", "8Gi")),
    "register-model": StepPolicy(("250m", "1"), ("512Mi", "2Gi"), idempotent=False, checks_approvals=True),
    "await-approval": StepPolicy(
        ("100m", "500m"), ("256Mi", "512Mi"), idempotent=False, checks_approvals=True
    ),
    "prepare-image-build": StepPolicy(("250m", "1"), ("256Mi", "1Gi"), ()),
    "buildah-build": StepPolicy(("1", "2"), ("2Gi", "4Gi"), ()),
    "local-image-build": StepPolicy(("1", "2"), ("1Gi", "4Gi")),
    "deploy-model": StepPolicy(("250m", "1"), ("256Mi", "1Gi"), checks_approvals=True),
    # the batch-scoring pipeline: resumable from its shard markers, so every step may be retried
    "plan-batch": StepPolicy(("250m", "1"), ("512Mi", "1Gi")),
    "score-shard": StepPolicy(("1", "2"), ("1Gi", "2Gi")),
    "summarize-batch": StepPolicy(("500m", "1"), ("512Mi", "2Gi")),
}


def step_name(task: PipelineTask) -> str:
    """``deploy-model-2`` -> ``deploy-model`` (KFP numbers a component's second use)."""
    name = task.name
    base, _, suffix = name.rpartition("-")
    return base if suffix.isdigit() and base in STEPS else name


def _local_run() -> bool:
    from edgeloop.pipelines.runner import LOCAL_RUNNER_ENV

    return os.environ.get(LOCAL_RUNNER_ENV) == "1"


def configure(task: PipelineTask) -> PipelineTask:
    name = step_name(task)
    if name not in STEPS:
        raise KeyError(f"step {name!r} has no entry in edgeloop.pipelines.cluster.STEPS: add one")
    policy = STEPS[name]
    kubernetes.add_pod_label(task, *ROLE_LABEL)
    kubernetes.set_security_context(
        task, run_as_user=RUN_AS_USER, run_as_group=RUN_AS_USER, run_as_non_root=True
    )
    task.set_cpu_request(policy.cpu[0]).set_cpu_limit(policy.cpu[1])
    task.set_memory_request(policy.memory[0]).set_memory_limit(policy.memory[1])
    for secret, required, optional in policy.secrets:
        kubernetes.use_secret_as_env(task, secret, required)
        if optional:
            kubernetes.use_secret_as_env(task, secret, optional, optional=True)
    if policy.checks_approvals:
        kubernetes.use_config_map_as_env(task, *TRUSTED_APPROVERS)
    if policy.idempotent:
        task.set_retry(**(LOCAL_RETRY if _local_run() else RETRY))  # type: ignore[arg-type]
    if name == "await-approval":
        kubernetes.set_timeout(task, APPROVAL_DEADLINE_S)
    if name == "buildah-build":
        kubernetes.use_secret_as_volume(task, REGISTRY_AUTH, mount_path=REGISTRY_AUTH_DIR)
        task.set_env_variable("REGISTRY_AUTH_FILE", f"{REGISTRY_AUTH_DIR}/.dockerconfigjson")
    return task


# -- the pods a cluster makes of the compiled pipeline -------------------------------------------------------------
#: What KFP's backend adds to every executor container itself (kfp-kubernetes cannot set these).
KFP_CONTAINER_DEFAULTS = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def executor_pods(
    compiled: str, namespace: str = "edgeloop", service_account: str = "edgeloop-pipeline"
) -> list[dict]:
    """The Pod each step of the compiled pipeline YAML becomes (image, command, resources, env from
    Secrets, security context, deadline, label), for validation with :func:`edgeloop.deploy.validate.
    validate_objects` (schemas and Pod Security "restricted"). KFP's driver adds its launcher and
    volumes; what is checked here is what this project decides."""
    import yaml

    spec, platform_doc = yaml.safe_load_all(compiled)
    platform = platform_doc["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    pods = []
    for name, executor in spec["deploymentSpec"]["executors"].items():
        c, k8s = executor["container"], platform.get(name, {})
        r = c.get("resources", {})
        env = (
            [
                {
                    "name": m["envVar"],
                    "valueFrom": {
                        "secretKeyRef": {
                            "name": s["secretName"],
                            "key": m["secretKey"],
                            "optional": bool(s.get("optional")),
                        }
                    },
                }
                for s in k8s.get("secretAsEnv", [])
                for m in s["keyToEnv"]
            ]
            + [
                {
                    "name": m["envVar"],
                    "valueFrom": {"configMapKeyRef": {"name": cm["configMapName"], "key": m["configMapKey"]}},
                }
                for cm in k8s.get("configMapAsEnv", [])
                for m in cm["keyToEnv"]
            ]
            + [{"name": e["name"], "value": e["value"]} for e in c.get("env", [])]
        )
        sc = k8s.get("securityContext", {})
        container = {
            "name": "main",
            "image": c["image"],
            "command": c.get("command", []),
            "args": c.get("args", []),
            "env": env,
            "resources": {
                "requests": {"cpu": r.get("resourceCpuRequest"), "memory": r.get("resourceMemoryRequest")},
                "limits": {"cpu": r.get("resourceCpuLimit"), "memory": r.get("resourceMemoryLimit")},
            },
            "securityContext": {
                **{k: (int(v) if k != "runAsNonRoot" else v) for k, v in sc.items()},
                **KFP_CONTAINER_DEFAULTS,
            },
            "volumeMounts": [
                {"name": f"secret-{i}", "mountPath": v["mountPath"], "readOnly": True}
                for i, v in enumerate(k8s.get("secretAsVolume", []))
            ],
        }
        pod: dict = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name.removeprefix("exec-"),
                "namespace": namespace,
                "labels": k8s.get("podMetadata", {}).get("labels", {}),
            },
            "spec": {
                "serviceAccountName": service_account,
                "restartPolicy": "Never",
                "containers": [container],
                "volumes": [
                    {"name": f"secret-{i}", "secret": {"secretName": v["secretName"]}}
                    for i, v in enumerate(k8s.get("secretAsVolume", []))
                ],
            },
        }
        if "activeDeadlineSeconds" in k8s:
            pod["spec"]["activeDeadlineSeconds"] = int(k8s["activeDeadlineSeconds"])
        pods.append(pod)
    return pods
