"""What a scan produces besides its verdict: the HTML report, Prometheus metrics, the Grafana dashboard, CLI errors."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from edgeloop.core.payload_log import PayloadRecord
from edgeloop.monitoring.flags import flag_images, select_for_labeling
from edgeloop.monitoring.metrics import MonitorMetrics
from edgeloop.monitoring.profile import ReferenceProfile
from edgeloop.monitoring.report import pca_2d, render_html
from edgeloop.monitoring.scan import (
    ScanOptions,
    ScanReport,
    Window,
    parse_duration,
    resolve_window,
    run_detectors,
)

DASHBOARD = Path(__file__).resolve().parents[3] / "monitoring" / "dashboards" / "edgeloop.json"


@pytest.fixture(scope="module")
def shifted_scan(mon_assets, mon_outputs):
    """A scan report over the shifted images, assembled without any server."""
    from edgeloop.monitoring.model import to_rgb_array

    profile = ReferenceProfile.load(mon_assets.model_dir)
    out, stats = mon_outputs["shifted"]
    paths = mon_assets.images("shifted")
    records = [
        PayloadRecord(
            ts=0,
            model="m",
            version="1",
            label="ok",
            score=float(p.max()),
            probabilities=p.tolist(),
            image_sha256=f"sha{i}",
            image_uri=f"az://payloads/images/sha{i}.png",
        )
        for i, p in enumerate(out.probabilities)
    ]
    window = Window(
        records,
        out.probabilities,
        out.embeddings,
        stats,
        list(range(len(paths))),
        images={f"sha{i}": to_rgb_array(p) for i, p in enumerate(paths)},
    )
    results = run_detectors(profile, window, ScanOptions(n_permutations=100))
    flags = flag_images(profile, out.probabilities, out.embeddings, [r.image_sha256 for r in records])
    selected = select_for_labeling(flags, out.embeddings, 5)
    report = ScanReport(
        model="m",
        version="1",
        start="s",
        end="e",
        records=len(records),
        images=len(records),
        other_versions=0,
        drift=any(r.is_drift for r in results),
        results=results,
        flagged=len(flags),
        flag_reasons={"out_of_distribution": len(flags)},
        selected=[
            {"sha256": f.sha256, "label": "ok", "score": f.confidence, "reason": f.reason, "value": f.value}
            for f in selected
        ],
        enqueue={"enqueued": 5, "already_delivered": 0, "already_pending": 0},
        delivery={"delivered": 5, "already_in_project": 0, "error": None},
        outbox_size=0,
        wall_s=1.0,
    )
    return profile, window, selected, report


def test_html_report_has_verdict_table_plots_and_thumbnails(shifted_scan):
    profile, window, selected, report = shifted_scan
    page = render_html(
        report, profile, window, selected, {f.sha256: window.images[f.sha256] for f in selected}
    )
    assert '<p class="verdict">DRIFT</p>' in page
    for r in report.results:
        assert r.name in page
    assert page.count("data:image/png;base64,") == 3 + len(
        selected
    )  # 3 plots + one thumbnail per selected image
    assert "Selected for labeling (5 of" in page


def test_pca_projection_keeps_the_reference_main_axes():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(200, 6)) * np.array([5.0, 3.0, 1.0, 0.5, 0.2, 0.1])
    ref2, win2 = pca_2d(ref, ref[:10] + 100.0)
    np.testing.assert_allclose(ref2.mean(0), 0, atol=1e-9)
    assert ref2[:, 0].var() > ref2[:, 1].var() > 0.5 * 9  # the two largest axes (variance ~25 and ~9)
    assert np.abs(win2).max() > np.abs(ref2).max()  # a far-away window lands far away


def test_metrics_carry_each_detector_and_the_queue(shifted_scan):
    *_, report = shifted_scan
    m = MonitorMetrics()
    m.observe_scan(report)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(m.text())
        for s in fam.samples
    }
    for r in report.results:
        assert samples[("edgeloop_drift_p_value", (("detector", r.name), ("model", "m")))] == pytest.approx(
            r.p_val
        )
        assert samples[("edgeloop_drift_distance", (("detector", r.name), ("model", "m")))] == pytest.approx(
            r.distance
        )
    assert samples[("edgeloop_drift_detected", (("detector", "any"), ("model", "m")))] == 1.0
    assert samples[("edgeloop_relabel_queued_total", (("model", "m"),))] == 5
    assert samples[("edgeloop_relabel_outbox_size", ())] == 0


def test_dashboard_queries_only_metrics_that_exist(shifted_scan):
    import prometheus_client

    import edgeloop.serving.metrics  # noqa: F401  registers the server's metrics in the default registry

    *_, report = shifted_scan
    m = MonitorMetrics()
    m.observe_scan(report)
    known = set()
    for fam in [*m.registry.collect(), *prometheus_client.REGISTRY.collect()]:
        known.add(fam.name)
        known.update(f"{fam.name}{suffix}" for suffix in ("_total", "_bucket", "_sum", "_count"))
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in dash["annotations"]["list"]]
    used = {name for e in exprs for name in re.findall(r"\bedgeloop_[a-z_]+", e)}
    assert used and used <= known, sorted(used - known)
    titles = " ".join(p["title"] for p in dash["panels"])
    assert "Drift p-value" in titles and "latency" in titles and "outbox" in titles


def test_durations_and_windows():
    assert parse_duration("10m").total_seconds() == 600
    assert parse_duration("1h").total_seconds() == 3600
    start, end = resolve_window("30m", until="2026-01-01T12:00:00")
    assert (end - start).total_seconds() == 1800 and end.tzinfo is not None
    with pytest.raises(ValueError, match="duration"):
        parse_duration("ten minutes")
    with pytest.raises(ValueError, match="empty window"):
        resolve_window("1h", since="2026-01-01T12:00:00", until="2026-01-01T11:00:00")


def test_cli_errors_are_one_line_with_what_to_do(tmp_path):
    from edgeloop.cli import cli

    runner = CliRunner()
    r = runner.invoke(cli, ["monitor", "scan"])
    assert r.exit_code == 2 and "--model-dir" in r.output
    r = runner.invoke(cli, ["monitor", "scan", "--model-dir", str(tmp_path)])
    assert r.exit_code == 2 and "model_card.json" in r.output
    r = runner.invoke(
        cli, ["monitor", "run", "--model-dir", str(tmp_path), "--interval", "often", "--metrics-port", "0"]
    )
    assert r.exit_code == 2 and "duration" in r.output
    assert "Traceback" not in r.output
