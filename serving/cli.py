"""``edgeloop serve``: run the model server locally (binds 127.0.0.1 unless told otherwise)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from edgeloop.core.errors import user_errors


@contextlib.contextmanager
def _plain_argv() -> Iterator[None]:
    """kserve.model_server parses sys.argv when imported; keep our click flags away from it."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


@click.command("serve")
@click.option(
    "--model",
    "models",
    multiple=True,
    required=True,
    help="Model URI: a directory, az://container/prefix, models:/NAME@ALIAS or models:/NAME/VERSION. "
    "Append #version=V&alias=A to set the version id or an alias. Repeat for more versions.",
)
@click.option("--model-name", default=None, help="Served model name (default: the model card's name).")
@click.option(
    "--alias", "aliases", multiple=True, metavar="ALIAS=VERSION", help="Point an alias at a version."
)
@click.option(
    "--canary",
    default=None,
    metavar="ALIAS=PERCENT",
    help="Send PERCENT of the requests that name no version to ALIAS instead of the champion; sticky "
    "per client when it sends an x-edgeloop-client header. Change it live: PUT "
    "/edgeloop/admin/models/NAME/traffic.",
)
@click.option(
    "--shadow",
    default=None,
    metavar="ALIAS",
    help="Also run every champion request on ALIAS and write its outputs to the payload log "
    "(needs --payload-log-rate > 0); responses still come from the champion.",
)
@click.option("--http-port", default=8080, show_default=True, type=int)
@click.option("--grpc-port", default=8081, show_default=True, type=int)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address both servers bind.")
@click.option(
    "--batching/--no-batching", default=True, show_default=True, help="Dynamic batching across requests."
)
@click.option(
    "--max-batch-size",
    default=4,
    show_default=True,
    type=int,
    help="Rows per ONNX Runtime run (raise on a GPU).",
)
@click.option(
    "--max-batch-wait-ms",
    default=0.0,
    show_default=True,
    type=float,
    help="Wait this long for a fuller batch (0: run what is queued as soon as a session is free).",
)
@click.option(
    "--threads",
    "intra_op_threads",
    default=0,
    show_default=True,
    type=int,
    help="ONNX Runtime intra-op threads (0 = one per core).",
)
@click.option(
    "--ort-sessions",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="ONNX Runtime sessions per model version on the CPU, side by side, each with cores/N threads "
    "(with --threads 0); batches run on them in parallel. 0 = one per core, 1 = one over all cores.",
)
@click.option(
    "--pin-ort-threads/--no-pin-ort-threads",
    default=True,
    show_default=True,
    help="With one single-threaded session per core, keep each runner thread on its own core.",
)
@click.option(
    "--providers",
    default="tensorrt,cuda,openvino,cpu",
    show_default=True,
    help="Execution providers in order of preference; missing ones are skipped.",
)
@click.option(
    "--max-request-mb", default=64.0, show_default=True, type=float, help="Body limit, every route."
)
@click.option("--max-images", default=256, show_default=True, type=int, help="Images per request.")
@click.option(
    "--max-request-megapixels",
    default=64.0,
    show_default=True,
    type=float,
    help="Pixels of all images in one request together (read from their headers before decoding).",
)
@click.option(
    "--max-concurrent-requests",
    default=256,
    show_default=True,
    type=int,
    help="Requests in flight, REST and gRPC together; past it they get 429 / RESOURCE_EXHAUSTED.",
)
@click.option(
    "--max-concurrent-decodes",
    default=0,
    show_default=True,
    type=int,
    help="Image decodes at once (0 = CPUs).",
)
@click.option(
    "--payload-log-rate",
    default=0.0,
    show_default=True,
    type=float,
    help="Fraction of images written to the payload log in blob storage (0 = off).",
)
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="PEM certificate (chain): serve HTTPS and TLS gRPC. Needs --tls-key.",
)
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.option(
    "--tls-client-ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="PEM CA: mutual TLS, clients must present a certificate it signed.",
)
@click.option(
    "--auth-token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="File holding the bearer token every client must send (else env EDGELOOP_SERVING_AUTH_TOKEN); "
    "health probes stay open.",
)
@click.option("--enable-admin", is_flag=True, help="Admin endpoints: load a version, move an alias, unload.")
@click.option(
    "--admin-token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="File holding the bearer token admin endpoints require (else env EDGELOOP_SERVING_ADMIN_TOKEN). "
    "Needed for kserve's repository load/unload, and for admin on any address but loopback.",
)
@click.option(
    "--admin-allow-source",
    "admin_sources",
    multiple=True,
    metavar="PREFIX",
    help="URI prefix admin loads may name: models:/[NAME], az://CONTAINER/[PREFIX/] or a local directory "
    "(repeatable). Default: models:/ and az://<models container>/.",
)
@click.option(
    "--expected-digest",
    envvar="EDGELOOP_MODEL_DIGEST",
    default=None,
    metavar="SHA256",
    help="ModelCard.digest() the model must have; any mismatch and the server does not start "
    "(env EDGELOOP_MODEL_DIGEST).",
)
@click.option(
    "--cache-dir", type=click.Path(path_type=Path), default=None, help="Where downloaded models go."
)
@click.option("--log-level", default="INFO", show_default=True)
@click.pass_obj
@user_errors
def serve(
    obj,
    models: tuple[str, ...],
    model_name: str | None,
    aliases: tuple[str, ...],
    canary: str | None,
    shadow: str | None,
    http_port: int,
    grpc_port: int,
    host: str,
    batching: bool,
    max_batch_size: int,
    max_batch_wait_ms: float,
    intra_op_threads: int,
    ort_sessions: int,
    pin_ort_threads: bool,
    providers: str,
    max_request_mb: float,
    max_images: int,
    max_request_megapixels: float,
    max_concurrent_requests: int,
    max_concurrent_decodes: int,
    payload_log_rate: float,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
    auth_token_file: Path | None,
    enable_admin: bool,
    admin_token_file: Path | None,
    admin_sources: tuple[str, ...],
    expected_digest: str | None,
    cache_dir: Path | None,
    log_level: str,
) -> None:
    """Serve ONNX image classifiers over OIP v2 REST/gRPC and V1 with KServe's model server."""
    from edgeloop.core.config import load_settings
    from edgeloop.core.model_loader import OrtSettings
    from edgeloop.serving import logs
    from edgeloop.serving.errors import ServingError
    from edgeloop.serving.options import BatchingOptions, LimitOptions, PayloadLogOptions, ServingOptions
    from edgeloop.serving.security import (
        ADMIN_TOKEN_ENV,
        ADMIN_TOKEN_FILE_ENV,
        AUTH_TOKEN_ENV,
        AUTH_TOKEN_FILE_ENV,
        TlsFiles,
        token_from,
    )

    bad = [a for a in aliases if "=" not in a]
    if bad:
        raise click.BadParameter(f"{bad[0]!r}: use ALIAS=VERSION", param_hint="--alias")
    settings = obj.settings if obj is not None and hasattr(obj, "settings") else load_settings()
    try:
        admin_token = token_from(admin_token_file, ADMIN_TOKEN_ENV, ADMIN_TOKEN_FILE_ENV, "admin token")
        auth_token = token_from(auth_token_file, AUTH_TOKEN_ENV, AUTH_TOKEN_FILE_ENV, "auth token")
        tls = TlsFiles.from_args(tls_cert, tls_key, tls_client_ca)
    except ServingError as e:
        raise click.UsageError(e.message) from e
    options = ServingOptions(
        http_port=http_port,
        grpc_port=grpc_port,
        bind_host=host,
        batching=BatchingOptions(
            enabled=batching,
            max_batch_size=max_batch_size,
            max_wait_ms=max_batch_wait_ms,
            sessions=ort_sessions,
            pin_threads=pin_ort_threads,
        ),
        limits=LimitOptions(
            max_request_bytes=int(max_request_mb * 1024 * 1024),
            max_images=max_images,
            max_request_pixels=int(max_request_megapixels * 1_000_000),
            max_concurrent_requests=max_concurrent_requests,
            max_concurrent_decodes=max_concurrent_decodes,
        ),
        ort=OrtSettings(providers=providers.split(","), intra_op_threads=intra_op_threads),
        payload_log=PayloadLogOptions(sample_rate=payload_log_rate),
        tls=tls,
        auth_token=auth_token,
        admin_enabled=enable_admin,
        admin_token=admin_token,
        admin_sources=admin_sources or None,
        expected_digest=expected_digest,
        cache_dir=cache_dir,
        model_name=model_name,
        aliases=dict(a.split("=", 1) for a in aliases),
        canary=canary,
        shadow=shadow,
    )
    logs.configure(log_level.upper())
    with _plain_argv():
        from edgeloop.serving.server import run_server
    try:
        run_server(list(models), options, settings)
    except ServingError as e:
        click.echo(f"error: {e.message}", err=True)
        sys.exit(2)
