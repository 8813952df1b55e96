"""Local state is private: directories 0700 (tightened if they were looser), secrets 0600, and Label
Studio serves local files only from a directory of images, never edgeloop's state."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from edgeloop.core.config import load_settings, private_dir
from edgeloop.local.stack import Stack, StackError, labelstudio_env


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_state_and_stack_directories_are_created_0700(tmp_path: Path):
    settings = load_settings(state_dir=tmp_path / "state")
    settings.secrets()
    assert _mode(settings.state_dir) == 0o700
    assert _mode(settings.secrets_file) == 0o600
    Stack(settings).down(progress=lambda m: None)  # writes the stack's state file
    assert _mode(settings.stack_dir) == 0o700


def test_a_state_directory_made_with_looser_bits_is_tightened(tmp_path: Path):
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    Stack(load_settings(state_dir=state)).down(progress=lambda m: None)
    assert _mode(state) == 0o700


def test_private_dir_creates_missing_parents(tmp_path: Path):
    d = private_dir(tmp_path / "a" / "b")
    assert d.is_dir() and _mode(d) == 0o700


def test_label_studio_serves_no_local_files_by_default(tmp_path: Path):
    settings = load_settings(state_dir=tmp_path / "state")
    env = labelstudio_env(settings, tmp_path / "state" / "stack" / "labelstudio")
    assert env["LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED"] == "false"
    assert "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT" not in env


def test_label_studio_local_files_root_is_only_the_images(tmp_path: Path):
    images = tmp_path / "images"
    images.mkdir()
    settings = load_settings(state_dir=tmp_path / "state", labelstudio={"local_files_root": str(images)})
    env = labelstudio_env(settings, tmp_path / "state" / "stack" / "labelstudio")
    assert env["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"] == str(images.resolve())
    assert env["LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED"] == "true"


@pytest.mark.parametrize("root", ["state", ".", "state/stack"], ids=["state dir", "its parent", "inside it"])
def test_label_studio_may_not_serve_the_state_directory(tmp_path: Path, root: str):
    (tmp_path / "state" / "stack").mkdir(parents=True)
    settings = load_settings(
        state_dir=tmp_path / "state", labelstudio={"local_files_root": str(tmp_path / root)}
    )
    with pytest.raises(StackError, match="edgeloop's state"):
        labelstudio_env(settings, tmp_path / "state" / "stack" / "labelstudio")
