"""ONNX Runtime session setup for the server: provider choice with fallback and thread settings.

They live in :mod:`edgeloop.core.model_loader` (one loader for the server, streams, monitoring
and staging); these names stay importable here for the server's entry point.
"""

from __future__ import annotations

from edgeloop.core.model_loader import (
    DEFAULT_PROVIDER_ORDER,
    OrtSettings,
    SessionInfo,
    available_cpus,
    choose_providers,
    provider_name,
)
from edgeloop.core.model_loader import open_session as create_session

__all__ = [
    "DEFAULT_PROVIDER_ORDER",
    "OrtSettings",
    "SessionInfo",
    "available_cpus",
    "choose_providers",
    "create_session",
    "provider_name",
]
