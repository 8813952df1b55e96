"""Container entry point: ``python -m edgeloop.serving --model URI [...]`` with kserve's own flags.

The parser extends ``kserve.model_server.parser`` (``--http_port``, ``--grpc_port``,
``--model_name``, ``--max_threads``, ...) the way kserve's runtimes do. ``--model_dir``
takes what KServe's storage initializer mounts (``/mnt/models``): one model directory,
or one sub-directory per version (the sub-directory name becomes the version id).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from edgeloop.core.model_card import MODEL_CARD_FILE

DIGEST_ENV = (
    "EDGELOOP_MODEL_DIGEST"  # set by the InferenceService from its digest annotation (deploy.validate)
)


def build_parser() -> argparse.ArgumentParser:
    from kserve import model_server

    from edgeloop.serving.providers import DEFAULT_PROVIDER_ORDER

    def flag(text: str) -> bool:
        return text.strip().lower() in ("1", "true", "yes", "on")

    p = argparse.ArgumentParser(
        prog="python -m edgeloop.serving",
        parents=[model_server.parser],
        description="edgeloop model server (ONNX Runtime behind kserve)",
    )
    p.add_argument(
        "--model",
        action="append",
        default=[],
        help="model URI: a directory, az://container/prefix, models:/NAME@ALIAS or models:/NAME/VERSION; "
        "append #version=V&alias=A to set the version id / an alias (repeatable)",
    )
    p.add_argument(
        "--model_dir", default=None, help="a model directory, or a directory of version directories"
    )
    p.add_argument("--alias", action="append", default=[], help="ALIAS=VERSION (repeatable)")
    p.add_argument(
        "--canary", default=None, help="ALIAS=PERCENT: that share of unversioned requests goes to ALIAS"
    )
    p.add_argument(
        "--shadow", default=None, help="ALIAS: also run champion requests on it, outputs to the payload log"
    )
    p.add_argument("--bind_host", default="0.0.0.0", help="address both servers bind")
    p.add_argument("--batching", type=flag, default=True, help="dynamic batching across requests")
    p.add_argument("--max_batch_size", type=int, default=4, help="rows per ONNX Runtime run (raise on a GPU)")
    p.add_argument(
        "--max_batch_wait_ms", type=float, default=0.0, help="wait for a fuller batch (0: run what is queued)"
    )
    p.add_argument("--max_queue_rows", type=int, default=1024)
    p.add_argument(
        "--concurrent_batches", type=int, default=2, help="batches (or requests, batching off) run at once"
    )
    p.add_argument("--intra_op_threads", type=int, default=0, help="ONNX Runtime threads per run (0 = cores)")
    p.add_argument("--ort_spinning", type=flag, default=False)
    p.add_argument(
        "--pin_ort_threads",
        type=flag,
        default=True,
        help="with one single-threaded session per core, keep each runner thread on its core",
    )
    p.add_argument(
        "--ort_sessions",
        type=int,
        default=0,
        help="ONNX Runtime sessions per version on the CPU, each cores/N threads (0 = one per core)",
    )
    p.add_argument(
        "--providers",
        default=",".join(DEFAULT_PROVIDER_ORDER),
        help="execution providers in order of preference; unavailable ones are skipped",
    )
    p.add_argument("--max_request_mb", type=float, default=64.0, help="body limit on every route (413)")
    p.add_argument("--max_images", type=int, default=256, help="images per request (413)")
    p.add_argument(
        "--max_request_megapixels", type=float, default=64.0, help="pixels of all images in one request (413)"
    )
    p.add_argument(
        "--max_concurrent_requests", type=int, default=256, help="in flight, REST + gRPC (429 past it)"
    )
    p.add_argument("--max_concurrent_decodes", type=int, default=0, help="image decodes at once (0 = CPUs)")
    p.add_argument("--payload_log_rate", type=float, default=0.0, help="fraction of images logged (0 = off)")
    p.add_argument(
        "--enable_admin",
        type=flag,
        default=False,
        help="admin endpoints (load version, move alias, unload; kserve's repository load/unload need "
        "a token); refused on a non-loopback --bind_host without a token",
    )
    p.add_argument(
        "--tls_client_ca",
        default=os.environ.get("EDGELOOP_SERVING_TLS_CLIENT_CA") or None,
        help="PEM CA for mutual TLS: clients must present a certificate it signed (with kserve's "
        "--ssl_certfile/--ssl_keyfile, which serve HTTPS and TLS gRPC)",
    )
    p.add_argument(
        "--auth_token_file",
        default=None,
        help="file holding the bearer token every client must send (a mounted Secret); else env "
        "EDGELOOP_SERVING_AUTH_TOKEN_FILE names the file, else EDGELOOP_SERVING_AUTH_TOKEN holds it; "
        "health probes stay open",
    )
    p.add_argument(
        "--admin_token_file",
        default=None,
        help="file holding the admin bearer token (a mounted Secret); else env "
        "EDGELOOP_SERVING_ADMIN_TOKEN_FILE names the file, else EDGELOOP_SERVING_ADMIN_TOKEN holds it",
    )
    p.add_argument(
        "--admin_allow_source",
        action="append",
        default=[],
        help="URI prefix admin loads may name (repeatable): models:/[NAME], az://CONTAINER/[PREFIX/] or a "
        "local directory; default: models:/ and az://<models container>/",
    )
    p.add_argument(
        "--expected_digest",
        default=os.environ.get(DIGEST_ENV) or None,
        help=f"ModelCard.digest() the model must have, or the server does not start (default: env {DIGEST_ENV}, "
        "which the InferenceService sets from its digest annotation)",
    )
    p.add_argument("--cache_dir", default=None, help="where downloaded models go")
    p.add_argument("--log_level", default=os.environ.get("EDGELOOP_LOG_LEVEL", "INFO"))
    return p


def specs_from_model_dir(model_dir: str) -> list[str]:
    root = Path(model_dir)
    if (root / MODEL_CARD_FILE).exists():
        return [str(root)]
    subs = sorted(d for d in root.iterdir() if (d / MODEL_CARD_FILE).exists())
    return [f"{d}#version={d.name}" for d in subs]


def main(argv: list[str] | None = None) -> None:
    from edgeloop.serving import logs
    from edgeloop.serving.errors import ServingError
    from edgeloop.serving.options import BatchingOptions, LimitOptions, PayloadLogOptions, ServingOptions
    from edgeloop.serving.providers import OrtSettings
    from edgeloop.serving.security import (
        ADMIN_TOKEN_ENV,
        ADMIN_TOKEN_FILE_ENV,
        AUTH_TOKEN_ENV,
        AUTH_TOKEN_FILE_ENV,
        TlsFiles,
        token_from,
    )

    args = build_parser().parse_args(argv)
    logs.configure(args.log_level)
    try:
        admin_token = token_from(args.admin_token_file, ADMIN_TOKEN_ENV, ADMIN_TOKEN_FILE_ENV, "admin token")
        auth_token = token_from(args.auth_token_file, AUTH_TOKEN_ENV, AUTH_TOKEN_FILE_ENV, "auth token")
        tls = TlsFiles.from_args(args.ssl_certfile, args.ssl_keyfile, args.tls_client_ca)
    except ServingError as e:
        sys.exit(f"error: {e.message}")
    specs = list(args.model) + (specs_from_model_dir(args.model_dir) if args.model_dir else [])
    if not specs:
        sys.exit("error: give at least one --model URI or a --model_dir with model directories")
    aliases = dict(a.split("=", 1) for a in args.alias)
    options = ServingOptions(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        bind_host=args.bind_host,
        grpc_threads=args.max_threads,
        grpc_max_message_bytes=args.grpc_max_receive_message_length,
        enable_grpc=args.enable_grpc,
        enable_docs=args.enable_docs_url,
        timeout_keep_alive_s=args.timeout_keep_alive,
        batching=BatchingOptions(
            enabled=args.batching,
            max_batch_size=args.max_batch_size,
            max_wait_ms=args.max_batch_wait_ms,
            max_queue_rows=args.max_queue_rows,
            concurrent_batches=args.concurrent_batches,
            direct_concurrency=args.concurrent_batches,
            sessions=max(0, args.ort_sessions),
            pin_threads=args.pin_ort_threads,
        ),
        limits=LimitOptions(
            max_request_bytes=int(args.max_request_mb * 1024 * 1024),
            max_images=args.max_images,
            max_request_pixels=int(args.max_request_megapixels * 1_000_000),
            max_concurrent_requests=args.max_concurrent_requests,
            max_concurrent_decodes=args.max_concurrent_decodes,
        ),
        ort=OrtSettings(
            providers=args.providers.split(","),
            intra_op_threads=args.intra_op_threads,
            allow_spinning=args.ort_spinning,
        ),
        payload_log=PayloadLogOptions(sample_rate=args.payload_log_rate),
        admin_enabled=args.enable_admin,
        tls=tls,
        auth_token=auth_token,
        admin_token=admin_token,
        admin_sources=tuple(args.admin_allow_source) or None,
        expected_digest=args.expected_digest,
        cache_dir=Path(args.cache_dir) if args.cache_dir else None,
        model_name=None if args.model_name == "model" else args.model_name,  # kserve's default name
        aliases=aliases,
        canary=args.canary,
        shadow=args.shadow,
    )
    settings = None
    needs_settings = args.payload_log_rate > 0 or any(s.startswith(("az://", "models:/")) for s in specs)
    if needs_settings or args.enable_admin:
        from edgeloop.core.config import load_settings

        settings = load_settings()
    from edgeloop.serving.server import run_server

    try:
        run_server(specs, options, settings)
    except ServingError as e:
        sys.exit(f"error: {e.message}")


if __name__ == "__main__":
    main()
