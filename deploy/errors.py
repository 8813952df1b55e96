"""Errors of the deploy package. All are :class:`~edgeloop.core.errors.EdgeloopError`, so the CLI
prints their message and exits 2."""

from __future__ import annotations

from dataclasses import dataclass

from edgeloop.core.errors import EdgeloopError


class DeployError(EdgeloopError):
    """Base class for rendering, validation and planning errors."""


class RenderError(DeployError):
    """An overlay could not be rendered (kustomize failed, unknown overlay, bad model inputs)."""


class SchemaUnavailableError(DeployError):
    """A CRD schema file is missing from the schemas directory (the vendored one, or ``schemas_dir``)."""


class PlanError(DeployError):
    """Capacity-plan inputs are missing or inconsistent (e.g. no throughput in a benchmark file)."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one object: which object, where in it, and what."""

    kind: str
    name: str
    path: str
    message: str

    def __str__(self) -> str:
        where = f" at {self.path}" if self.path else ""
        return f"{self.kind}/{self.name}{where}: {self.message}"


class ManifestValidationError(DeployError):
    """Objects failed validation. ``problems`` lists every problem found, not only the first."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in the manifests:\n{lines}")
