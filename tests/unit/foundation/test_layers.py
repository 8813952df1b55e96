"""The layers the folder names promise: core imports no feature, runtime code imports no local
tooling or test kit, and the serving image's packages need nothing outside themselves."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
FEATURES = ("components", "pipelines", "serving", "stream", "monitoring", "deploy")


def _imports(folder: Path) -> dict[str, set[str]]:
    """file -> every ``edgeloop.*`` module it imports (at any depth, lazy imports included)."""
    out: dict[str, set[str]] = {}
    for path in folder.rglob("*.py"):
        mods: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                mods.add(node.module)
            elif isinstance(node, ast.Import):
                mods.update(a.name for a in node.names)
        out[str(path.relative_to(REPO))] = {m for m in mods if m == "edgeloop" or m.startswith("edgeloop.")}
    return out


def _offenders(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{f} imports {m}"
        for f, mods in _imports(REPO / folder).items()
        for m in mods
        if any(m == p or m.startswith(p + ".") for p in forbidden)
    )


def test_the_core_imports_no_feature_and_no_local_tooling():
    forbidden = tuple(f"edgeloop.{x}" for x in (*FEATURES, "local", "testing", "commands", "cli"))
    assert _offenders("edgeloop/core", forbidden) == []


@pytest.mark.parametrize("feature", FEATURES)
def test_features_import_no_local_tooling_and_no_test_kit(feature):
    assert _offenders(feature, ("edgeloop.local", "edgeloop.testing", "edgeloop.commands")) == []


def test_the_serving_image_needs_only_core_and_serving():
    """The image holds edgeloop/__init__.py, edgeloop/core and edgeloop/serving (pipelines.image_build)."""
    allowed = ("edgeloop.core", "edgeloop.serving")
    for folder in ("serving", "edgeloop/core"):
        imported = {m for mods in _imports(REPO / folder).values() for m in mods}
        assert {m for m in imported if m != "edgeloop" and not m.startswith(allowed)} == set(), folder
