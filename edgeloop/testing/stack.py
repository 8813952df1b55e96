"""Settings for a test of its own against a running stack, and a port where nothing listens."""

from __future__ import annotations

import contextlib
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

from edgeloop.core.config import Settings, load_settings


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound once, then released): a service that is down."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settings_on(
    stack: Settings, state_dir: Path, ls_url: str | None = None, project: str | None = None
) -> Settings:
    """Settings with their own state dir (own outbox, caches) and Label Studio project against ``stack``'s
    services; ``ls_url`` points Label Studio elsewhere (e.g. at a :func:`closed_port`)."""
    return load_settings(
        state_dir=state_dir,
        blob={"connection_string": stack.blob_connection_string()},
        labelstudio={
            "url": ls_url or stack.labelstudio_url(),
            "api_key": stack.labelstudio_api_key(),
            "project_title": project or f"relabel-{uuid.uuid4().hex[:8]}",
        },
        mlflow=_mlflow_account(stack),
    )


def _mlflow_account(stack: Settings) -> dict[str, str | None]:
    """The stack's MLflow, as the same account ``stack`` uses (the local MLflow refuses anonymous clients)."""
    user, password = stack.mlflow_credentials() or (None, None)
    return {"tracking_uri": stack.mlflow_tracking_uri(), "username": user, "password": password}


@contextlib.contextmanager
def running_stack(settings: Settings, label: str, keep: bool = False) -> Iterator[Settings]:
    """The local stack of ``settings`` up for the block and down after it, also when starting it fails
    half way (a service that did not get ready must not outlive the test run); ``keep``: leave it running."""
    from edgeloop.local.stack import Stack

    stack = Stack(settings)
    try:
        stack.up(progress=lambda m: print(f"[{label}] {m}"))
        yield settings
    finally:
        if not keep:
            stack.down(progress=lambda m: print(f"[{label}] {m}"))
