"""Upstream contracts, vendored unmodified: Kubernetes CRDs and the Open Inference Protocol.

See README.md in this folder for where each file comes from and how to refresh them.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def schemas_dir() -> Path:
    """The directory holding the vendored schemas (inside the installed package)."""
    return Path(str(resources.files(__name__)))
