"""The HPA simulator against hand-computed steps, and the `edgeloop plan` command."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgeloop.deploy.plan import (
    AutoscalerSpec,
    Behavior,
    HpaController,
    MetricKind,
    MetricSpec,
    Phase,
    ScalingPolicy,
    ScalingRules,
    ServiceModel,
    metric_recommendation,
    per_replica_ips_from_bench,
    simulate,
)

CPU = MetricSpec(MetricKind.CPU, 0.7, 30)


def test_replica_calculator_by_hand():
    # ceil(4 * 0.9 / 0.7) = ceil(5.14) = 6
    assert metric_recommendation(CPU, 0.9, current=4, ready=4, tolerance=0.1) == 6
    # 0.75 / 0.7 = 1.07: inside the 10% tolerance, no change
    assert metric_recommendation(CPU, 0.75, current=4, ready=4, tolerance=0.1) == 4
    # scale down: ceil(4 * 0.3 / 0.7) = ceil(1.71) = 2
    assert metric_recommendation(CPU, 0.3, current=4, ready=4, tolerance=0.1) == 2
    # 2 of 6 pods still starting count as 0: 0.9 * 4 / (0.7 * 6) = 0.857 < 1 -> hold at 6
    assert metric_recommendation(CPU, 0.9, current=6, ready=4, tolerance=0.1) == 6
    # ... but a larger backlog still scales: 3.0 * 4 / (0.7 * 6) = 2.857 -> ceil(2.857 * 6) = ceil(17.1) = 18
    assert (
        metric_recommendation(MetricSpec(MetricKind.INFLIGHT, 0.7), 3.0, current=6, ready=4, tolerance=0.1)
        == 18
    )
    # KEDA external AverageValue: total 300 req/s, 42 per replica -> ceil(7.14) = 8
    assert metric_recommendation(MetricSpec(MetricKind.RATE, 42), 300, current=5, ready=5, tolerance=0.1) == 8


def test_scale_up_policies_and_scale_down_stabilization_by_hand():
    spec = AutoscalerSpec(
        (CPU,),
        min_replicas=1,
        max_replicas=50,
        behavior=Behavior(
            scale_up=ScalingRules(
                0, (ScalingPolicy("Percent", 100, 15), ScalingPolicy("Pods", 4, 15)), "Max"
            ),
            scale_down=ScalingRules(300, (ScalingPolicy("Pods", 1, 60),), "Min"),
        ),
    )
    hpa = HpaController(spec)
    # 2 -> wants 20; limit max(2 + 4, ceil(2 * 2)) = 6
    assert hpa.step(15, 2, 2, {MetricKind.CPU: 7.0}) == 6
    # the event at t=15 is outside (t - 15, t]: limit max(6 + 4, 12) = 12
    assert hpa.step(30, 6, 6, {MetricKind.CPU: 2.34}) == 12
    # load gone: 12 * 0.1 / 0.7 -> 2, but the 300 s window holds the max recommendation (20)... capped at current
    assert hpa.step(45, 12, 12, {MetricKind.CPU: 0.1}) == 12
    # after the window (t=30's rec of 21 expires at 330) scale down by at most 1 pod per 60 s
    assert hpa.step(331, 12, 12, {MetricKind.CPU: 0.1}) == 11
    assert hpa.step(346, 11, 11, {MetricKind.CPU: 0.1}) == 11
    assert hpa.step(392, 11, 11, {MetricKind.CPU: 0.1}) == 10


def _burst_case(queue_s: float):
    """1 replica of 10 frames/s; 10 fps for 15 s, 30 fps for 30 s, back to 10 fps; pods start in 20 s."""
    phases = [Phase("steady", 15, 10, 10), Phase("burst", 30, 30, 30), Phase("settle", 60, 10, 10)]
    scaler = AutoscalerSpec(
        (MetricSpec(MetricKind.INFLIGHT, 1.0, window_s=1),), min_replicas=1, max_replicas=10
    )
    return simulate(phases, ServiceModel(10, pod_start_s=20, queue_s=queue_s), scaler)


def test_burst_simulation_matches_hand_computed_steps():
    r = _burst_case(queue_s=100)
    # t=15 sync sees inflight 1.0 (= target): no change. The queue grows 20 frames/s from t=15.
    assert r.replicas[29] == 1 and r.queue[29] == pytest.approx(300)
    # t=30 sync: inflight 301 -> wants 301, capped at max 10, limited to max(1 + 4, 2 * 1) = 5
    assert r.replicas[30] == 5 and r.ready[30] == 1
    # t=45: 4 pods still starting count as 0: ceil(601 / 1.0) capped at 10; limit max(5 + 4, 10) = 10
    assert r.replicas[45] == 10
    assert r.queue[44] == pytest.approx(600)
    # pods from t=30 serve at t=50: 50 frames/s drains 40 frames/s, empty after t=64
    assert r.ready[49] == 1 and r.ready[50] == 5 and r.ready[65] == 10
    assert r.queue[63] == pytest.approx(40) and r.queue[64] == pytest.approx(0)
    burst = r.phases[1]
    assert burst.dropped_frames == 0 and burst.time_to_capacity_s is None
    assert burst.recovery_s == 49  # last queued frame at t=63, burst started at t=15
    assert burst.peak_queue_frames == pytest.approx(600)


def test_bounded_queue_drops_by_hand():
    r = _burst_case(queue_s=5)  # 1 ready replica holds 50 frames
    # q: 20, 40, then 60 -> 10 dropped, then 20 dropped each second until t=44
    assert r.dropped[16] == 0 and r.dropped[17] == pytest.approx(10) and r.dropped[18] == pytest.approx(20)
    assert r.phases[1].dropped_frames == pytest.approx(10 + 20 * 27)
    assert r.phases[0].dropped_frames == 0 and r.phases[2].dropped_frames == 0


def test_keda_completion_rate_alone_cannot_see_a_backlog():
    # 1 replica serving 10/s under 30/s; new pods take 100 s. Served rate saturates at 10.
    phases = [Phase("overload", 40, 30, 30)]
    service = ServiceModel(10, pod_start_s=100, queue_s=1000)
    rate = MetricSpec(MetricKind.RATE, 7.0, window_s=1)  # 10/s at 70%
    only_rate = simulate(phases, service, AutoscalerSpec((rate,), 1, 10, source="keda"))
    # t=15: ceil(10 / 7) = 2; t=30: 10 / (7 * 2) = 0.71, ceil(10 / 7) = 2 again: stuck at 2
    assert only_rate.replicas[15] == 2 and only_rate.replicas[39] == 2
    queue = MetricSpec(MetricKind.QUEUE_TOTAL, 5.0, window_s=1)
    both = simulate(phases, service, AutoscalerSpec((rate, queue), 1, 10, source="keda"))
    # t=15: 300 rows queued (20/s for 15 s) -> ceil(300 / 5) = 60 -> max 10 -> limit max(1 + 4, 2 * 1)
    assert both.queue[14] == pytest.approx(300) and both.replicas[15] == 5
    assert both.replicas[30] == 10


def test_queue_metric_scales_only_on_backlog():
    q = MetricSpec(MetricKind.QUEUE, 6.0)
    assert (
        metric_recommendation(q, 0.0, current=8, ready=8, tolerance=0.1) == 0
    )  # HPA clamps to min / other metrics
    assert metric_recommendation(q, 60.0, current=8, ready=8, tolerance=0.1) == 80


def test_bench_json_shapes(tmp_path):
    f = tmp_path / "serving.json"
    f.write_text(json.dumps({"per_replica_ips": 55.5}))
    assert per_replica_ips_from_bench(f) == (55.5, "per_replica_ips")
    f.write_text(
        json.dumps({"results": [{"protocol": "rest", "throughput_ips": 48}, {"protocol": "grpc", "rps": 61}]})
    )
    assert per_replica_ips_from_bench(f) == (61.0, "results[1].rps")
    bench = {
        "bare_ort_images_per_s": {"224_batch16": 83.0},
        "saturation": {
            "grpc_64": {"images_per_s": 244.5},
            "grpc_224": {"images_per_s": 45.0},
            "rest_binary_224": {"images_per_s": 35.9},
        },
    }
    f.write_text(json.dumps(bench))  # the shape benchmarks/serving_bench.py writes
    assert per_replica_ips_from_bench(f) == (45.0, "saturation.grpc_224.images_per_s")
    key = "saturation.rest_binary_224.images_per_s"
    assert per_replica_ips_from_bench(f, key) == (35.9, key)
    f.write_text(json.dumps({"nothing": 1}))
    from edgeloop.deploy.errors import PlanError

    with pytest.raises(PlanError, match="per-replica-ips"):
        per_replica_ips_from_bench(f)


# -- the command ------------------------------------------------------------------------


@pytest.fixture
def runner():
    return CliRunner()


def test_plan_command_reports_burst_drops_and_recovery(runner, rendered_overlays, tmp_path):
    from edgeloop.deploy.cli import plan

    png = tmp_path / "plan.png"
    res = runner.invoke(
        plan, ["--streams", "10", "--fps", "30", "--per-replica-ips", "60", "--plot", str(png)]
    )
    assert res.exit_code == 0, res.output
    assert "300 frames/s" in res.output
    burst = next(line for line in res.output.splitlines() if line.startswith("burst"))
    assert "never" in burst  # 30 s pod start: capacity never catches up inside a 30 s burst
    assert "minReplicas >=" in res.output
    assert png.exists() and png.stat().st_size > 10_000

    res = runner.invoke(plan, ["--streams", "10", "--fps", "30", "--per-replica-ips", "60", "--json"])
    data = json.loads(res.output)
    b = next(p for p in data["phases"] if p["name"] == "burst")
    assert b["dropped_frames"] > 0 and b["recovery_s"] > 0
    assert data["replicas_steady"] == 8  # ceil(300 / (60 * 0.7))
    assert data["keda_rate_threshold"] == 42.0 and data["cpu_target_pct"] == 70
    assert data["queue_target_rows"] == 6.0  # 60 frames/s x 0.1 s
    assert data["deployed_targets"] == {"cpu_target_pct": 70, "queue_target_rows": 8.0}
    assert data["min_replicas_zero_drop_burst"] > data["replicas_steady"]


def test_plan_command_errors(runner, tmp_path):
    from edgeloop.deploy.cli import plan

    res = runner.invoke(
        plan, ["--streams", "2", "--fps", "10", "--bench-json", str(tmp_path / "missing.json")]
    )
    assert res.exit_code == 2 and "not found" in res.output
    res = runner.invoke(
        plan, ["--streams", "2", "--fps", "10", "--per-replica-ips", "5", "--overlay", "nope"]
    )
    assert res.exit_code == 2 and "unknown overlay" in res.output


def test_queue_alone_lets_a_slow_ramp_drop_frames_on_slow_starting_pods():
    from edgeloop.deploy.plan import make_plan

    service = ServiceModel(120, pod_start_s=120)
    queue = MetricSpec(MetricKind.QUEUE, 12, 15)
    rate = MetricSpec(MetricKind.POD_RATE, 84, 60)
    gentle = Behavior(
        scale_down=ScalingRules(300, (ScalingPolicy("Pods", 1, 60),), "Min")
    )  # as in the overlays
    only_queue, _ = make_plan(10, 30, service, AutoscalerSpec((queue,), 1, 11, behavior=gentle))
    with_rate, _ = make_plan(10, 30, service, AutoscalerSpec((rate, queue), 1, 11, behavior=gentle))
    dropped = {p.name: p.dropped_frames for p in only_queue.phases}
    assert dropped["ramp"] > 0 and dropped["hold"] > 0  # the queue reads 0 until the pods are overloaded
    assert all(p.dropped_frames == 0 for p in with_rate.phases if p.name in ("ramp", "hold"))
