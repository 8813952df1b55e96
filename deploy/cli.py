"""``edgeloop deploy ...`` and ``edgeloop plan``: thin click wrappers over render, validate and plan."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from edgeloop.core.errors import user_errors

DEFAULT_BENCH = Path("benchmarks/results/serving.json")


def _settings(ctx: click.Context) -> Any:
    obj = ctx.find_root().obj
    if obj is not None and hasattr(obj, "settings"):
        return obj.settings
    from edgeloop.core.config import load_settings

    return load_settings()


def _dump(objs: list[dict[str, Any]]) -> str:
    import yaml

    return "---\n".join(yaml.safe_dump(o, sort_keys=False) for o in objs)


@click.group()
def deploy() -> None:
    """Render and validate the Kubernetes manifests (KServe, autoscaling, training, GitOps).

    Overlays live in manifests/overlays (edge-cpu, edge-gpu, staging, keda). Nothing
    here talks to a cluster: output goes to stdout or to a GitOps directory for Flux.
    """


@deploy.command("render")
@click.argument("model")
@click.argument("version")
@click.option("--overlay", default="edge-cpu", show_default=True, help="manifests/overlays/<name> to render.")
@click.option(
    "--storage-uri",
    help="Model directory URI for KServe's storage initializer "
    "[default: https://<blob.account>.blob.core.windows.net/<models container>/<MODEL>/<VERSION>].",
)
@click.option("--digest", help="ModelCard.digest() of the model version (64 hex chars).")
@click.option(
    "--model-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Local model directory: its model_card.json gives the digest.",
)
@click.option("--image", help="Full server image reference for this model (overrides the ServingRuntime's).")
@click.option("--image-tag", help="Server image tag only (KServe runtimeVersion).")
@click.option(
    "--images",
    type=click.Path(exists=True, path_type=Path),
    help="build/images/index.json from `make images`: pin every edgeloop image by digest.",
)
@click.option("--min-replicas", type=int, help="Replica floor (InferenceService and autoscaler).")
@click.option("--max-replicas", type=int, help="Replica ceiling (InferenceService and autoscaler).")
@click.option(
    "--model-only", is_flag=True, help="Only the InferenceService and its autoscaler, not the whole overlay."
)
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write one file per object plus kustomization.yaml here (a Flux path); default: YAML on stdout.",
)
@click.option(
    "--verified",
    is_flag=True,
    help="Take the storage URI and digest from MODEL VERSION's signed approval in the registry; refused "
    "unless `edgeloop registry verify MODEL VERSION` passes. Required with -o unless --unverified.",
)
@click.option(
    "--unverified",
    is_flag=True,
    help="Write a release with -o from the --digest/--storage-uri given, without an approval (outside the "
    "registry's gate: the server still refuses any other model than the digest).",
)
@click.pass_context
@user_errors
def render_cmd(
    ctx: click.Context,
    model: str,
    version: str,
    overlay: str,
    storage_uri: str | None,
    digest: str | None,
    model_dir: Path | None,
    image: str | None,
    image_tag: str | None,
    images: Path | None,
    min_replicas: int | None,
    max_replicas: int | None,
    model_only: bool,
    output: Path | None,
    verified: bool,
    unverified: bool,
) -> None:
    """Final manifests for MODEL at VERSION: the overlay with its InferenceService template
    filled in (name, storageUri, digest, version) and validated."""
    from edgeloop.deploy import render
    from edgeloop.deploy.errors import RenderError
    from edgeloop.deploy.validate import validate_objects

    if output is not None and not (verified or unverified):
        raise RenderError(
            "writing a release (-o) needs a version with a verified approval: pass --verified (the digest and "
            "storage come from its signed approval), or --unverified to write one outside the registry's gate"
        )
    if verified:
        from edgeloop.pipelines.cli import _for_model
        from edgeloop.pipelines.deploy import storage_url
        from edgeloop.pipelines.registry import verify_version

        s = _for_model(_settings(ctx), model)
        st = verify_version(s, version).require("deployable")
        if digest and render.normalize_digest(digest) != st.model_digest:
            raise RenderError(
                f"--digest {digest[:12]}... is not the approved digest ({st.model_digest[:12]}...)"
            )
        digest, storage_uri, model_dir = st.model_digest, storage_url(s, st.storage_uri), None
    if model_dir is not None:
        from edgeloop.core.model_card import ModelCard

        card_digest = ModelCard.load(model_dir).digest()
        if digest and render.normalize_digest(digest) != card_digest:
            raise RenderError(
                f"--digest {digest[:12]}... differs from {model_dir}'s model card ({card_digest[:12]}...)"
            )
        digest = card_digest
    if not digest:
        raise RenderError(
            "pass --digest (ModelCard.digest()) or --model-dir: a deployment must pin its model"
        )
    if storage_uri is None:
        s = _settings(ctx)
        storage_uri = (
            f"https://{s.blob.account}.blob.core.windows.net/" f"{s.blob.models_container}/{model}/{version}"
        )
    if model_only:
        objs = render.render_inference_service(
            model,
            version,
            storage_uri,
            digest,
            image,
            overlay,
            image_tag=image_tag,
            min_replicas=min_replicas,
            max_replicas=max_replicas,
        )
    else:
        objs = render.render_release(
            model,
            version,
            storage_uri,
            digest,
            image,
            overlay,
            image_tag=image_tag,
            min_replicas=min_replicas,
            max_replicas=max_replicas,
        )
    if images is not None:
        from edgeloop.pipelines.image_build import read_index

        objs = render.pin_images(objs, {n: rec["digest"] for n, rec in read_index(images).items()})
    validate_objects(objs)
    if output is None:
        click.echo(_dump(objs), nl=False)
        return
    paths = render.write_gitops(objs, output)
    click.echo(f"wrote {len(paths) - 1} objects and kustomization.yaml to {output}", err=True)


def _load_files(paths: tuple[Path, ...]) -> list[dict[str, Any]]:
    import yaml

    from edgeloop.deploy.render import kustomize_build

    objs: list[dict[str, Any]] = []
    for p in paths:
        if p.is_dir():
            objs += kustomize_build(p)
        else:
            objs += [o for o in yaml.safe_load_all(p.read_text()) if o]
    return objs


@deploy.command("validate")
@click.option("--overlay", "overlays", multiple=True, help="Overlay(s) to check [default: all].")
@click.option(
    "--schemas-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Directory with the upstream CRDs [default: the schemas vendored in the package].",
)
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@user_errors
def validate_cmd(overlays: tuple[str, ...], schemas_dir: Path | None, paths: tuple[Path, ...]) -> None:
    """Render overlays (and any extra YAML files or kustomize dirs in PATHS) and validate every
    object: core kinds against the Kubernetes schema, CRDs against their upstream schemas,
    Prometheus Operator and Flux kinds structurally, plus Pod Security "restricted"."""
    from edgeloop.deploy.errors import ManifestValidationError
    from edgeloop.deploy.render import list_overlays, render_overlay
    from edgeloop.deploy.validate import find_problems

    targets: list[tuple[str, list[dict[str, Any]]]] = []
    if not paths or overlays:
        for name in overlays or tuple(list_overlays()):
            targets.append((f"overlay {name}", render_overlay(name)))
    for p in paths:
        targets.append((str(p), _load_files((p,))))
    problems = []
    for label, objs in targets:
        found = find_problems(objs, schemas_dir=schemas_dir)
        status = "OK" if not found else f"{len(found)} problem(s)"
        click.echo(f"{label}: {len(objs)} objects, {status}")
        problems += found
    if problems:
        raise ManifestValidationError(problems)


@deploy.command("train-job")
@click.argument("name")
@click.argument("train_args", nargs=-1, type=click.UNPROCESSED)
@click.option("--nproc-per-node", type=int, default=1, show_default=True, help="torchrun processes per node.")
@click.option("--num-nodes", type=int, default=1, show_default=True)
@click.option("--gpus-per-node", type=int, default=0, show_default=True)
@click.option("--image", default="ghcr.io/edgeloop/edgeloop-training:0.1.0", show_default=True)
@click.option("--cpu", default="2", show_default=True, help="CPU per node.")
@click.option("--memory", default="8Gi", show_default=True, help="Memory per node.")
@click.option("--namespace", default="edgeloop", show_default=True)
@user_errors
def train_job_cmd(
    name: str,
    train_args: tuple[str, ...],
    nproc_per_node: int,
    num_nodes: int,
    gpus_per_node: int,
    image: str,
    cpu: str,
    memory: str,
    namespace: str,
) -> None:
    """A Kubeflow Trainer v2 TrainJob running `torchrun -m edgeloop.components.train TRAIN_ARGS...`
    (put `--` before the training arguments)."""
    from edgeloop.deploy.render import render_train_job
    from edgeloop.deploy.validate import validate_objects

    job = render_train_job(
        name,
        list(train_args),
        image=image,
        num_nodes=num_nodes,
        nproc_per_node=nproc_per_node,
        gpus_per_node=gpus_per_node,
        cpu=cpu,
        memory=memory,
        namespace=namespace,
    )
    validate_objects([job])
    click.echo(_dump([job]), nl=False)


def _fmt(v: Any) -> str:
    if v is None:
        return "never"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


@click.command("plan")
@click.option("--streams", type=int, required=True, help="Number of camera streams.")
@click.option(
    "--fps", type=float, required=True, help="Frames per second per stream (one request per frame)."
)
@click.option(
    "--overlay", default="edge-cpu", show_default=True, help="Overlay whose autoscaler is simulated."
)
@click.option("--per-replica-ips", type=float, help="Measured frames/s one replica sustains.")
@click.option(
    "--bench-json",
    type=click.Path(path_type=Path),
    help=f"Benchmark results to read the per-replica throughput from [default: {DEFAULT_BENCH}].",
)
@click.option(
    "--bench-key",
    help="Dotted path of the throughput in the benchmark JSON, e.g. saturation.rest_binary_224.images_per_s "
    "[default: the model server's gRPC throughput at saturation].",
)
@click.option(
    "--target-utilization",
    type=float,
    help="Fraction of measured throughput to plan for " "[default: the overlay's CPU target, else 0.7].",
)
@click.option(
    "--pod-start-s",
    type=int,
    help="Seconds from scale-up to a serving pod [default: 120 with a GPU, else 30].",
)
@click.option(
    "--queue-s",
    type=float,
    default=1.0,
    show_default=True,
    help="Seconds of frames a replica may queue before dropping.",
)
@click.option(
    "--concurrency",
    type=float,
    default=1.0,
    show_default=True,
    help="Requests one replica works on at once (scales an in-flight target).",
)
@click.option(
    "--queue-target-s",
    type=float,
    default=0.1,
    show_default=True,
    help="Seconds of work queued per pod that the queue-rows target allows.",
)
@click.option("--burst-factor", type=float, default=3.0, show_default=True)
@click.option("--burst-s", type=int, default=30, show_default=True)
@click.option("--min-replicas", type=int, help="Override the planned replica floor.")
@click.option("--max-replicas", type=int, help="Override the planned replica ceiling.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option(
    "--plot", type=click.Path(dir_okay=False, path_type=Path), help="Write a PNG of load, capacity, replicas."
)
@user_errors
def plan(
    streams: int,
    fps: float,
    overlay: str,
    per_replica_ips: float | None,
    bench_json: Path | None,
    bench_key: str | None,
    target_utilization: float | None,
    pod_start_s: int | None,
    queue_s: float,
    concurrency: float,
    queue_target_s: float,
    burst_factor: float,
    burst_s: int,
    min_replicas: int | None,
    max_replicas: int | None,
    as_json: bool,
    plot: Path | None,
) -> None:
    """Capacity and autoscaling plan for STREAMS x FPS with a burst simulation.

    Turns a measured per-replica throughput into replica counts and autoscaler targets
    (HPA CPU %, queued rows per pod, KEDA served images/s per replica), then replays a
    load trace (steady, a BURST_FACTOR step for BURST_S seconds, back to steady, a ramp to
    2x and a hold) through the overlay's autoscaler: the HPA algorithm (desired =
    ceil(current * metric / target), tolerance 0.1, 15 s sync, stabilization windows and
    scaling policies from the manifest), a pod start delay, metric averaging windows and a
    bounded queue per replica. It reports, per phase, queue growth, frames dropped and the
    time to recover, and the replica floor that absorbs the burst with no drops.

    Assumptions: fluid arrivals evenly spread over ready pods (no stochastic queueing),
    nodes always have room, CPU busy fraction saturates at 100%, the request-rate metric
    counts arrivals. See edgeloop.deploy.plan for the full model.
    """
    from edgeloop.deploy import plan as p
    from edgeloop.deploy.errors import PlanError
    from edgeloop.deploy.render import render_overlay

    if per_replica_ips is not None and bench_json is not None:
        raise PlanError("pass --per-replica-ips or --bench-json, not both")
    source = "--per-replica-ips"
    if per_replica_ips is None:
        bench = bench_json or DEFAULT_BENCH
        per_replica_ips, where = p.per_replica_ips_from_bench(bench, bench_key)
        source = f"{bench}:{where}"
    spec, deployed, isvc = p.autoscaler_from_objects(render_overlay(overlay))
    if target_utilization is None:
        cpu = [m for m in spec.metrics if m.kind is p.MetricKind.CPU]
        target_utilization = cpu[0].target if cpu else 0.7
    if pod_start_s is None:
        res = isvc["spec"]["predictor"]["model"].get("resources") or {}
        gpu = "nvidia.com/gpu" in (res.get("limits") or {})
        pod_start_s = 120 if gpu else 30
    service = p.ServiceModel(
        per_replica_ips, pod_start_s=pod_start_s, queue_s=queue_s, concurrency=concurrency
    )
    result_plan, sim = p.make_plan(
        streams,
        fps,
        service,
        spec,
        target_utilization=target_utilization,
        burst_factor=burst_factor,
        burst_s=burst_s,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        deployed_targets=deployed,
        queue_target_s=queue_target_s,
    )
    if plot is not None:
        p.plot(
            sim,
            plot,
            title=f"{overlay}: {streams} streams x {fps:g} fps, {per_replica_ips:g} frames/s per replica",
        )
    if as_json:
        out = result_plan.to_dict()
        out["overlay"], out["throughput_source"] = overlay, source
        click.echo(json.dumps(out, indent=2))
        return
    r = result_plan
    w = click.echo
    w(f"overlay {overlay} ({r.autoscaler['source']}), throughput from {source}")
    w(f"offered load      {r.streams} streams x {r.fps:g} fps = {r.offered_fps:g} frames/s")
    w(
        f"per replica       {r.per_replica_ips:g} frames/s measured, planned at {r.target_utilization:.0%} "
        f"= {r.per_replica_ips * r.target_utilization:g} frames/s"
    )
    w(
        f"replicas          {r.replicas_no_headroom} at 100% | {r.replicas_steady} steady | "
        f"{r.replicas_burst} for the {burst_factor:g}x burst"
    )
    w(
        f"autoscaler        min {r.min_replicas}, max {r.max_replicas}; metrics {', '.join(r.autoscaler['metrics'])}; "
        f"scale-up window {r.autoscaler['scale_up_stabilization_s']} s, scale-down window "
        f"{r.autoscaler['scale_down_stabilization_s']} s; pod start {r.autoscaler['pod_start_s']} s"
    )
    w(
        f"targets           cpu averageUtilization {r.cpu_target_pct} | edgeloop_serving_queue_rows "
        f"{r.queue_target_rows:g} per pod | served images/s {r.keda_rate_threshold:g} per pod (HPA) or replica (KEDA)"
    )
    if r.deployed_targets:
        w(f"deployed targets  {', '.join(f'{k}={_fmt(v)}' for k, v in r.deployed_targets.items())}")
    w("")
    w(
        f"{'phase':<8}{'t (s)':>11}{'load fps':>10}{'replicas':>9}{'peak queue':>11}{'max wait s':>11}"
        f"{'dropped':>10}{'drop %':>8}{'to capacity s':>14}{'recovery s':>11}"
    )
    for ph in r.phases:
        w(
            f"{ph.name:<8}{f'{ph.start_s}-{ph.end_s}':>11}{ph.offered_fps:>10g}{ph.max_replicas:>9}"
            f"{ph.peak_queue_frames:>11g}{ph.max_queue_delay_s:>11g}{ph.dropped_frames:>10g}{ph.dropped_pct:>8g}"
            f"{_fmt(ph.time_to_capacity_s):>14}{_fmt(ph.recovery_s):>11}"
        )
    w("")
    if r.min_replicas_zero_drop_burst is not None:
        w(
            f"no drops in the {burst_factor:g}x {burst_s} s burst needs minReplicas >= {r.min_replicas_zero_drop_burst} "
            f"(or a longer queue, --queue-s, if latency allows)"
        )
    else:
        w("no replica floor up to the burst size avoids drops: raise --queue-s or the per-replica throughput")
    if plot is not None:
        w(f"plot: {plot}")
    sys.stdout.flush()
