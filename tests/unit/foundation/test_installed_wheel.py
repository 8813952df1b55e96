"""The wheel a user installs: one top-level package, everything it reads at run time inside it."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The project's wheel, installed into a fresh venv outside the repository.

    Its dependencies are this venv's (a path entry, not a re-install): what is tested is the wheel.
    """
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            str(REPO),
            "-w",
            str(tmp),
        ],
        check=True,
        capture_output=True,
        cwd=tmp,
        timeout=600,
    )
    (wheel,) = tmp.glob("edgeloop-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    (site,) = (venv / "lib").glob("python3*/site-packages")
    deps = next(p for p in map(Path, sys.path) if p.name == "site-packages" and (p / "kfp").is_dir())
    (site / "zz-edgeloop-test-deps.pth").write_text(f"{deps}\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "-q",
            "--no-deps",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return wheel, venv


def test_the_wheel_installs_exactly_one_top_level_package(installed):
    wheel, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"edgeloop"}
    for must in (
        "edgeloop/serving/server.py",
        "edgeloop/stream/processor.py",
        "edgeloop/deploy/render.py",
        "edgeloop/manifests/overlays/edge-cpu/kustomization.yaml",
        "edgeloop/schemas/kserve/serving.kserve.io_inferenceservices.yaml",
        "edgeloop/schemas/kserve/grpc_predict_v2.proto",
        "edgeloop/monitoring/dashboards/edgeloop.json",
        "edgeloop/stream/result.schema.json",
    ):
        assert must in names, must


def _run(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("EDGELOOP_STATE_DIR", "PYTHONPATH", "VIRTUAL_ENV")
    }
    return subprocess.run(
        [str(venv / "bin" / "edgeloop"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_installed_package_works_from_any_directory(installed, tmp_path):
    _, venv = installed
    where = _run(venv, tmp_path, "--help")
    assert where.returncode == 0 and "serve" in where.stdout, where.stderr
    probe = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import edgeloop.serving.server, edgeloop.deploy; print(edgeloop.deploy.__file__)",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0 and probe.stdout.startswith(str(venv)), probe.stdout + probe.stderr

    v = _run(venv, tmp_path, "deploy", "validate", "--overlay", "edge-cpu")
    assert v.returncode == 0, v.stdout + v.stderr

    c = _run(venv, tmp_path, "pipeline", "compile")
    assert c.returncode == 0, c.stderr
    assert "PIPELINE DEFINITION" in (tmp_path / "training_pipeline.yaml").read_text()
    assert not list(venv.rglob("training_pipeline.yaml")), "compile wrote inside the installed package"


def test_the_state_directory_defaults_to_the_working_directory(tmp_path, monkeypatch):
    from edgeloop.core.config import load_settings

    monkeypatch.delenv("EDGELOOP_STATE_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert load_settings().state_dir == tmp_path / ".edgeloop"
