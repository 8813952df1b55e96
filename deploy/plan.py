"""Capacity and autoscaling plan: measured per-replica throughput -> replicas, autoscaler
targets, and a replay of load traces through the Kubernetes HPA algorithm.

Model (deliberately simple, so its numbers can be checked by hand):

- **Fluid load, 1 s steps.** Cameras offer ``streams * fps`` frames/s, each frame one
  request. Each *ready* replica serves up to ``per_replica_ips`` frames/s (measured, e.g.
  by the serving benchmark); the Service spreads load evenly over ready pods.
- **Bounded queue.** Frames that cannot be served wait; each ready replica holds at most
  ``queue_s * per_replica_ips`` of them (a frame older than ``queue_s`` is useless for live
  video). Beyond that, frames are **dropped**.
- **Pods start slowly.** A new pod serves only ``pod_start_s`` after the HPA asks for it
  (scheduling, image pull, model download, ONNX Runtime / TensorRT session). Removed pods
  stop at once.
- **Metrics lag.** Each metric is the mean of its per-second samples over ``window_s``
  (metrics-server for CPU, Prometheus scrape/rate windows for custom metrics):
  ``cpu`` = busy fraction of ready pods (saturates at 1.0: an overloaded pod reads 100%);
  ``queue`` = rows waiting per ready pod (``edgeloop_serving_queue_rows``; 0 until overload);
  ``inflight`` = per-pod requests in service + queued (``busy * concurrency + queue/ready``);
  ``pod_rate`` = images served per second per ready pod (saturates at ``per_replica_ips``);
  ``rate`` = images *served* per second over all pods (``edgeloop_serving_images_total``:
  completions, so it cannot exceed capacity); ``queue_total`` = rows queued over all pods.
- **HPA algorithm** (kube-controller-manager, every ``sync_period_s`` = 15 s): per metric
  ``ratio = metric / target``; no change while ``|ratio - 1| <= tolerance`` (0.1); else
  ``desired = ceil(ratio * ready)``. When scaling up with pods not yet ready, those count
  as 0 (``desired = ceil(sum / target)``, with the tolerance re-checked). External
  ``AverageValue`` metrics (KEDA): ``desired = ceil(total / target)``. The largest
  recommendation over metrics wins; then the behaviour: stabilization windows (scale-up
  takes the minimum, scale-down the maximum recommendation over the window), rate policies
  per period (``Pods``/``Percent``, ``selectPolicy``), and ``[min, max]`` replicas.

Not modelled: per-request latency distributions (no stochastic queueing: camera frames
arrive evenly), node autoscaling (pods are assumed schedulable), CPU used outside requests,
pod readiness flapping, HPA's missing-metric rules for scale-down.
"""

from __future__ import annotations

import json
import math
import re
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from edgeloop.deploy.errors import PlanError


class MetricKind(str, Enum):
    CPU = "cpu"  # Resource cpu, Utilization (per pod, saturates at 1.0)
    QUEUE = "queue"  # Pods metric edgeloop_serving_queue_rows, AverageValue (per pod)
    INFLIGHT = "inflight"  # Pods metric of requests in service + queued, AverageValue (per pod)
    POD_RATE = "pod_rate"  # Pods metric edgeloop_serving_images_per_second, AverageValue (per pod)
    RATE = "rate"  # External (KEDA prometheus): images served per second, summed, AverageValue
    QUEUE_TOTAL = "queue_total"  # External (KEDA prometheus): queued rows summed over pods, AverageValue


@dataclass(frozen=True)
class ScalingPolicy:
    type: str  # "Pods" | "Percent"
    value: int
    period_s: int


@dataclass(frozen=True)
class ScalingRules:
    stabilization_s: int
    policies: tuple[ScalingPolicy, ...]
    select: str = "Max"  # "Max" | "Min" | "Disabled"


@dataclass(frozen=True)
class Behavior:
    scale_up: ScalingRules = ScalingRules(
        0, (ScalingPolicy("Percent", 100, 15), ScalingPolicy("Pods", 4, 15))
    )
    scale_down: ScalingRules = ScalingRules(300, (ScalingPolicy("Percent", 100, 15),))


@dataclass(frozen=True)
class MetricSpec:
    kind: MetricKind
    target: float  # cpu: utilization fraction; others: value per pod / per replica
    window_s: int = 15


@dataclass(frozen=True)
class AutoscalerSpec:
    metrics: tuple[MetricSpec, ...]
    min_replicas: int
    max_replicas: int
    behavior: Behavior = field(default_factory=Behavior)
    sync_period_s: int = 15
    tolerance: float = 0.1
    source: str = "hpa"


@dataclass(frozen=True)
class ServiceModel:
    per_replica_ips: float
    pod_start_s: int = 30
    queue_s: float = 1.0
    concurrency: float = 1.0


@dataclass(frozen=True)
class Phase:
    name: str
    duration_s: int
    start_rate: float
    end_rate: float


def standard_trace(
    rate: float,
    *,
    burst_factor: float = 3.0,
    burst_s: int = 30,
    steady_s: int = 120,
    settle_s: int = 420,
    ramp_factor: float = 2.0,
    ramp_s: int = 300,
    hold_s: int = 120,
) -> list[Phase]:
    """Steady load, a ``burst_factor`` step for ``burst_s``, back to steady long enough for
    scale-down, then a linear ramp to ``ramp_factor`` and a hold."""
    return [
        Phase("steady", steady_s, rate, rate),
        Phase("burst", burst_s, rate * burst_factor, rate * burst_factor),
        Phase("settle", settle_s, rate, rate),
        Phase("ramp", ramp_s, rate, rate * ramp_factor),
        Phase("hold", hold_s, rate * ramp_factor, rate * ramp_factor),
    ]


def trace_rates(phases: list[Phase]) -> list[tuple[str, float]]:
    out = []
    for p in phases:
        for i in range(p.duration_s):
            frac = i / max(p.duration_s - 1, 1)
            out.append((p.name, p.start_rate + (p.end_rate - p.start_rate) * frac))
    return out


# -- the HPA controller ------------------------------------------------------------------


def metric_recommendation(m: MetricSpec, value: float, current: int, ready: int, tolerance: float) -> int:
    """Replicas one metric asks for (kube-controller-manager's replica calculator)."""
    if m.kind in (MetricKind.RATE, MetricKind.QUEUE_TOTAL):  # External, AverageValue: total / replicas
        ratio = value / (m.target * current) if current else math.inf
        return current if abs(1.0 - ratio) <= tolerance else math.ceil(value / m.target)
    if ready == 0:
        return current
    ratio = value / m.target
    unready = current - ready
    if unready > 0 and ratio > 1.0:
        new_ratio = value * ready / (m.target * current)  # not-ready pods count as 0
        if abs(1.0 - new_ratio) <= tolerance or new_ratio < 1.0:
            return current
        return math.ceil(new_ratio * current)
    if abs(1.0 - ratio) <= tolerance:
        return current
    return math.ceil(ratio * ready)


class HpaController:
    """Stabilization windows and scaling policies (``normalizeDesiredReplicasWithBehaviors``)."""

    def __init__(self, spec: AutoscalerSpec):
        self.spec = spec
        self.recommendations: list[tuple[float, int]] = []
        self.up_events: list[tuple[float, int]] = []
        self.down_events: list[tuple[float, int]] = []

    @staticmethod
    def _changed(events: list[tuple[float, int]], now: float, period: int) -> int:
        return sum(n for t, n in events if t > now - period)

    def _stabilize(self, now: float, current: int, desired: int) -> int:
        b = self.spec.behavior
        up, down = desired, desired
        for t, rec in self.recommendations:
            if t > now - b.scale_up.stabilization_s:
                up = min(up, rec)
            if t > now - b.scale_down.stabilization_s:
                down = max(down, rec)
        self.recommendations.append((now, desired))
        keep = max(b.scale_up.stabilization_s, b.scale_down.stabilization_s)
        self.recommendations = [(t, r) for t, r in self.recommendations if t > now - keep]
        rec = current
        rec = max(rec, up)
        rec = min(rec, down)
        return rec

    def _limit(self, now: float, current: int, desired: int) -> int:
        s, b = self.spec, self.spec.behavior
        if desired > current:
            rules = b.scale_up
            if rules.select == "Disabled":
                limit = current
            else:
                proposals = []
                for p in rules.policies:
                    start = (
                        current
                        - self._changed(self.up_events, now, p.period_s)
                        + self._changed(self.down_events, now, p.period_s)
                    )
                    proposals.append(
                        start + p.value if p.type == "Pods" else math.ceil(start * (1 + p.value / 100))
                    )
                limit = max(proposals) if rules.select == "Max" else min(proposals)
            limit = max(limit, current)
            return min(desired, s.max_replicas, limit)
        if desired < current:
            rules = b.scale_down
            if rules.select == "Disabled":
                limit = current
            else:
                proposals = []
                for p in rules.policies:
                    start = (
                        current
                        - self._changed(self.up_events, now, p.period_s)
                        + self._changed(self.down_events, now, p.period_s)
                    )
                    proposals.append(
                        start - p.value if p.type == "Pods" else int(start * (1 - p.value / 100))
                    )
                limit = min(proposals) if rules.select == "Max" else max(proposals)
            limit = min(limit, current)
            return max(desired, s.min_replicas, limit)
        return desired

    def step(self, now: float, current: int, ready: int, values: dict[MetricKind, float]) -> int:
        """One sync: the new replica count from the current one and the observed metric values."""
        s = self.spec
        raw = max(metric_recommendation(m, values[m.kind], current, ready, s.tolerance) for m in s.metrics)
        raw = min(max(raw, s.min_replicas), s.max_replicas)
        desired = self._limit(now, current, self._stabilize(now, current, raw))
        if desired > current:
            self.up_events.append((now, desired - current))
        elif desired < current:
            self.down_events.append((now, current - desired))
        return desired


# -- simulation --------------------------------------------------------------------------


@dataclass
class PhaseReport:
    name: str
    start_s: int
    end_s: int
    offered_fps: float
    max_replicas: int
    peak_queue_frames: float
    max_queue_delay_s: float
    dropped_frames: float
    dropped_pct: float
    time_to_capacity_s: float | None
    recovery_s: float | None


@dataclass
class SimulationResult:
    t: list[int]
    phase: list[str]
    offered_fps: list[float]
    capacity_fps: list[float]
    replicas: list[int]
    ready: list[int]
    queue: list[float]
    dropped: list[float]
    phases: list[PhaseReport]

    @property
    def total_dropped(self) -> float:
        return sum(self.dropped)


def simulate(
    phases: list[Phase],
    service: ServiceModel,
    scaler: AutoscalerSpec,
    initial_replicas: int | None = None,
    recovery_horizon_s: int = 300,
) -> SimulationResult:
    """Replay ``phases`` through the HPA and a bounded queue; see the module docstring."""
    if service.per_replica_ips <= 0:
        raise PlanError("per-replica throughput must be > 0")
    mu = service.per_replica_ips
    n0 = initial_replicas if initial_replicas is not None else scaler.min_replicas
    pods: list[float] = [0.0] * n0  # ready-at times; initial pods are ready
    hpa = HpaController(scaler)
    windows: dict[MetricKind, deque[float]] = {
        m.kind: deque(maxlen=max(1, m.window_s)) for m in scaler.metrics
    }
    q = 0.0
    res = SimulationResult([], [], [], [], [], [], [], [], [])
    for t, (pname, rate) in enumerate(trace_rates(phases)):
        if t > 0 and t % scaler.sync_period_s == 0:
            ready_now = sum(1 for r in pods if r <= t)
            values = {k: (sum(w) / len(w) if w else 0.0) for k, w in windows.items()}
            desired = hpa.step(float(t), len(pods), ready_now, values)
            if desired > len(pods):
                pods += [t + service.pod_start_s] * (desired - len(pods))
            elif desired < len(pods):
                pods.sort()  # remove not-ready, then newest, pods first
                pods = pods[:desired]
        ready = sum(1 for r in pods if r <= t)
        capacity = ready * mu
        served = min(q + rate, capacity)
        q = q + rate - served
        cap_q = ready * mu * service.queue_s
        drop = max(0.0, q - cap_q)
        q -= drop
        busy = served / capacity if capacity else 0.0
        for k, w in windows.items():
            if k is MetricKind.RATE:
                w.append(served)
            elif k is MetricKind.QUEUE_TOTAL:
                w.append(q)
            elif ready:  # per-pod metrics come from ready pods only
                per_pod = {
                    MetricKind.CPU: busy,
                    MetricKind.QUEUE: q / ready,
                    MetricKind.POD_RATE: served / ready,
                    MetricKind.INFLIGHT: busy * service.concurrency + q / ready,
                }
                w.append(per_pod[k])
        res.t.append(t)
        res.phase.append(pname)
        res.offered_fps.append(rate)
        res.capacity_fps.append(capacity)
        res.replicas.append(len(pods))
        res.ready.append(ready)
        res.queue.append(q)
        res.dropped.append(drop)

    start = 0
    for idx, p in enumerate(phases):
        end = start + p.duration_s
        sl = range(start, end)
        offered = sum(res.offered_fps[i] for i in sl)
        dropped = sum(res.dropped[i] for i in sl)
        # A phase's aftermath counts towards it while the load that follows is no higher.
        nxt = phases[idx + 1] if idx + 1 < len(phases) else None
        calmer = nxt is not None and max(nxt.start_rate, nxt.end_rate) <= max(p.start_rate, p.end_rate)
        tail = min(recovery_horizon_s, nxt.duration_s) if (calmer and nxt is not None) else 0
        horizon = range(start, min(len(res.t), end + tail))
        ttc = next((i - start for i in sl if res.capacity_fps[i] >= res.offered_fps[i]), None)
        troubled = [i for i in horizon if res.queue[i] >= 1.0 or res.dropped[i] > 0]
        recovery: float | None = float(troubled[-1] + 1 - start) if troubled else 0.0
        if troubled and troubled[-1] == horizon[-1]:
            recovery = None  # still queueing or dropping at the end of the window
        res.phases.append(
            PhaseReport(
                name=p.name,
                start_s=start,
                end_s=end,
                offered_fps=max(p.start_rate, p.end_rate),
                max_replicas=max(res.replicas[i] for i in sl),
                peak_queue_frames=round(max(res.queue[i] for i in horizon), 1),
                max_queue_delay_s=round(
                    max(
                        (res.queue[i] / res.capacity_fps[i]) if res.capacity_fps[i] else 0.0 for i in horizon
                    ),
                    3,
                ),
                dropped_frames=round(dropped, 1),
                dropped_pct=round(100 * dropped / offered, 2) if offered else 0.0,
                time_to_capacity_s=ttc,
                recovery_s=recovery,
            )
        )
        start = end
    return res


# -- plan ----------------------------------------------------------------------------------


@dataclass
class CapacityPlan:
    streams: int
    fps: float
    offered_fps: float
    per_replica_ips: float
    target_utilization: float
    replicas_no_headroom: int
    replicas_steady: int
    replicas_burst: int
    min_replicas: int
    max_replicas: int
    cpu_target_pct: int
    queue_target_rows: float
    inflight_target: float
    keda_rate_threshold: float
    min_replicas_zero_drop_burst: int | None
    autoscaler: dict[str, Any]
    deployed_targets: dict[str, Any]
    phases: list[PhaseReport]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_plan(
    streams: int,
    fps: float,
    service: ServiceModel,
    scaler: AutoscalerSpec,
    *,
    target_utilization: float = 0.7,
    burst_factor: float = 3.0,
    burst_s: int = 30,
    min_replicas: int | None = None,
    max_replicas: int | None = None,
    deployed_targets: dict[str, Any] | None = None,
    queue_target_s: float = 0.1,
) -> tuple[CapacityPlan, SimulationResult]:
    """Size replicas and targets for ``streams * fps`` and simulate the standard trace with them.

    Targets: CPU at ``target_utilization``; queued rows per pod = ``queue_target_s`` of work
    (``per_replica_ips * queue_target_s``, at least 1); in-flight per pod = utilization x
    concurrency; KEDA served images/s per replica = ``per_replica_ips * target_utilization``.
    """
    if streams < 1 or fps <= 0:
        raise PlanError("--streams must be >= 1 and --fps > 0")
    if not 0 < target_utilization <= 1:
        raise PlanError("target utilization must be in (0, 1]")
    mu, u = service.per_replica_ips, target_utilization
    lam = streams * fps
    phases = standard_trace(lam, burst_factor=burst_factor, burst_s=burst_s)
    peak = max(max(p.start_rate, p.end_rate) for p in phases)
    steady = max(1, math.ceil(lam / (mu * u)))
    burst = max(1, math.ceil(lam * burst_factor / (mu * u)))
    lo = min_replicas if min_replicas is not None else steady
    hi = max_replicas if max_replicas is not None else max(lo, math.ceil(peak / (mu * u)))
    queue_rows = max(1.0, round(mu * queue_target_s, 1))
    targets = {
        MetricKind.CPU: u,
        MetricKind.QUEUE: queue_rows,
        MetricKind.QUEUE_TOTAL: queue_rows,
        MetricKind.INFLIGHT: round(u * service.concurrency, 3),
        MetricKind.RATE: round(mu * u, 2),
        MetricKind.POD_RATE: round(mu * u, 2),
    }
    metrics = tuple(replace(m, target=targets[m.kind]) for m in scaler.metrics)
    tuned = replace(scaler, metrics=metrics, min_replicas=lo, max_replicas=hi)
    result = simulate(phases, service, tuned)

    zero_drop = None
    for n in range(lo, max(hi, burst) + 1):
        trial = replace(tuned, min_replicas=n, max_replicas=max(hi, n))
        r = simulate(phases[:3], service, trial)
        if sum(r.dropped) == 0:
            zero_drop = n
            break
    plan = CapacityPlan(
        streams=streams,
        fps=fps,
        offered_fps=lam,
        per_replica_ips=mu,
        target_utilization=u,
        replicas_no_headroom=max(1, math.ceil(lam / mu)),
        replicas_steady=steady,
        replicas_burst=burst,
        min_replicas=lo,
        max_replicas=hi,
        cpu_target_pct=round(100 * u),
        queue_target_rows=queue_rows,
        inflight_target=targets[MetricKind.INFLIGHT],
        keda_rate_threshold=targets[MetricKind.RATE],
        min_replicas_zero_drop_burst=zero_drop,
        autoscaler={
            "source": tuned.source,
            "metrics": [f"{m.kind.value}>{m.target}/{m.window_s}s" for m in metrics],
            "scale_up_stabilization_s": tuned.behavior.scale_up.stabilization_s,
            "scale_down_stabilization_s": tuned.behavior.scale_down.stabilization_s,
            "pod_start_s": service.pod_start_s,
            "queue_s": service.queue_s,
        },
        deployed_targets=deployed_targets or {},
        phases=result.phases,
    )
    return plan, result


# -- inputs from manifests and benchmarks -------------------------------------------------

_THROUGHPUT_KEYS = (
    "per_replica_ips",
    "throughput_ips",
    "images_per_second",
    "ips",
    "requests_per_second",
    "rps",
    "throughput",
)


def per_replica_ips_from_bench(path: Path, key: str | None = None) -> tuple[float, str]:
    """Per-replica throughput from a benchmark JSON, and where in the file it was found.

    In order: the dotted ``key`` if given (``saturation.grpc_224.images_per_s``); a top-level
    ``per_replica_ips``; the serving benchmark's (``benchmarks/serving_bench.py``) model-server
    throughput at saturation, gRPC at the largest input size measured (what the stream
    processors use), never the bare ONNX Runtime numbers; else the largest number under a
    known throughput key anywhere in the file.
    """
    path = Path(path)
    if not path.exists():
        raise PlanError(
            f"benchmark file {path} not found: run the serving benchmark or pass --per-replica-ips"
        )
    data = json.loads(path.read_text())
    if key:
        node: Any = data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise PlanError(f"{path} has no {key!r} (stopped at {part!r})")
            node = node[part]
        if not isinstance(node, int | float) or isinstance(node, bool) or node <= 0:
            raise PlanError(f"{path}: {key} is {node!r}, not a positive throughput")
        return float(node), key
    if isinstance(data, dict) and isinstance(data.get("per_replica_ips"), int | float):
        return float(data["per_replica_ips"]), "per_replica_ips"
    sat = data.get("saturation") if isinstance(data, dict) else None
    if isinstance(sat, dict):
        measured = {
            k: v["images_per_s"] for k, v in sat.items() if isinstance(v, dict) and v.get("images_per_s")
        }
        sizes = {k: int(m.group(1)) for k in measured if (m := re.fullmatch(r"grpc_(\d+)", k))}
        grpc = sorted(sizes, key=sizes.__getitem__)
        pick = grpc[-1] if grpc else (max(measured, key=measured.__getitem__) if measured else None)
        if pick is not None:
            return float(measured[pick]), f"saturation.{pick}.images_per_s"
    found: list[tuple[float, str]] = []

    def walk(x: Any, where: str) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                if k in _THROUGHPUT_KEYS and isinstance(v, int | float) and not isinstance(v, bool) and v > 0:
                    found.append((float(v), f"{where}.{k}".lstrip(".")))
                walk(v, f"{where}.{k}")
        elif isinstance(x, list):
            for i, v in enumerate(x):
                walk(v, f"{where}[{i}]")

    walk(data, "")
    if not found:
        raise PlanError(
            f"no throughput in {path} (looked for {', '.join(_THROUGHPUT_KEYS)}); pass --per-replica-ips"
        )
    return max(found)


def parse_quantity(q: Any) -> float:
    """Kubernetes quantity (``700m``, ``2``, ``1.5``) as a float; enough for autoscaler targets."""
    s = str(q).strip()
    if s.endswith("m"):
        return float(s[:-1]) / 1000
    suffixes = {"k": 1e3, "M": 1e6, "G": 1e9}
    if s and s[-1] in suffixes:
        return float(s[:-1]) * suffixes[s[-1]]
    return float(s)


def _rules(d: dict[str, Any] | None, default: ScalingRules) -> ScalingRules:
    if not d:
        return default
    pols = tuple(
        ScalingPolicy(p["type"], int(p["value"]), int(p["periodSeconds"])) for p in d.get("policies") or []
    )
    return ScalingRules(
        int(d.get("stabilizationWindowSeconds", default.stabilization_s)),
        pols or default.policies,
        d.get("selectPolicy", default.select),
    )


def _behavior(d: dict[str, Any] | None) -> Behavior:
    base = Behavior()
    d = d or {}
    return Behavior(_rules(d.get("scaleUp"), base.scale_up), _rules(d.get("scaleDown"), base.scale_down))


def autoscaler_from_objects(
    objs: list[dict[str, Any]],
) -> tuple[AutoscalerSpec, dict[str, Any], dict[str, Any]]:
    """The autoscaler an overlay deploys (HPA, KEDA ScaledObject or KServe's own HPA), the
    targets it deploys, and the InferenceService template (for resources)."""
    from edgeloop.deploy.render import is_template

    tmpl = [o for o in objs if is_template(o)]
    isvc = next((o for o in tmpl if o["kind"] == "InferenceService"), None)
    if isvc is None:
        raise PlanError("the overlay has no InferenceService template")
    pred = isvc["spec"]["predictor"]
    lo, hi = int(pred.get("minReplicas", 1)), int(pred.get("maxReplicas", 1))
    metrics: list[MetricSpec] = []
    deployed: dict[str, Any] = {}
    hpa = next((o for o in tmpl if o["kind"] == "HorizontalPodAutoscaler"), None)
    so = next((o for o in tmpl if o["kind"] == "ScaledObject"), None)
    if hpa is not None:
        for m in hpa["spec"].get("metrics") or []:
            if m["type"] == "Resource" and m["resource"]["name"] == "cpu":
                metrics.append(
                    MetricSpec(MetricKind.CPU, m["resource"]["target"]["averageUtilization"] / 100, 30)
                )
                deployed["cpu_target_pct"] = m["resource"]["target"]["averageUtilization"]
            elif m["type"] == "Pods":
                value = parse_quantity(m["pods"]["target"]["averageValue"])
                if "queue" in m["pods"]["metric"]["name"]:
                    metrics.append(MetricSpec(MetricKind.QUEUE, value, 15))
                    deployed["queue_target_rows"] = value
                elif m["pods"]["metric"]["name"].endswith("per_second"):
                    metrics.append(MetricSpec(MetricKind.POD_RATE, value, 60))
                    deployed["rate_target_per_pod"] = value
                else:
                    metrics.append(MetricSpec(MetricKind.INFLIGHT, value, 15))
                    deployed["inflight_target"] = value
        spec = AutoscalerSpec(tuple(metrics), lo, hi, _behavior(hpa["spec"].get("behavior")), source="hpa")
    elif so is not None:
        s = so["spec"]
        for trig in s.get("triggers") or []:
            if trig["type"] == "prometheus":
                value = parse_quantity(trig["metadata"]["threshold"])
                if "rate(" in trig["metadata"]["query"]:
                    metrics.append(MetricSpec(MetricKind.RATE, value, 60))
                    deployed["keda_rate_threshold"] = value
                else:
                    metrics.append(MetricSpec(MetricKind.QUEUE_TOTAL, value, 15))
                    deployed["queue_target_rows"] = value
            elif trig["type"] == "cpu":
                metrics.append(MetricSpec(MetricKind.CPU, float(trig["metadata"]["value"]) / 100, 30))
        beh = ((s.get("advanced") or {}).get("horizontalPodAutoscalerConfig") or {}).get("behavior")
        spec = AutoscalerSpec(
            tuple(metrics),
            lo,
            hi,
            _behavior(beh),
            sync_period_s=int(s.get("pollingInterval", 15)),
            source="keda",
        )
    else:
        auto = pred.get("autoScaling") or {}
        for m in auto.get("metrics") or []:
            if m.get("type") == "Resource" and m["resource"]["name"] == "cpu":
                metrics.append(
                    MetricSpec(MetricKind.CPU, m["resource"]["target"]["averageUtilization"] / 100, 30)
                )
                deployed["cpu_target_pct"] = m["resource"]["target"]["averageUtilization"]
        if not metrics and pred.get("scaleMetric", "cpu") == "cpu":
            metrics.append(MetricSpec(MetricKind.CPU, pred.get("scaleTarget", 80) / 100, 30))
        spec = AutoscalerSpec(tuple(metrics), lo, hi, _behavior(auto.get("behavior")), source="kserve-hpa")
    if not spec.metrics:
        raise PlanError(
            "the overlay's autoscaler uses no metric the simulator knows (cpu, inflight, request rate)"
        )
    return spec, deployed, isvc


def plot(result: SimulationResult, path: Path, title: str = "") -> Path:
    """Load vs capacity vs replicas, and queue/drops, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True, height_ratios=[2, 1])
    ax1.plot(result.t, result.offered_fps, label="offered (frames/s)", color="tab:red")
    ax1.plot(result.t, result.capacity_fps, label="ready capacity (frames/s)", color="tab:blue")
    ax1.set_ylabel("frames/s")
    ax1r = ax1.twinx()
    ax1r.step(result.t, result.replicas, where="post", label="replicas (spec)", color="tab:gray", alpha=0.7)
    ax1r.set_ylabel("replicas")
    lines = ax1.get_legend_handles_labels()
    lines2 = ax1r.get_legend_handles_labels()
    ax1.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper left")
    ax2.plot(result.t, result.queue, label="queued frames", color="tab:orange")
    ax2.bar(result.t, result.dropped, label="dropped frames/s", color="black", width=1.0)
    ax2.set_xlabel("time (s)")
    ax2.legend(loc="upper left")
    if title:
        ax1.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
