"""kubectl for the pipeline image: which binary, its sha256 in the build arguments (so in the tag)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from edgeloop.pipelines.image_build import (
    IMAGES,
    ImageBuildError,
    build_arguments,
    content_hash,
    context_files,
    kubectl_source,
)

KUBECTL_OUTPUT = "Client Version: v1.30.2\nKustomize Version: v5.0.4-0.20230601165947-6ce0bf390ce3\n"


def _kubectl(path: Path, output: str = KUBECTL_OUTPUT, rc: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\nprintf '{output}'\nexit {rc}\n")
    path.chmod(0o755)
    return path


def _tag(kubectl) -> str:
    spec = IMAGES["edgeloop-pipeline"]
    args = build_arguments(spec, "localhost/base:1", kubectl=kubectl)
    return content_hash(files=context_files(spec.sources()), build_args=args)[:16]


def test_a_given_kubectl_is_recorded_by_sha256_and_another_binary_changes_the_tag(tmp_path):
    one = kubectl_source(str(_kubectl(tmp_path / "a" / "kubectl")))
    assert one.sha256 == hashlib.sha256((tmp_path / "a" / "kubectl").read_bytes()).hexdigest()
    assert one.path == str(tmp_path / "a" / "kubectl") and "v1.30.2" in one.note
    assert build_arguments(IMAGES["edgeloop-pipeline"], "b", kubectl=one)["KUBECTL_SHA256"] == one.sha256
    other = kubectl_source(str(_kubectl(tmp_path / "b" / "kubectl", KUBECTL_OUTPUT + "# another build\n")))
    assert other.sha256 != one.sha256
    assert _tag(one) != _tag(other)
    assert _tag(one) == _tag(kubectl_source(str(tmp_path / "a" / "kubectl")))  # same binary, same tag
    # only the pipeline image takes it (the training image gets it from its parent)
    assert "KUBECTL_SHA256" not in build_arguments(IMAGES["edgeloop-serving"], "b", kubectl=one)


def test_the_kubectl_on_path_is_the_default_and_none_leaves_a_note(tmp_path, monkeypatch):
    link = tmp_path / "bin" / "kubectl"
    real = _kubectl(tmp_path / "sdk" / "kubectl")
    link.parent.mkdir()
    link.symlink_to(real)
    monkeypatch.setenv("PATH", str(link.parent))
    found = kubectl_source()
    assert found.path == str(real)  # the binary itself, not the link (the build context gets a copy)

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    none = kubectl_source()
    assert (none.path, none.sha256) == ("", "none")
    assert "deploy" in none.note and "KUBECTL=" in none.note
    assert _tag(none) != _tag(found)


def test_a_kubectl_without_kustomize_or_that_fails_is_refused(tmp_path):
    with pytest.raises(ImageBuildError, match="kustomize"):
        kubectl_source(str(_kubectl(tmp_path / "old" / "kubectl", "Client Version: v1.13.0\n")))
    with pytest.raises(ImageBuildError, match="exit 3"):
        kubectl_source(str(_kubectl(tmp_path / "broken" / "kubectl", "", rc=3)))
    with pytest.raises(ImageBuildError, match="not a file"):
        kubectl_source(str(tmp_path))


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl on this machine's PATH")
def test_this_machines_kubectl_is_found_with_its_versions():
    found = kubectl_source()
    assert Path(found.path).is_file() and len(found.sha256) == 64
    assert "Client Version" in found.note
