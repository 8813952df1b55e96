"""The model registry (MLflow 3): register with evidence, the human gate, champion promotion, rollback.

Aliases carry the promotion state, tags the evidence; decisions are signed attestations:

* alias ``candidate``: passed the automatic gate, waiting for a person;
* alias ``champion``: approved *and* deployed; the version it replaced is kept in
  the tag ``edgeloop.previous_champion`` of the new champion (``edgeloop rollback``);
* a decision (approve/reject) is a run of the approvals experiment
  (``mlflow.approvals_experiment``) holding a DSSE envelope signed by the approver
  (:mod:`edgeloop.pipelines.attestation`): its subject is the model digest, its predicate
  the evidence digest, the decision, the approver (the MLflow user the server authenticated),
  the time and the mode. Only approver accounts may write that experiment, so the MLflow
  server refuses (403) a decision from the pipeline's identity; only a trusted approver's key
  makes a valid one. Deploys and rollbacks verify it against the artifacts (:func:`verify_version`);
* tags ``approval``, ``approval.by``... on the version mirror the decision for the MLflow UI
  (written by the waiting pipeline run). They decide nothing: a tag set by hand approves nothing;
* tag ``rejected``: ``true`` with ``rejected.reasons`` (gate failure, human rejection,
  approval timeout). Gate failures and timeouts are the pipeline's own, unsigned: a rejection
  needs no trust.

A model digest has one version: registering the same model again (a re-run over unchanged labels)
links to the existing version instead of adding one.

A version is an MLflow model (``mlflow.onnx.log_model``, a LoggedModel of the registration run): MLmodel
with the ONNX and python_function flavors, a signature (the card's NCHW float32 input, the graph's
outputs) and an input example, so ``mlflow.pyfunc.load_model("models:/NAME@champion")`` predicts; next to
it, byte for byte, the files edgeloop exported (``model.onnx`` as the card's digest covers it,
``model_card.json``, ``reference_profile.npz``...), which :mod:`edgeloop.core.model_loader` verifies.
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
    from mlflow.models import ModelSignature
    from mlflow.models.model import ModelInfo

    from edgeloop.core.config import Settings
    from edgeloop.core.model_card import ModelCard
    from edgeloop.pipelines.attestation import Statement
    from edgeloop.pipelines.detection_evaluation import DetectionReport
    from edgeloop.pipelines.evaluation import EvaluationReport
    from edgeloop.pipelines.gate import GateDecision

    Report = EvaluationReport | DetectionReport

log = logging.getLogger(__name__)

CANDIDATE = "candidate"
CHAMPION = "champion"
# tag keys
APPROVAL = "approval"
APPROVAL_BY = "approval.by"
APPROVAL_AT = "approval.at"
APPROVAL_NOTE = "approval.note"
APPROVAL_MODE = "approval.mode"  # human | auto | timeout | gate
APPROVAL_EVIDENCE = "approval.evidence_digest"
APPROVAL_RUN = "approval.run_id"  # the approvals-experiment run holding the signed decision
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
LAST_PIPELINE_RUN = "edgeloop.last_pipeline_run"  # a re-run that registered the same model digest again
# tags of a decision run in the approvals experiment
DECISION_MODEL = "edgeloop.model"
DECISION_VERSION = "edgeloop.version"
DECISION = "edgeloop.decision"
ATTESTATION = "edgeloop.attestation"
PENDING, APPROVED, REJECTED_VALUE = "pending", "approved", "rejected"

EVIDENCE_DIR = "evidence"
MODEL_DIR = "model"  # the name of the LoggedModel in the registration run
REGISTER_STEP = "register-model"


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
    reused: bool = False  # True: this model digest was registered before; that version is linked

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
    run_id: str = ""  # the approvals-experiment run of a signed decision

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
    report: Report,
    decision: GateDecision,
    *,
    report_markdown: str = "",
    champion_report: Report | None = None,
    lineage: Mapping[str, str] | None = None,
    params: Mapping[str, Any] | None = None,
    extra_evidence: Mapping[str, Path] | None = None,
    upload_model: bool = True,
    parent_run_id: str = "",
) -> Registered:
    """Log the model (an MLflow ONNX model with its signature, input example and edgeloop's files) and
    the evidence in an MLflow run, register a version, tag it by the gate's decision.

    Passing: alias ``candidate``, ``approval=pending``. Failing: ``rejected=true`` with the reasons.
    The model files are also copied to ``az://<models container>/<name>/<model digest>/`` (immutable,
    content-addressed): that is the storage URI the InferenceService points at. ``parent_run_id``: the
    pipeline run's MLflow run, under which the registration run nests.
    """
    import mlflow

    from edgeloop.components.tracking import record_reused, step_run
    from edgeloop.core.model_card import ModelCard

    model_dir = Path(model_dir)
    card = ModelCard.load(model_dir)
    card.verify(model_dir)
    model_digest = card.digest()
    name = settings.mlflow.registered_model
    c = client(settings)
    lineage = {k: str(v) for k, v in (lineage or {}).items() if v not in (None, "")}
    existing = version_with_digest(settings, model_digest)
    if existing is not None:
        linked = _link_existing(settings, existing, lineage.get("pipeline_run", ""))
        record_reused(settings, parent_run_id, REGISTER_STEP, linked.run_id)
        return linked

    storage_uri = _upload_model(settings, name, model_digest, model_dir) if upload_model else ""
    evidence_digest = report.digest()
    run_name = REGISTER_STEP if parent_run_id else lineage.get("pipeline_run") or REGISTER_STEP
    with (
        step_run(settings, parent_run_id, REGISTER_STEP, run_name=run_name) as run,
        tempfile.TemporaryDirectory() as tmp,
    ):
        ev = Path(tmp)
        (ev / "evaluation.json").write_text(report.model_dump_json(indent=2))
        (ev / "gate.json").write_text(decision.model_dump_json(indent=2))
        axis, matrix = report.confusion()
        (ev / "confusion_matrix.json").write_text(json.dumps({"labels": axis, "matrix": matrix}, indent=2))
        if report_markdown:
            (ev / "report.md").write_text(report_markdown)
        if champion_report is not None:
            (ev / "champion_evaluation.json").write_text(champion_report.model_dump_json(indent=2))
        for fname, path in (extra_evidence or {}).items():
            if Path(path).exists():
                (ev / fname).write_bytes(Path(path).read_bytes())
        mlflow.log_artifacts(str(ev), EVIDENCE_DIR)
        logged = log_mlflow_model(c, model_dir, card, model_digest)
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
    description = (
        f"{report.headline()}; gate {'passed' if decision.passed else 'FAILED: ' + decision.summary()}"
    )
    # Registered only once every file is in the logged model: a version never exists without its card.
    mv = c.create_model_version(
        name,
        source=logged.model_uri,
        run_id=run_id,
        tags=tags,
        description=description[:4900],
        model_id=logged.model_id,
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


def model_signature(card: ModelCard, graph: Any) -> ModelSignature:
    """The MLflow signature: the card's input, ``[-1, 3, size, size]`` float32 (what
    :class:`~edgeloop.core.preprocessing.Preprocess` makes), and every output of the graph
    (``probabilities``, ``embedding`` when the model has one) with its type and fixed dimensions."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec
    from mlflow.types.schema import ColSpec
    from onnx.helper import tensor_dtype_to_np_dtype

    size = card.preprocessing.size
    outputs: list[ColSpec | TensorSpec] = []
    for out in graph.graph.output:
        t = out.type.tensor_type
        dims = [int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in t.shape.dim]
        shape = (-1, *dims[1:]) if dims else (-1,)
        outputs.append(TensorSpec(np.dtype(tensor_dtype_to_np_dtype(t.elem_type)), shape, out.name))
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, size, size), card.input_name)]),
        outputs=Schema(outputs),
    )


def input_example(card: ModelCard) -> dict[str, Any]:
    """One neutral grey image through the shared preprocessing: a valid input of the card's size."""
    import numpy as np

    from edgeloop.core.preprocessing import Preprocess

    pre = Preprocess(card.preprocessing)
    grey = np.full((pre.size, pre.size, 3), 128, dtype=np.uint8)
    return {card.input_name: pre.batch([grey])}


def log_mlflow_model(c: MlflowClient, model_dir: Path, card: ModelCard, model_digest: str) -> ModelInfo:
    """Log ``model_dir`` as an MLflow ONNX model of the active run (``mlflow.onnx.log_model``: MLmodel with
    the onnx and python_function flavors, signature, input example, requirements), then add edgeloop's
    files to the same LoggedModel byte for byte: ``model.onnx`` as exported (``onnx.save`` may serialize a
    graph differently, and the card's digest covers the exported bytes), the card, the reference profile
    and anything else the directory holds. Returns the LoggedModel's info (``models:/m-<id>``)."""
    import mlflow.onnx
    import onnx

    from edgeloop.core.model_card import MODEL_FILE

    graph = onnx.load(str(model_dir / MODEL_FILE))
    providers = list(dict.fromkeys([card.execution_provider, "CPUExecutionProvider"]))
    info = mlflow.onnx.log_model(
        graph,
        name=MODEL_DIR,
        signature=model_signature(card, graph),
        input_example=input_example(card),
        pip_requirements=mlflow.onnx.get_default_pip_requirements(),  # stated: no inference run
        save_as_external_data=False,
        onnx_execution_providers=providers,
        metadata={MODEL_DIGEST: model_digest},
        tags={MODEL_DIGEST: model_digest},
    )
    c.log_model_artifacts(info.model_id, str(model_dir))
    return info


def version_with_digest(settings: Settings, model_digest: str) -> str | None:
    """The version already registered for ``model_digest``, if any (the oldest, should there be two)."""
    c = client(settings)
    name = settings.mlflow.registered_model
    found = c.search_model_versions(f"name = '{name}' and tag.`{MODEL_DIGEST}` = '{model_digest}'")
    return str(min(int(mv.version) for mv in found)) if found else None


def _link_existing(settings: Settings, version: str, pipeline_run: str) -> Registered:
    """A re-run produced a model that is already registered: link to its version, register nothing."""
    c = client(settings)
    name = settings.mlflow.registered_model
    mv = _get_version(c, name, version)
    tags = dict(mv.tags)
    if pipeline_run:
        c.set_model_version_tag(name, version, LAST_PIPELINE_RUN, pipeline_run)
    passed = tags.get(GATE) == "passed"
    if passed and tags.get(APPROVAL) == PENDING and _alias_version(c, name, CANDIDATE) != version:
        # The step that registered it was killed before the alias moved: finish that step.
        c.set_registered_model_alias(name, CANDIDATE, version)
    log.info(
        "model %s... is already registered as %s version %s: linking to it, no new version",
        tags.get(MODEL_DIGEST, "")[:12],
        name,
        version,
    )
    reasons = [] if passed else [r for r in tags.get(GATE_REASONS, "").split("; ") if r]
    return Registered(
        name=name,
        version=version,
        run_id=mv.run_id or "",
        gate_passed=passed,
        evidence_digest=tags.get(EVIDENCE_DIGEST, ""),
        model_digest=tags.get(MODEL_DIGEST, ""),
        storage_uri=tags.get(STORAGE_URI, ""),
        reasons=reasons,
        reused=True,
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


def _log_confusion_figure(report: Report) -> None:
    """A PNG of the confusion matrix in the run's evidence (best effort: matplotlib may be missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import mlflow
    except ImportError:  # pragma: no cover
        return
    axis, matrix = report.confusion()
    n = len(axis)
    fig, ax = plt.subplots(figsize=(1.2 * n + 2, 1.2 * n + 1.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), axis, rotation=45)
    ax.set_yticks(range(n), axis)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i, row in enumerate(matrix):
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


def download_evaluation(settings: Settings, version: str) -> Report | None:
    """The version's staging evaluation (a detector's is a
    :class:`~edgeloop.pipelines.detection_evaluation.DetectionReport`), or None without one."""
    import mlflow

    from edgeloop.pipelines.evaluation import load_report

    c = client(settings)
    mv = _get_version(c, settings.mlflow.registered_model, version)
    if not mv.run_id:
        return None
    try:
        text = mlflow.artifacts.load_text(f"runs:/{mv.run_id}/{EVIDENCE_DIR}/evaluation.json")
    except Exception:  # noqa: BLE001 - evidence of a version registered by hand may be missing
        return None
    return load_report(json.loads(text))


# -- identities and decision records -------------------------------------------------------------------------
def whoami(settings: Settings) -> str:
    """The MLflow user the server authenticates these settings as (asked of the server, never assumed)."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    uri = settings.mlflow_tracking_uri()
    resp = http_request(get_default_host_creds(uri), "/api/2.0/mlflow/users/current", "GET", max_retries=0)
    if resp.status_code == 401:
        raise RegistryError(
            f"MLflow at {uri} did not accept these credentials (401): set EDGELOOP_MLFLOW__USERNAME/"
            "PASSWORD (or MLFLOW_TRACKING_USERNAME/PASSWORD) to your MLflow account"
        )
    if resp.status_code != 200:
        raise RegistryError(
            f"MLflow at {uri} cannot say who you are ({resp.status_code}): decisions need a server with "
            "authentication (mlflow server --app-name basic-auth), so that they are recorded under your user"
        )
    return str(resp.json()["user"]["username"])


def _approvals_experiment_id(c: MlflowClient, settings: Settings) -> str:
    name = settings.mlflow.approvals_experiment
    exp = c.get_experiment_by_name(name)
    if exp is None:
        raise RegistryError(
            f"MLflow has no experiment {name!r} for decisions: an MLflow admin creates it and grants "
            "the approvers (only them) EDIT on it; the local stack does so on `edgeloop stack up`"
        )
    return str(exp.experiment_id)


@dataclass
class DecisionRecord:
    """One decision run of the approvals experiment, with its signature checked."""

    run_id: str
    model: str
    version: str
    valid: bool
    signature: str  # "valid (<approver>, key <keyid>)" or "INVALID: <why>"
    statement: Statement | None = None

    @property
    def decision(self) -> str:
        return self.statement.decision if self.statement else "?"

    def as_decision(self) -> Decision:
        st = self.statement
        assert st is not None
        return Decision(
            name=st.model,
            version=st.version,
            decision=st.decision,
            by=st.approver,
            at=st.decided_at,
            mode=st.mode,
            note=st.note,
            evidence_digest=st.evidence_digest,
            run_id=self.run_id,
        )


def decision_records(settings: Settings, version: str | None = None) -> list[DecisionRecord]:
    """Every decision filed for the model (or one version), oldest first, each with its signature checked
    against the configured trusted approver keys."""
    from edgeloop.pipelines import attestation

    c = client(settings)
    name = settings.mlflow.registered_model
    exp_id = _approvals_experiment_id(c, settings)
    where = f"tags.`{DECISION_MODEL}` = '{name}'"
    if version is not None:
        where += f" and tags.`{DECISION_VERSION}` = '{version}'"
    runs = c.search_runs(
        [exp_id], filter_string=where, order_by=["attributes.start_time ASC"], max_results=1000
    )
    trusted = attestation.trusted_keys(settings)
    out = []
    for run in runs:
        tags = run.data.tags
        filed_version = tags.get(DECISION_VERSION, "?")
        try:
            st = attestation.verify(tags.get(ATTESTATION, ""), trusted)
            if (st.model, st.version) != (name, filed_version):
                raise attestation.AttestationError(
                    f"the statement is about {st.subject_name}, filed under version {filed_version}"
                )
            key = attestation.keyid(trusted[st.approver])[:16]
            out.append(DecisionRecord(run.info.run_id, name, filed_version, True, f"valid ({key})", st))
        except attestation.AttestationError as e:
            out.append(DecisionRecord(run.info.run_id, name, filed_version, False, f"INVALID: {e}"))
    return out


def _standing_decision(records: list[DecisionRecord]) -> DecisionRecord | None:
    """The decision that counts: a valid rejection wins over any approval, else the first valid approval."""
    valid = [r for r in records if r.valid]
    rejected = [r for r in valid if r.decision == REJECTED_VALUE]
    chosen = rejected or valid
    return chosen[0] if chosen else None


def _verified_digest(settings: Settings, uri: str) -> str:
    """Fetch ``uri`` into a fresh directory (never a cache), apply the integrity rule, return the digest."""
    from edgeloop.core.model_loader import fetch_model, verify_model

    with tempfile.TemporaryDirectory() as tmp:
        fetched = fetch_model(uri, settings, cache_dir=Path(tmp))
        return verify_model(fetched.directory).card.digest()


# -- the human gate ---------------------------------------------------------------------------------------
def record_decision(
    settings: Settings,
    version: str,
    decision: str,
    note: str = "",
    mode: str = "human",
    evidence_digest: str | None = None,
) -> Decision:
    """``edgeloop approve|reject``: sign the decision as the authenticated MLflow user and file it in the
    approvals experiment (which the MLflow server lets only approvers write)."""
    from mlflow.exceptions import MlflowException

    from edgeloop.pipelines import attestation

    if decision not in (APPROVED, REJECTED_VALUE):
        raise ValueError(f"decision must be {APPROVED!r} or {REJECTED_VALUE!r}")
    name = settings.mlflow.registered_model
    c = client(settings)
    user = whoami(settings)
    tags = dict(_get_version(c, name, version).tags)
    if decision == APPROVED and tags.get(GATE) != "passed":
        raise RegistryError(
            f"{name} version {version} did not pass the automatic gate "
            f"({tags.get(GATE_REASONS, 'no gate record')}); it cannot be approved"
        )
    standing = _standing_decision(decision_records(settings, version))
    if standing is not None:
        st = standing.statement
        assert st is not None
        raise RegistryError(
            f"{name} version {version} is already {st.decision} by {st.approver} at {st.decided_at}; "
            "register a new version to decide again"
        )
    if tags.get(REJECTED) == "true":
        raise RegistryError(
            f"{name} version {version} is already rejected ({tags.get(REJECTED_REASONS, '')[:300]}); "
            "register a new version to decide again"
        )
    report = download_evaluation(settings, version)
    evidence = report.digest() if report is not None else ""
    if not evidence or evidence != tags.get(EVIDENCE_DIGEST):
        raise RegistryError(
            f"the evidence of {name} version {version} ({evidence[:12] or 'missing'}...) is not the evidence "
            f"it was registered with ({tags.get(EVIDENCE_DIGEST, '')[:12]}...): it changed after registration"
        )
    if evidence_digest and evidence_digest != evidence:
        raise RegistryError(
            f"the evidence of {name} version {version} is {evidence[:12]}..., not the "
            f"{evidence_digest[:12]}... you reviewed; review the current report again"
        )
    model_digest = _verified_digest(settings, f"models:/{name}/{version}")
    if model_digest != tags.get(MODEL_DIGEST):
        raise RegistryError(
            f"the files of {name} version {version} have digest {model_digest[:12]}..., registered as "
            f"{tags.get(MODEL_DIGEST, '')[:12]}...: they changed after registration; do not approve it"
        )
    statement = attestation.Statement(
        model=name,
        version=str(version),
        model_digest=model_digest,
        decision=decision,
        approver=user,
        mode=mode,
        decided_at=_now(),
        evidence_digest=evidence,
        storage_uri=tags.get(STORAGE_URI, ""),
        note=note[:2000],
    )
    envelope = attestation.sign(statement, attestation.signing_key(settings, user))
    exp_id = _approvals_experiment_id(c, settings)
    try:
        run = c.create_run(
            exp_id,
            run_name=f"{name} v{version} {decision}",
            tags={
                DECISION_MODEL: name,
                DECISION_VERSION: str(version),
                DECISION: decision,
                MODEL_DIGEST: model_digest,
                ATTESTATION: json.dumps(envelope, separators=(",", ":")),
            },
        )
    except MlflowException as e:
        if e.get_http_status_code() == 403:
            raise RegistryError(
                f"MLflow refused the decision (403): {user} may not write to the experiment "
                f"{settings.mlflow.approvals_experiment!r}; decisions are recorded by approver accounts only"
            ) from e
        raise
    c.set_terminated(run.info.run_id)
    log.info(
        "%s version %s %s by %s (%s), decision run %s", name, version, decision, user, mode, run.info.run_id
    )
    return DecisionRecord(run.info.run_id, name, str(version), True, "valid", statement).as_decision()


def _mirror(settings: Settings, d: Decision) -> None:
    """Show a decision on the version for the MLflow UI (tags decide nothing) and drop a rejected candidate."""
    c = client(settings)
    name = settings.mlflow.registered_model
    new = {
        APPROVAL_BY: d.by,
        APPROVAL_AT: d.at,
        APPROVAL_MODE: d.mode,
        APPROVAL_EVIDENCE: d.evidence_digest,
        APPROVAL_NOTE: d.note[:TAG_MAX],
        APPROVAL_RUN: d.run_id,
    }
    if d.decision == REJECTED_VALUE:
        new |= {
            REJECTED: "true",
            REJECTED_REASONS: f"{d.mode} rejection by {d.by}" + (f": {d.note}" if d.note else ""),
        }
    new[APPROVAL] = d.decision
    for k, v in new.items():
        c.set_model_version_tag(name, d.version, k, v)
    if d.decision == REJECTED_VALUE and _alias_version(c, name, CANDIDATE) == str(d.version):
        c.delete_registered_model_alias(name, CANDIDATE)


def _unsigned_rejection(settings: Settings, version: str) -> Decision | None:
    """A rejection by the gate or a timeout (tags on the version: the pipeline's own, no signature needed)."""
    tags = version_tags(settings, version)
    if tags.get(REJECTED) != "true":
        return None
    return Decision(
        name=settings.mlflow.registered_model,
        version=str(version),
        decision=REJECTED_VALUE,
        by=tags.get(APPROVAL_BY, tags.get(APPROVAL_MODE, "gate")),
        at=tags.get(APPROVAL_AT, ""),
        mode=tags.get(APPROVAL_MODE, "gate"),
        note=tags.get(APPROVAL_NOTE, tags.get(REJECTED_REASONS, "")),
        evidence_digest=tags.get(APPROVAL_EVIDENCE, ""),
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
    """Block until an approver's signed decision on ``version`` is filed, or the timeout.

    A version decided before (a re-run that linked to it) returns its decision at once. ``auto_approve``
    signs an approval with the local stack's auto-approver account and key (mode ``auto``): only against
    the local stack. A timeout is recorded as a rejection (mode ``timeout``). Only decisions whose
    signature verifies count: tags set by hand are ignored.
    """
    name = settings.mlflow.registered_model
    say = progress or (lambda m: log.info(m))
    decided = _standing_decision(decision_records(settings, version))
    if decided is None and auto_approve:
        if not settings.local_mlflow:
            raise RegistryError(
                "auto_approve works only with the local runner against the local stack; on a cluster an "
                "approver decides with `edgeloop approve`"
            )
        d = record_decision(
            settings.as_mlflow_role("auto"),
            version,
            APPROVED,
            note=f"auto-approved by the local runner ({run_name or 'local run'}): --auto-approve",
            mode="auto",
        )
        _mirror(settings, d)
        return d
    if decided is not None:
        d = decided.as_decision()
        _mirror(settings, d)
        return d
    earlier = _unsigned_rejection(settings, version)
    if earlier is not None:
        return earlier
    deadline = time.monotonic() + timeout_s
    say(
        f"waiting up to {timeout_s:.0f} s for a decision on {name} version {version}: an approver runs "
        f"`edgeloop approve {name} {version}` or `edgeloop reject {name} {version} --note WHY`"
    )
    ignored: set[str] = set()
    while True:
        records = decision_records(settings, version)
        for r in records:
            if not r.valid and r.run_id not in ignored:
                ignored.add(r.run_id)
                log.warning(
                    "ignoring a decision record on version %s (run %s): %s", version, r.run_id, r.signature
                )
        standing = _standing_decision(records)
        if standing is not None:
            d = standing.as_decision()
            _mirror(settings, d)
            return d
        if time.monotonic() >= deadline:
            return _record_timeout(settings, version, timeout_s)
        time.sleep(max(0.05, min(poll_s, deadline - time.monotonic())))


def _record_timeout(settings: Settings, version: str, timeout_s: float) -> Decision:
    c = client(settings)
    name = settings.mlflow.registered_model
    d = Decision(
        name=name,
        version=str(version),
        decision=REJECTED_VALUE,
        by="approval timeout",
        at=_now(),
        mode="timeout",
        note=f"no decision within {timeout_s:.0f} s",
    )
    for k, v in {
        APPROVAL_BY: d.by,
        APPROVAL_AT: d.at,
        APPROVAL_MODE: d.mode,
        APPROVAL_NOTE: d.note,
        REJECTED: "true",
        REJECTED_REASONS: f"timeout: {d.note}",
        APPROVAL: REJECTED_VALUE,
    }.items():
        c.set_model_version_tag(name, version, k, v)
    if _alias_version(c, name, CANDIDATE) == str(version):
        c.delete_registered_model_alias(name, CANDIDATE)
    return d


# -- verification -----------------------------------------------------------------------------------------
@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Verification:
    """What ``edgeloop registry verify`` checked; ``ok`` only if every check passed."""

    name: str
    version: str
    ref: str
    checks: list[Check]
    statement: Statement | None = None

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def require(self, purpose: str) -> Statement:
        """The verified approval, or :class:`UnverifiedVersion` naming every failed check."""
        if not self.ok or self.statement is None:
            failed = "; ".join(f"{c.name}: {c.detail}" for c in self.checks if not c.ok)
            raise UnverifiedVersion(
                f"{self.name} version {self.version} has no valid approval for its artifacts, so it is not "
                f"{purpose}: {failed}"
            )
        return self.statement

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "ref": self.ref,
            "ok": self.ok,
            "checks": [c.__dict__ for c in self.checks],
            "statement": self.statement.as_dict() if self.statement else None,
        }


class UnverifiedVersion(RegistryError):
    """A version without a valid signed approval matching its artifacts: deploy and rollback refuse it."""


def resolve_version(settings: Settings, ref: str) -> str:
    """A version number, or the version an alias (``champion``, ``candidate``) points at."""
    if ref.isdigit():
        return ref
    found = _alias_version(client(settings), settings.mlflow.registered_model, ref)
    if found is None:
        raise RegistryError(f"model {settings.mlflow.registered_model!r} has no alias {ref!r}")
    return found


def verify_version(settings: Settings, ref: str, *, artifacts: bool = True) -> Verification:
    """Check that ``ref`` (a version or an alias) carries a valid signed approval by a trusted approver, no
    valid rejection, and (``artifacts``) that the model files in MLflow, the deployable copy and the evidence
    all still have the digests the approver signed."""
    from edgeloop.core.errors import ModelError

    name = settings.mlflow.registered_model
    version = resolve_version(settings, ref)
    _get_version(client(settings), name, version)
    records = decision_records(settings, version)
    checks: list[Check] = []
    standing = _standing_decision(records)
    invalid = [r for r in records if not r.valid]
    tags = version_tags(settings, version)
    if standing is None or standing.decision != APPROVED:
        if standing is not None:
            st = standing.statement
            assert st is not None
            why = f"rejected by {st.approver} ({st.mode}) at {st.decided_at}"
        elif tags.get(REJECTED) == "true":
            why = f"rejected: {tags.get(REJECTED_REASONS, '')[:200]}"
        else:
            why = "no signed approval"
            if tags.get(APPROVAL) == APPROVED:
                why += " (its tag approval=approved is not a decision: decisions are signed attestations)"
        if invalid:
            why += f"; {len(invalid)} record(s) with a bad signature: {invalid[-1].signature}"
        checks.append(Check("decision", False, why))
        return Verification(name, version, ref, checks)
    st = standing.statement
    assert st is not None
    checks.append(
        Check(
            "decision",
            True,
            f"{st.decision} by {st.approver} ({st.mode}) at {st.decided_at}, signature {standing.signature}",
        )
    )
    checks.append(
        Check(
            "registry tag",
            tags.get(MODEL_DIGEST) == st.model_digest,
            f"{MODEL_DIGEST}={tags.get(MODEL_DIGEST, '')[:12]}..., signed {st.model_digest[:12]}...",
        )
    )
    if artifacts:
        for what, uri in (
            ("model files in MLflow", f"models:/{name}/{version}"),
            ("deployable copy", st.storage_uri),
        ):
            if not uri:
                checks.append(Check(what, False, "the approval names no storage URI"))
                continue
            try:
                actual = _verified_digest(settings, uri)
                checks.append(
                    Check(
                        what,
                        actual == st.model_digest,
                        f"{uri}: digest {actual[:12]}..., signed {st.model_digest[:12]}...",
                    )
                )
            except ModelError as e:
                checks.append(Check(what, False, f"{uri}: {e}"))
        report = download_evaluation(settings, version)
        ev = report.digest() if report is not None else ""
        checks.append(
            Check(
                "evidence",
                ev == st.evidence_digest,
                f"evaluation {ev[:12] or 'missing'}..., signed {st.evidence_digest[:12]}...",
            )
        )
    return Verification(name, version, ref, checks, st)


# -- audit ------------------------------------------------------------------------------------------------
@dataclass
class HistoryEntry:
    version: str
    decision: str
    approver: str
    at: str
    mode: str
    evidence_digest: str
    signature: str
    run_id: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def history(settings: Settings) -> list[HistoryEntry]:
    """Every decision on the model: the signed ones (with their signature status, bad ones included) and
    the pipeline's unsigned rejections (gate failures, timeouts), in time order."""
    out = []
    for r in decision_records(settings):
        st = r.statement
        out.append(
            HistoryEntry(
                version=r.version,
                decision=st.decision if st else "?",
                approver=st.approver if st else "?",
                at=st.decided_at if st else "",
                mode=st.mode if st else "?",
                evidence_digest=st.evidence_digest if st else "",
                signature=r.signature,
                run_id=r.run_id,
            )
        )
    c = client(settings)
    name = settings.mlflow.registered_model
    for mv in c.search_model_versions(f"name = '{name}'"):
        tags = mv.tags
        if tags.get(REJECTED) == "true" and tags.get(APPROVAL_MODE) in ("gate", "timeout"):
            out.append(
                HistoryEntry(
                    version=str(mv.version),
                    decision=REJECTED_VALUE,
                    approver=tags.get(APPROVAL_BY) or "automatic gate",
                    at=tags.get(APPROVAL_AT, ""),
                    mode=tags[APPROVAL_MODE],
                    evidence_digest=tags.get(EVIDENCE_DIGEST, ""),
                    signature="unsigned (the pipeline's own rejection)",
                )
            )
    return sorted(out, key=lambda e: (e.at, int(e.version) if e.version.isdigit() else 0))


# -- promotion and rollback -------------------------------------------------------------------------------
def promote_champion(settings: Settings, version: str, deployed_to: str) -> str | None:
    """After a successful deploy: alias ``champion`` -> ``version``; returns the previous champion.
    Only a version with a valid signed approval becomes champion."""
    name = settings.mlflow.registered_model
    verify_version(settings, version, artifacts=False).require("promoted to champion")
    c = client(settings)
    previous = _alias_version(c, name, CHAMPION)
    if previous and previous != str(version):
        c.set_model_version_tag(name, version, PREVIOUS_CHAMPION, previous)
    c.set_model_version_tag(name, version, DEPLOYED_AT, _now())
    c.set_model_version_tag(name, version, DEPLOYED_TO, deployed_to[:4900])
    c.set_registered_model_alias(name, CHAMPION, str(version))
    if _alias_version(c, name, CANDIDATE) == str(version):
        c.delete_registered_model_alias(name, CANDIDATE)
    return previous if previous != str(version) else None


def rollback_target(settings: Settings, to: str | None = None) -> tuple[str, str]:
    """(current champion, the version to roll back to): ``to``, else the one the champion replaced."""
    name = settings.mlflow.registered_model
    c = client(settings)
    current = _alias_version(c, name, CHAMPION)
    if current is None:
        raise RegistryError(f"model '{name}' has no champion: nothing to roll back")
    previous = to or dict(_get_version(c, name, current).tags).get(PREVIOUS_CHAMPION)
    if not previous:
        raise RegistryError(
            f"{name} champion version {current} records no previous champion "
            "(it was the first deployed version): nothing to roll back to; name one with --to VERSION"
        )
    _get_version(c, name, previous)
    return current, previous


def rollback(
    settings: Settings, to: str | None = None, *, verified: Verification | None = None
) -> tuple[str, str]:
    """Point ``champion`` back at the version it replaced (or ``to``); returns (from_version, to_version).
    The target must carry a valid signed approval matching its artifacts."""
    current, previous = rollback_target(settings, to)
    if verified is None or verified.version != previous:
        verified = verify_version(settings, previous)
    verified.require("a rollback target")
    c = client(settings)
    name = settings.mlflow.registered_model
    c.set_registered_model_alias(name, CHAMPION, previous)
    c.set_model_version_tag(name, current, "edgeloop.rolled_back_at", _now())
    return current, previous
