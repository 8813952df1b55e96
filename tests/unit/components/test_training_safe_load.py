"""Every checkpoint the training path opens is loaded with ``weights_only=True``: a pickle that
would run code is refused, not executed."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")


class _RunsCode:
    """Unpickling this calls ``Path.touch`` on a marker file: what a hostile checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _hostile_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "code-ran"
    path = tmp_path / "model.pt"
    torch.save({"arch": "resnet18", "classes": ["a", "b"], "state_dict": {}, "x": _RunsCode(marker)}, path)
    return path, marker


def test_a_model_file_that_would_run_code_is_refused(tmp_path: Path):
    from edgeloop.components.modeling import load_model_file

    path, marker = _hostile_checkpoint(tmp_path)
    with pytest.raises(pickle.UnpicklingError):
        load_model_file(path)
    assert not marker.exists()


def test_initial_weights_that_would_run_code_are_refused(tmp_path: Path):
    from edgeloop.components.modeling import build_model, load_initial_weights

    path, marker = _hostile_checkpoint(tmp_path)
    with pytest.raises(pickle.UnpicklingError):
        load_initial_weights(build_model("resnet18", 2, bn_momentum=None), path)
    assert not marker.exists()


def test_no_torch_load_in_the_training_path_allows_code():
    import edgeloop.components as components

    root = Path(components.__file__).parent
    calls = [
        f"{p.name}: {line.strip()}"
        for p in sorted(root.rglob("*.py"))
        for line in p.read_text().splitlines()
        if "torch.load(" in line
    ]
    assert calls, "the training path loads checkpoints somewhere"
    assert all("weights_only=True" in c for c in calls), calls
