"""The model registry (MLflow 3): register with evidence, the human gate, champion promotion, rollback.

Aliases carry the promotion state, tags the evidence and the decisions (MLflow
stages are deprecated):

* alias ``candidate``: passed the automatic gate, waiting for a person;
* alias ``champion``: approved *and* deployed; the version it replaced is kept in
  the tag ``edgeloop.previous_champion`` of the new champion (``edgeloop rollback``);
* tag ``approval``: ``pending`` -> ``approved`` / ``rejected``. A reviewer may set it
  in the MLflow UI (and ``approval.by``); ``edgeloop approve|reject`` set it with who,
  when, a note and the digest of the evidence they approved;
* tag ``rejected``: ``true`` with ``rejected.reasons`` (gate failure, human rejection,
  approval timeout).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeloop.core.errors import EdgeloopError

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from edgeloop.core.config import Settings
    from edgeloop.pipelines.evaluation import EvaluationReport
    from edgeloop.pipelines.gate import GateDecision

log = logging.getLogger(__name__)

CANDIDATE = "candidate"
CHAMPION = "champion"
# tag keys
APPROVAL = "approval"
APPROVAL_BY = "approval.by"
APPROVAL_AT = "approval.at"
APPROVAL_NOTE = "approval.note"
APPROVAL_MODE = "approval.mode"  # human | mlflow-ui | auto | timeout
APPROVAL_EVIDENCE = "approval.evidence_digest"
REJECTED = "rejected"
REJECTED_REASONS = "rejected.reasons"
GATE = "edgeloop.gate"
GATE_REASONS = "edgeloop.gate_reasons"
GATE_RULE_PREFIX = "edgeloop.gate."  # + rule name: "pass|FAIL|not decided: <detail with n and 95 % CI>"
TAG_MAX = 4900
EVIDENCE_DIGEST = "edgeloop.evidence_digest"
MODEL_DIGEST = "edgeloop.model_digest"
STORAGE_URI = "edgeloop.storage_uri"
PREVIOUS_CHAMPION = "edgeloop.previous_champion"
DEPLOYED_AT = "edgeloop.deployed_at"
DEPLOYED_TO = "edgeloop.deployed_to"
LINEAGE_PREFIX = "lineage."
PENDING, APPROVED, REJECTED_VALUE = "pending", "approved", "rejected"

EVIDENCE_DIR = "evidence"
MODEL_DIR = "model"


class RegistryError(EdgeloopError):
    """A registry operation the user asked for cannot be done (unknown version, wrong state...)."""


class ApprovalRejected(EdgeloopError):
    """The candidate was rejected by a person or timed out waiting for one: the run stops before deploy."""


@dataclass
class Registered:
    name: str
    version: str
    run_id: str
    gate_passed: bool
    evidence_digest: str
    model_digest: str
    storage_uri: str
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Decision:
    name: str
    version: str
    decision: str  # approved | rejected
    by: str
    at: str
    mode: str
    note: str = ""
    evidence_digest: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def client(settings: Settings) -> MlflowClient:
    import mlflow
    from mlflow import MlflowClient

    uri = settings.mlflow_tracking_uri()
    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _alias_version(c: MlflowClient, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(c.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def _get_version(c: MlflowClient, name: str, version: str):
    from mlflow.exceptions import MlflowException

    try:
        return c.get_model_version(name, str(version))
    except MlflowException as e:
        raise RegistryError(
            f"model '{name}' has no version {version} in the registry "
            f"(list them in the MLflow UI or with `mlflow models`)"
        ) from e


# -- registration -----------------------------------------------------------------------------------------
def register_candidate(
    settings: Settings,
    model_dir: Path,
    report: EvaluationReport,
    decision: GateDecision,
    *,
    report_markdown: str = "",
    champion_report: EvaluationReport | None = None,
    lineage: Mapping[str, str] | None = None,
    params: Mapping[str, Any] | None = None,
    extra_evidence: Mapping[str, Path] | None = None,
    upload_model: bool = True,
) -> Registered:
    """Log the model + evidence in an MLflow run, register a version, tag it by the gate's decision.

    Passing: alias ``candidate``, ``approval=pending``. Failing: ``rejected=true`` with the reasons.
    The model files are also copied to ``az://<models container>/<name>/<model digest>/`` (immutable,
    content-addressed): that is the storage URI the InferenceService points at.
    """
    import mlflow

    from edgeloop.core.model_card import ModelCard

    model_dir = Path(model_dir)
    card = ModelCard.load(model_dir)
    card.verify(model_dir)
    model_digest = card.digest()
    name = settings.mlflow.registered_model
    c = client(settings)
    lineage = {k: str(v) for k, v in (lineage or {}).items() if v not in (None, "")}

    storage_uri = _upload_model(settings, name, model_digest, model_dir) if upload_model else ""
    evidence_digest = report.digest()
    mlflow.set_experiment(settings.mlflow.experiment)
    run_name = lineage.get("pipeline_run") or None
    with mlflow.start_run(run_name=run_name) as run, tempfile.TemporaryDirectory() as tmp:
        ev = Path(tmp)
        (ev / "evaluation.json").write_text(report.model_dump_json(indent=2))
        (ev / "gate.json").write_text(decision.model_dump_json(indent=2))
        (ev / "confusion_matrix.json").write_text(
            json.dumps({"labels": report.labels, "matrix": report.confusion_matrix}, indent=2)
        )
        if report_markdown:
            (ev / "report.md").write_text(report_markdown)
        if champion_report is not None:
            (ev / "champion_evaluation.json").write_text(champion_report.model_dump_json(indent=2))
        for fname, path in (extra_evidence or {}).items():
            if Path(path).exists():
                (ev / fname).write_bytes(Path(path).read_bytes())
        mlflow.log_artifacts(str(ev), EVIDENCE_DIR)
        mlflow.log_artifacts(str(model_dir), MODEL_DIR)
        mlflow.log_dict(report.model_dump(mode="json"), f"{EVIDENCE_DIR}/evaluation_table.json")
        mlflow.log_metrics({k.replace("=", "_"): float(v) for k, v in report.flat_metrics().items()})
        if params:
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        mlflow.set_tags(
            {f"{LINEAGE_PREFIX}{k}": v for k, v in lineage.items()}
            | {GATE: "passed" if decision.passed else "failed", MODEL_DIGEST: model_digest}
            | gate_rule_tags(decision)
        )
        _log_confusion_figure(report)
        run_id = run.info.run_id
        artifact_uri = run.info.artifact_uri

    from mlflow.exceptions import MlflowException

    try:
        c.create_registered_model(
            name, description="edgeloop inspection classifier (ONNX); " "aliases: candidate, champion"
        )
    except MlflowException:
        pass  # already exists
    tags = {
        GATE: "passed" if decision.passed else "failed",
        GATE_REASONS: decision.summary()[:TAG_MAX],
        **gate_rule_tags(decision),
        EVIDENCE_DIGEST: evidence_digest,
        MODEL_DIGEST: model_digest,
        STORAGE_URI: storage_uri,
        "precision": report.precision or card.precision.value,
        "architecture": card.architecture,
        **{f"{LINEAGE_PREFIX}{k}": v for k, v in lineage.items()},
    }
    if decision.passed:
        tags[APPROVAL] = PENDING
    else:
        tags |= {
            REJECTED: "true",
            REJECTED_REASONS: "gate: " + decision.summary()[:4800],
            APPROVAL: REJECTED_VALUE,
            APPROVAL_MODE: "gate",
            APPROVAL_AT: _now(),
        }
    acc, ece = report.estimate("accuracy"), report.estimate("ece")
    description = (
        f"accuracy {acc.text(4) if acc else f'{report.accuracy:.4f}'}, "
        f"ECE {ece.text(4) if ece else f'{report.ece:.4f}'}; gate "
        f"{'passed' if decision.passed else 'FAILED: ' + decision.summary()}"
    )
    mv = c.create_model_version(
        name, source=f"{artifact_uri}/{MODEL_DIR}", run_id=run_id, tags=tags, description=description[:4900]
    )
    version = str(mv.version)
    if decision.passed:
        c.set_registered_model_alias(name, CANDIDATE, version)
    log.info("registered %s version %s (gate %s)", name, version, "passed" if decision.passed else "failed")
    return Registered(
        name=name,
        version=version,
        run_id=run_id,
        gate_passed=decision.passed,
        evidence_digest=evidence_digest,
        model_digest=model_digest,
        storage_uri=storage_uri,
        reasons=decision.reasons,
    )


def gate_rule_tags(decision: GateDecision) -> dict[str, str]:
    """One tag per gate rule: its verdict and the evidence behind it (n and the 95 % interval)."""
    return {f"{GATE_RULE_PREFIX}{r.name}": f"{r.status}: {r.detail}"[:TAG_MAX] for r in decision.results}


def _upload_model(settings: Settings, name: str, digest: str, model_dir: Path) -> str:
    from edgeloop.core.blob import BlobStore, BlobUri

    store = BlobStore.from_settings(settings)
    container = settings.blob.models_container
    store.ensure_container(container)
    prefix = f"{name}/{digest[:16]}"
    for p in sorted(model_dir.rglob("*")):
        if p.is_file():
            store.upload_file(BlobUri(container, f"{prefix}/{p.relative_to(model_dir).as_posix()}"), p)
    return f"az://{container}/{prefix}"


def _log_confusion_figure(report: EvaluationReport) -> None:
    """A PNG of the confusion matrix in the run's evidence (best effort: matplotlib may be missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import mlflow
    except ImportError:  # pragma: no cover
        return
    n = len(report.labels)
    fig, ax = plt.subplots(figsize=(1.2 * n + 2, 1.2 * n + 1.5))
    ax.imshow(report.confusion_matrix, cmap="Blues")
    ax.set_xticks(range(n), report.labels, rotation=45)
    ax.set_yticks(range(n), report.labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i, row in enumerate(report.confusion_matrix):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center")
    fig.tight_layout()
    mlflow.log_figure(fig, f"{EVIDENCE_DIR}/confusion_matrix.png")
    plt.close(fig)


# -- reading ----------------------------------------------------------------------------------------------
def champion_version(settings: Settings) -> str | None:
    return _alias_version(client(settings), settings.mlflow.registered_model, CHAMPION)


def version_tags(settings: Settings, version: str) -> dict[str, str]:
    c = client(settings)
    return dict(_get_version(c, settings.mlflow.registered_model, version).tags)


def download_version(settings: Settings, version: str, dest: Path) -> Path:
    """The model files of a version (model.onnx + model_card.json) fetched under ``dest`` and verified
    against the card (:class:`~edgeloop.core.errors.IntegrityError` otherwise); returns their directory."""
    from edgeloop.core.model_loader import fetch_verified

    uri = f"models:/{settings.mlflow.registered_model}/{version}"
    return fetch_verified(uri, settings, cache_dir=Path(dest)).directory


def download_evaluation(settings: Settings, version: str) -> EvaluationReport | None:
    import mlflow

    from edgeloop.pipelines.evaluation import EvaluationReport

    c = client(settings)
    mv = _get_version(c, settings.mlflow.registered_model, version)
    if not mv.run_id:
        return None
    try:
        text = mlflow.artifacts.load_text(f"runs:/{mv.run_id}/{EVIDENCE_DIR}/evaluation.json")
    except Exception:  # noqa: BLE001 - evidence of a version registered by hand may be missing
        return None
    return EvaluationReport.model_validate_json(text)


# -- the human gate ---------------------------------------------------------------------------------------
def record_decision(
    settings: Settings,
    version: str,
    decision: str,
    by: str,
    note: str = "",
    mode: str = "human",
    evidence_digest: str | None = None,
) -> Decision:
    """``edgeloop approve|reject``: record who decided, when, why, and on which evidence."""
    if decision not in (APPROVED, REJECTED_VALUE):
        raise ValueError(f"decision must be {APPROVED!r} or {REJECTED_VALUE!r}")
    if not by.strip():
        raise RegistryError("say who decides: --by NAME")
    name = settings.mlflow.registered_model
    c = client(settings)
    mv = _get_version(c, name, version)
    tags = dict(mv.tags)
    current = tags.get(APPROVAL)
    if decision == APPROVED and tags.get(GATE) != "passed":
        raise RegistryError(
            f"{name} version {version} did not pass the automatic gate "
            f"({tags.get(GATE_REASONS, 'no gate record')}); it cannot be approved"
        )
    if current in (APPROVED, REJECTED_VALUE) and tags.get(APPROVAL_MODE) != "mlflow-ui":
        raise RegistryError(
            f"{name} version {version} is already {current} by {tags.get(APPROVAL_BY, '?')} "
            f"at {tags.get(APPROVAL_AT, '?')}; register a new version to decide again"
        )
    evidence = tags.get(EVIDENCE_DIGEST, "")
    if evidence_digest and evidence and evidence_digest != evidence:
        raise RegistryError(
            f"the evidence of {name} version {version} is {evidence[:12]}..., not the "
            f"{evidence_digest[:12]}... you reviewed; review the current report again"
        )
    at = _now()
    new = {
        APPROVAL_BY: by,
        APPROVAL_AT: at,
        APPROVAL_MODE: mode,
        APPROVAL_EVIDENCE: evidence,
        APPROVAL_NOTE: note[:4900],
    }
    if decision == REJECTED_VALUE:
        new |= {
            REJECTED: "true",
            REJECTED_REASONS: f"{mode} rejection by {by}" + (f": {note}" if note else ""),
        }
    new[APPROVAL] = decision  # last: a waiting run reads the decision only once its record is complete
    for k, v in new.items():
        c.set_model_version_tag(name, version, k, v)
    if decision == REJECTED_VALUE and _alias_version(c, name, CANDIDATE) == str(version):
        c.delete_registered_model_alias(name, CANDIDATE)
    return Decision(
        name=name,
        version=str(version),
        decision=decision,
        by=by,
        at=at,
        mode=mode,
        note=note,
        evidence_digest=evidence,
    )


def wait_for_decision(
    settings: Settings,
    version: str,
    timeout_s: float,
    *,
    auto_approve: bool = False,
    poll_s: float = 5.0,
    run_name: str = "",
    progress: Callable[[str], None] | None = None,
) -> Decision:
    """Block until a person approves or rejects ``version`` (CLI or MLflow UI tag), or the timeout.

    ``auto_approve`` records an approval by the pipeline itself (mode ``auto``), for local runs.
    A timeout is recorded as a rejection (mode ``timeout``). Returns the decision; the caller
    stops the run unless it is ``approved``.
    """
    name = settings.mlflow.registered_model
    c = client(settings)
    if auto_approve:
        return record_decision(
            settings,
            version,
            APPROVED,
            by=f"auto-approve ({run_name or 'local run'})",
            note="auto-approved: --auto-approve / auto_approve=True",
            mode="auto",
        )
    deadline = time.monotonic() + timeout_s
    say = progress or (lambda m: log.info(m))
    say(
        f"waiting up to {timeout_s:.0f} s for a decision on {name} version {version}: "
        f"`edgeloop approve {name} {version} --by NAME` or `edgeloop reject ...`, "
        f"or set the tag approval=approved|rejected on the version in the MLflow UI"
    )
    while True:
        tags = dict(_get_version(c, name, version).tags)
        state = tags.get(APPROVAL, PENDING)
        if state in (APPROVED, REJECTED_VALUE):
            if APPROVAL_AT not in tags:  # set in the MLflow UI: complete the record
                by = tags.get(APPROVAL_BY) or "unknown (MLflow UI)"
                return record_decision_from_ui(settings, c, version, state, by, tags)
            return Decision(
                name=name,
                version=str(version),
                decision=state,
                by=tags.get(APPROVAL_BY, ""),
                at=tags.get(APPROVAL_AT, ""),
                mode=tags.get(APPROVAL_MODE, ""),
                note=tags.get(APPROVAL_NOTE, ""),
                evidence_digest=tags.get(APPROVAL_EVIDENCE, ""),
            )
        if time.monotonic() >= deadline:
            d = record_decision(
                settings,
                version,
                REJECTED_VALUE,
                by="approval timeout",
                note=f"no decision within {timeout_s:.0f} s",
                mode="timeout",
            )
            return d
        time.sleep(max(0.05, min(poll_s, deadline - time.monotonic())))


def record_decision_from_ui(
    settings: Settings, c: MlflowClient, version: str, state: str, by: str, tags: Mapping[str, str]
) -> Decision:
    name = settings.mlflow.registered_model
    if state == APPROVED and tags.get(GATE) != "passed":
        state = REJECTED_VALUE
        by = f"{by} (approval refused: the gate failed)"
    at = _now()
    evidence = tags.get(EVIDENCE_DIGEST, "")
    updates = {APPROVAL_BY: by, APPROVAL_AT: at, APPROVAL_MODE: "mlflow-ui", APPROVAL_EVIDENCE: evidence}
    if state == REJECTED_VALUE:
        updates |= {REJECTED: "true", REJECTED_REASONS: f"rejected in the MLflow UI by {by}"}
    updates[APPROVAL] = state
    for k, v in updates.items():
        c.set_model_version_tag(name, version, k, v)
    if state == REJECTED_VALUE and _alias_version(c, name, CANDIDATE) == str(version):
        c.delete_registered_model_alias(name, CANDIDATE)
    return Decision(
        name=name,
        version=str(version),
        decision=state,
        by=by,
        at=at,
        mode="mlflow-ui",
        evidence_digest=evidence,
    )


# -- promotion and rollback -------------------------------------------------------------------------------
def promote_champion(settings: Settings, version: str, deployed_to: str) -> str | None:
    """After a successful deploy: alias ``champion`` -> ``version``; returns the previous champion."""
    name = settings.mlflow.registered_model
    c = client(settings)
    tags = dict(_get_version(c, name, version).tags)
    if tags.get(APPROVAL) != APPROVED:
        raise RegistryError(
            f"{name} version {version} is not approved (approval={tags.get(APPROVAL)!r}); "
            "only approved versions become champion"
        )
    previous = _alias_version(c, name, CHAMPION)
    if previous and previous != str(version):
        c.set_model_version_tag(name, version, PREVIOUS_CHAMPION, previous)
    c.set_model_version_tag(name, version, DEPLOYED_AT, _now())
    c.set_model_version_tag(name, version, DEPLOYED_TO, deployed_to[:4900])
    c.set_registered_model_alias(name, CHAMPION, str(version))
    if _alias_version(c, name, CANDIDATE) == str(version):
        c.delete_registered_model_alias(name, CANDIDATE)
    return previous if previous != str(version) else None


def rollback(settings: Settings) -> tuple[str, str]:
    """Point ``champion`` back at the version it replaced; returns (from_version, to_version)."""
    name = settings.mlflow.registered_model
    c = client(settings)
    current = _alias_version(c, name, CHAMPION)
    if current is None:
        raise RegistryError(f"model '{name}' has no champion: nothing to roll back")
    previous = dict(_get_version(c, name, current).tags).get(PREVIOUS_CHAMPION)
    if not previous:
        raise RegistryError(
            f"{name} champion version {current} records no previous champion "
            "(it was the first deployed version): nothing to roll back to"
        )
    _get_version(c, name, previous)
    c.set_registered_model_alias(name, CHAMPION, previous)
    c.set_model_version_tag(name, current, "edgeloop.rolled_back_at", _now())
    return current, previous
