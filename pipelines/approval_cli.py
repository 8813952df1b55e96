"""`edgeloop approve|reject|rollback` and `edgeloop registry verify|history`: the human gate and its audit."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from edgeloop.core.errors import user_errors
from edgeloop.pipelines.cli import _for_model


def _canary_note(settings, model: str, version: str, min_pairs: int, window_h: float) -> str:
    """Refuse unless the payload log holds ``min_pairs`` images both this version and the champion
    answered (a canary or shadow) with no regression; returns the evidence line to sign."""
    from datetime import UTC, datetime, timedelta

    from edgeloop.core.blob import BlobStore
    from edgeloop.pipelines import registry
    from edgeloop.serving.canary import canary_evidence, require_canary

    champion = registry.champion_version(settings)
    if champion is None or champion == version:
        click.echo("no other champion to compare with: the live-traffic requirement does not apply")
        return ""
    end = datetime.now(UTC)
    report = canary_evidence(
        BlobStore.from_settings(settings),
        settings.blob.payloads_container,
        model,
        champion,
        version,
        end - timedelta(hours=window_h),
        end,
    )
    return require_canary(report, min_pairs)


def _decide(
    obj,
    decision: str,
    model: str,
    version: str,
    note: str,
    evidence: str | None,
    min_canary: int = 0,
    canary_window_h: float = 24.0,
) -> None:
    from edgeloop.pipelines import registry

    # On the local stack `edgeloop approve` acts as its approver account; elsewhere as the MLflow
    # user your settings (EDGELOOP_MLFLOW__USERNAME/PASSWORD) name.
    settings = _for_model(obj.settings, model).as_mlflow_role("approver")
    if min_canary:
        live = _canary_note(settings, model, version, min_canary, canary_window_h)
        note = f"{note} [{live}]".strip() if live else note
    d = registry.record_decision(
        settings, version, decision, note=note, mode="human", evidence_digest=evidence
    )
    click.echo(
        f"{d.name} version {d.version} {d.decision} by {d.by} at {d.at} "
        f"(evidence {d.evidence_digest[:12] or 'n/a'}..., signed decision run {d.run_id})"
    )


_note = click.option("--note", default="", help="Why (signed with the decision).")
_explain = (
    "The decision is signed with your Ed25519 key (EDGELOOP_APPROVALS__SIGNING_KEY; on the local stack its "
    "approver's key) and filed as the MLflow user you authenticate as: that user, not a name you type, is "
    "the approver. The MLflow server refuses (403) a decision from an account that is not an approver."
)


@click.command(
    help=f"Approve candidate VERSION of MODEL: the waiting pipeline run goes on to deploy. {_explain}"
)
@click.argument("model")
@click.argument("version")
@_note
@click.option(
    "--evidence",
    default=None,
    help="Digest of the evidence you reviewed (tag edgeloop.evidence_digest); refused if it changed.",
)
@click.option(
    "--min-canary-sample",
    "min_canary",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Refuse unless at least N live images were answered by both VERSION and the champion (serve it as "
    "a canary or shadow with the payload log on) with no regression: top-1 agreement >= 0.95 and a "
    "confidence drop <= 0.02, both at the 95% bound. The comparison is signed with the decision. 0: off.",
)
@click.option(
    "--canary-window",
    "canary_window_h",
    type=click.FloatRange(min=0.01),
    default=24.0,
    show_default=True,
    help="Hours of payload log to compare (model name in the log: MODEL).",
)
@click.pass_obj
@user_errors
def approve(
    obj, model: str, version: str, note: str, evidence: str | None, min_canary: int, canary_window_h: float
) -> None:
    _decide(obj, "approved", model, version, note, evidence, min_canary, canary_window_h)


@click.command(help=f"Reject candidate VERSION of MODEL: the waiting run stops before deploy. {_explain}")
@click.argument("model")
@click.argument("version")
@_note
@click.pass_obj
@user_errors
def reject(obj, model: str, version: str, note: str) -> None:
    _decide(obj, "rejected", model, version, note, None)


@click.command()
@click.argument("model")
@click.option(
    "--to", "to", default=None, help="Version to roll back to [default: the one champion replaced]."
)
@click.option("--no-deploy", is_flag=True, help="Only move the alias; do not re-render/apply the deployment.")
@click.option(
    "--deploy-target",
    type=click.Choice(["auto", "cluster", "gitops"]),
    default="auto",
    show_default=True,
    help="auto: the cluster when running in one, else the GitOps directory.",
)
@click.option("--gitops-dir", default="", help="GitOps directory [default: <state_dir>/gitops/<overlay>].")
@click.pass_obj
@user_errors
def rollback(obj, model: str, to: str | None, no_deploy: bool, deploy_target: str, gitops_dir: str) -> None:
    """Point champion of MODEL back at the previous champion (or --to VERSION) and redeploy it.

    Refused unless that version carries a valid signed approval whose digests match its artifacts
    (see `edgeloop registry verify`): a rejected or never-approved version is never rolled back to."""
    from edgeloop.pipelines import registry

    settings = _for_model(obj.settings, model)
    if no_deploy:
        old, new = registry.rollback(settings, to)
        click.echo(f"{model}: champion {old} -> {new}")
        return
    from edgeloop.pipelines.deploy import rollback_and_deploy

    old, new, where = rollback_and_deploy(settings, deploy_target=deploy_target, gitops_dir=gitops_dir, to=to)
    click.echo(f"{model}: champion {old} -> {new}; deployed to {where}")


@click.group()
def registry() -> None:
    """Check and audit the decisions on registered model versions."""


@registry.command("verify")
@click.argument("model")
@click.argument("ref", metavar="VERSION|ALIAS")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@click.pass_obj
@user_errors
def verify_cmd(obj, model: str, ref: str, as_json: bool) -> None:
    """Verify that MODEL at VERSION (or ALIAS, e.g. champion) carries a valid approval: signed by a trusted
    approver's key, not overridden by a rejection, and whose model digest matches the model files in MLflow
    and the deployable copy, and whose evidence digest matches the evaluation. Exit 0 when every check
    passes, 1 on any mismatch."""
    from edgeloop.pipelines import registry as reg

    v = reg.verify_version(_for_model(obj.settings, model), ref)
    if as_json:
        click.echo(json.dumps(v.as_dict(), indent=2))
    else:
        click.echo(f"{v.name} {ref} (version {v.version}): {'VERIFIED' if v.ok else 'NOT VERIFIED'}")
        for c in v.checks:
            click.echo(f"  [{'ok' if c.ok else 'FAIL'}] {c.name}: {c.detail}")
    if not v.ok:
        sys.exit(1)


@registry.command("history")
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Print the decisions as JSON.")
@click.pass_obj
@user_errors
def history_cmd(obj, model: str, as_json: bool) -> None:
    """Every decision on MODEL's versions, oldest first: version, decision, approver, time, mode,
    evidence digest and signature status (bad signatures and the pipeline's unsigned rejections included)."""
    from edgeloop.pipelines import registry as reg

    entries = reg.history(_for_model(obj.settings, model))
    if as_json:
        click.echo(json.dumps([e.as_dict() for e in entries], indent=2))
        return
    if not entries:
        click.echo(f"{model}: no decisions yet")
        return
    click.echo(
        f"{'version':>7}  {'decision':<8}  {'approver':<20}  {'mode':<7}  {'at':<25}  evidence      signature"
    )
    for e in entries:
        click.echo(
            f"{e.version:>7}  {e.decision:<8}  {e.approver[:20]:<20}  {e.mode:<7}  {e.at:<25}  "
            f"{(e.evidence_digest[:12] or '-'):<12}  {e.signature}"
        )


@registry.command("keygen")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--approver", required=True, help="Your MLflow user name: the trusted-keys entry is for it.")
@user_errors
def keygen_cmd(path: Path, approver: str) -> None:
    """Write a new Ed25519 signing key to PATH (mode 0600; refused if PATH exists) and print the
    trusted-keys entry an operator adds for you (approvals.trusted_keys / the edgeloop-trusted-approvers
    ConfigMap). Sign with it through EDGELOOP_APPROVALS__SIGNING_KEY=PATH."""
    from edgeloop.pipelines import attestation

    if path.exists():
        raise attestation.AttestationError(f"{path} exists: a signing key is never overwritten")
    key = attestation.generate_key(path)
    click.echo(json.dumps({approver: attestation.public_key_text(key)}))
