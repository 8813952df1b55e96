"""Prometheus metrics of the monitor: drift per detector, flags, the relabel queue.

``monitor run`` serves them (``--metrics-port``); ``monitor scan`` can print them,
write them for node-exporter's textfile collector, or push them to a Pushgateway
(a CronJob does not live long enough to be scraped).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

if TYPE_CHECKING:
    from edgeloop.monitoring.scan import ScanReport


class MonitorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.drift_distance = Gauge(
            "edgeloop_drift_distance",
            "Drift statistic of the last scan, per detector",
            ["model", "detector"],
            registry=r,
        )
        self.drift_p_value = Gauge(
            "edgeloop_drift_p_value",
            "p-value of the last scan, per detector",
            ["model", "detector"],
            registry=r,
        )
        self.drift_threshold = Gauge(
            "edgeloop_drift_threshold",
            "p-value threshold of each detector",
            ["model", "detector"],
            registry=r,
        )
        self.drift_detected = Gauge(
            "edgeloop_drift_detected",
            "1 if the detector saw drift in the last scan",
            ["model", "detector"],
            registry=r,
        )
        self.window_records = Gauge(
            "edgeloop_monitor_window_records",
            "Payload records in the last scanned window",
            ["model"],
            registry=r,
        )
        self.flagged = Gauge(
            "edgeloop_monitor_flagged_images",
            "Images flagged in the last scanned window",
            ["model", "reason"],
            registry=r,
        )
        self.selected = Gauge(
            "edgeloop_monitor_selected_images",
            "Images selected for labeling in the last window",
            ["model"],
            registry=r,
        )
        self.queued = Counter(
            "edgeloop_relabel_queued", "Images newly put in the relabel outbox", ["model"], registry=r
        )
        self.delivered = Counter(
            "edgeloop_relabel_delivered", "Relabel tasks created in Label Studio", ["model"], registry=r
        )
        self.delivery_failures = Counter(
            "edgeloop_relabel_delivery_failures",
            "Deliveries that left items in the outbox",
            ["model"],
            registry=r,
        )
        self.outbox = Gauge(
            "edgeloop_relabel_outbox_size", "Relabel items waiting for Label Studio", registry=r
        )
        self.scans = Counter("edgeloop_monitor_scans", "Scans run", ["model"], registry=r)
        self.scan_seconds = Gauge(
            "edgeloop_monitor_scan_duration_seconds", "Wall time of the last scan", ["model"], registry=r
        )
        self.last_scan = Gauge(
            "edgeloop_monitor_last_scan_timestamp_seconds",
            "When the last scan finished",
            ["model"],
            registry=r,
        )

    def observe_scan(self, report: ScanReport) -> None:
        import time

        m = report.model
        for res in report.results:
            self.drift_distance.labels(m, res.name).set(res.distance)
            self.drift_p_value.labels(m, res.name).set(res.p_val)
            self.drift_threshold.labels(m, res.name).set(res.threshold)
            self.drift_detected.labels(m, res.name).set(1.0 if res.is_drift else 0.0)
        self.drift_detected.labels(m, "any").set(1.0 if report.drift else 0.0)
        self.window_records.labels(m).set(report.records)
        for reason in ("low_confidence", "small_margin", "out_of_distribution"):
            self.flagged.labels(m, reason).set(report.flag_reasons.get(reason, 0))
        self.flagged.labels(m, "any").set(report.flagged)
        self.selected.labels(m).set(len(report.selected))
        if report.enqueue:
            self.queued.labels(m).inc(report.enqueue["enqueued"])
        if report.delivery:
            self.delivered.labels(m).inc(report.delivery["delivered"])
            if report.delivery.get("error"):
                self.delivery_failures.labels(m).inc()
        if report.outbox_size is not None:
            self.outbox.set(report.outbox_size)
        self.scans.labels(m).inc()
        self.scan_seconds.labels(m).set(report.wall_s)
        self.last_scan.labels(m).set(time.time())

    def text(self) -> str:
        return generate_latest(self.registry).decode()

    def write_textfile(self, path: str) -> None:
        from prometheus_client import write_to_textfile

        write_to_textfile(path, self.registry)

    def push(self, gateway: str, job: str = "edgeloop-monitor") -> None:
        from prometheus_client import push_to_gateway

        push_to_gateway(gateway, job=job, registry=self.registry)
