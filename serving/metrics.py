"""Prometheus metrics, served at ``/metrics`` by kserve's REST server (the default registry).

Names start with ``edgeloop_serving_``. Labels stay low-cardinality: model, version,
protocol (rest_v2_json, rest_v2_binary, rest_v1, grpc), error kind.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.004,
    0.008,
    0.016,
    0.032,
    0.064,
    0.128,
    0.256,
    0.512,
    1.0,
    2.5,
    5.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

REQUEST_SECONDS = Histogram(
    "edgeloop_serving_request_seconds",
    "Request latency inside the model server (decode to encode)",
    ["model", "version", "protocol"],
    buckets=_LATENCY_BUCKETS,
)
REQUEST_IMAGES = Counter(
    "edgeloop_serving_images_total", "Images classified", ["model", "version", "protocol"]
)
ROUTED = Counter(
    "edgeloop_serving_routed_requests_total",
    "Requests by the version that answered and why: pinned (the request named it), champion, canary",
    ["model", "version", "route"],
)
SHADOW_IMAGES = Counter(
    "edgeloop_serving_shadow_images_total",
    "Images also run on a shadow (or, for canary traffic, on the champion), by outcome: ok, failed, "
    "dropped (too many in flight), incompatible (other preprocessing)",
    ["model", "version", "outcome"],
)
BATCH_SIZE = Histogram(
    "edgeloop_serving_batch_size",
    "Rows per ONNX Runtime run (dynamic batching)",
    ["model", "version"],
    buckets=_BATCH_BUCKETS,
)
INFERENCE_SECONDS = Histogram(
    "edgeloop_serving_inference_seconds",
    "ONNX Runtime run time per batch",
    ["model", "version"],
    buckets=_LATENCY_BUCKETS,
)
QUEUE_DEPTH = Gauge("edgeloop_serving_queue_rows", "Rows waiting for the next batch", ["model", "version"])
ERRORS = Counter(
    "edgeloop_serving_errors_total", "Requests answered with an error, by kind", ["model", "kind", "protocol"]
)
LOAD_FAILURES = Counter(
    "edgeloop_serving_model_load_failures_total",
    "Model versions refused at load, by reason",
    ["model", "reason"],
)
INTEGRITY_FAILURES = Counter(
    "edgeloop_serving_integrity_failures_total",
    "Model versions refused because a file's sha256 does not match the model card",
    ["model"],
)
MODEL_INFO = Gauge(
    "edgeloop_serving_model_info",
    "1 per loaded model version, with its execution provider and digest",
    ["model", "version", "execution_provider", "digest"],
)
ALIAS_INFO = Gauge(
    "edgeloop_serving_alias_info", "1 for the version each alias points to", ["model", "alias", "version"]
)
PAYLOAD_LOG = Counter(
    "edgeloop_serving_payload_log_records_total",
    "Payload log records, by outcome (written, dropped, failed)",
    ["outcome"],
)
INFLIGHT = Gauge(
    "edgeloop_serving_inflight_requests",
    "Requests in flight (REST and gRPC, health probes and /metrics aside); past the limit they get 429",
)
