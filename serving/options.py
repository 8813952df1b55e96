"""The server's own options (ports, batching, limits, admin), built by the CLI or ``python -m edgeloop.serving``.

Where things are (blob storage, MLflow) stays in :class:`edgeloop.core.config.Settings`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgeloop.serving.providers import OrtSettings
from edgeloop.serving.security import TlsFiles

DEFAULT_ALIAS = "champion"


@dataclass
class BatchingOptions:
    enabled: bool = True
    # On the CPU one session per core gains little from big batches (bare ONNX Runtime, resnet18
    # int8 128 px: 774 img/s at batch 1, 814 at 8), while a thread taking 16 rows leaves the other idle
    # as answers travel; 4 rows and no wait served most (benchmarks/serving_bench.py). A GPU wants
    # bigger batches and a short wait: raise both there.
    max_batch_size: int = 4
    max_wait_ms: float = 0.0
    max_queue_rows: int = 1024
    # Batches run at once per model version (ONNX Runtime releases the GIL).
    concurrent_batches: int = 2
    # With batching off: how many requests run ONNX Runtime at once.
    direct_concurrency: int = 2
    # ONNX Runtime sessions per version on the CPU, each with cores/sessions threads, one per runner
    # thread; 0 = one per core, 1 = one session whose threads span the cores. One per core was
    # faster on 2 cores, bare and served, REST and gRPC (benchmarks/serving_bench.py measures both
    # layouts side by side): check on the target.
    sessions: int = 0
    # With one single-threaded session per core, keep runner thread i on core i: measured on
    # 2 cores, the OS moving them about cost gRPC ~10% (benchmarks/serving_bench.py).
    pin_threads: bool = True


@dataclass
class LimitOptions:
    """Bounds on what one request, and all of them together, may make the server do."""

    max_request_bytes: int = 64 * 1024 * 1024  # every route's body (REST v2, V1, admin): 413 past it
    max_images: int = 256  # images per request
    max_image_pixels: int = 40_000_000  # per image, read from its header before decoding
    max_request_pixels: int = 64_000_000  # all images of one request together
    max_concurrent_requests: int = 256  # in flight at once (REST + gRPC, health probes aside): 429 past it
    max_concurrent_decodes: int = 0  # image decodes/resizes running at once; 0 = one per CPU


@dataclass
class PayloadLogOptions:
    sample_rate: float = 0.0  # 0 = off
    queue_size: int = 256
    batch_records: int = 64
    flush_s: float = 5.0
    container: str | None = None  # None: settings.blob.payloads_container


@dataclass
class ServingOptions:
    http_port: int = 8080
    grpc_port: int = 8081
    bind_host: str = "127.0.0.1"
    grpc_threads: int = 4
    grpc_max_message_bytes: int = 64 * 1024 * 1024
    enable_grpc: bool = True
    enable_docs: bool = False  # Swagger UI at /docs
    timeout_keep_alive_s: int = 65  # longer than a proxy's idle timeout (Istio/Envoy), as kserve's default
    shutdown_grace_s: int = 10  # in-flight REST and gRPC calls get this long to finish on SIGTERM
    batching: BatchingOptions = field(default_factory=BatchingOptions)
    limits: LimitOptions = field(default_factory=LimitOptions)
    ort: OrtSettings = field(default_factory=OrtSettings)
    payload_log: PayloadLogOptions = field(default_factory=PayloadLogOptions)
    tls: TlsFiles | None = None  # HTTPS and TLS gRPC (mutual TLS with a client CA)
    auth_token: str | None = None  # data-plane bearer token; None = no authentication
    admin_enabled: bool = False
    admin_token: str | None = None
    # URI prefixes admin loads may name (see sources.source_allowed); None = the registry and
    # the models container of the settings.
    admin_sources: tuple[str, ...] | None = None
    expected_digest: str | None = None  # the ModelCard.digest() the one model given at start must have
    cache_dir: Path | None = None  # where az:// and models:/ downloads go; None = a temp dir
    model_name: str | None = None  # served name; None = the model card's name
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> version, applied after loading
    canary: str | None = None  # ALIAS=PERCENT of unversioned requests (see routing.py)
    shadow: str | None = None  # ALIAS also run on champion traffic, outputs to the payload log
