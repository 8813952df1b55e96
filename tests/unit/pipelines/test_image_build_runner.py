"""Image build context (content-hash tag, skip without a builder) and the CLI/runner helpers."""

from __future__ import annotations

import tarfile
from pathlib import Path

import click
import pytest

from edgeloop.pipelines.image_build import (
    BuildContext,
    build_locally,
    content_hash,
    context_files,
    write_context,
)


def _repo(root: Path) -> dict[str, Path]:
    (root / "serving").mkdir(parents=True)
    (root / "core").mkdir()
    (root / "serving" / "Dockerfile").write_text("FROM python:3.11-slim\n")
    (root / "serving" / "server.py").write_text("print('hi')\n")
    (root / "serving" / "__pycache__").mkdir()
    (root / "serving" / "__pycache__" / "x.pyc").write_bytes(b"junk")
    (root / "core" / "config.py").write_text("")
    (root / "__init__.py").write_text("")
    return {
        "edgeloop/__init__.py": root / "__init__.py",
        "edgeloop/core": root / "core",
        "edgeloop/serving": root / "serving",
    }


def test_tag_is_a_content_hash_of_what_goes_in(tmp_path):
    src = _repo(tmp_path / "repo")
    root = tmp_path / "repo"
    a = write_context(tmp_path / "a.tar.gz", "reg.example/serving", src)
    b = write_context(tmp_path / "b.tar.gz", "reg.example/serving", src)
    assert a.image == b.image and a.image.startswith("reg.example/serving:")
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()  # reproducible
    with tarfile.open(a.archive) as tar:
        names = tar.getnames()
    assert "edgeloop/serving/Dockerfile" in names and not any("__pycache__" in n for n in names)
    assert "edgeloop/core/config.py" in names and "edgeloop/__init__.py" in names
    (root / "serving" / "__pycache__" / "y.pyc").write_bytes(b"more junk")  # not part of the image
    (root / "stream.py").write_text("print('not in the image')\n")
    assert content_hash(src) == a.content_hash
    (root / "serving" / "server.py").write_text("print('changed')\n")
    assert content_hash(src) != a.content_hash


def test_the_serving_image_holds_whole_packages_and_nothing_else():
    files = context_files()
    assert "edgeloop/serving/Dockerfile" in files and "edgeloop/serving/server.py" in files
    assert "edgeloop/core/model_card.py" in files and "edgeloop/serving/requirements.txt" in files
    tops = {"/".join(k.split("/")[:2]) for k in files}
    assert tops == {"edgeloop/__init__.py", "edgeloop/core", "edgeloop/serving"}


def test_local_build_is_skipped_with_a_reason_when_no_builder_works(tmp_path):
    ctx = write_context(tmp_path / "c.tar.gz", "reg.example/serving", _repo(tmp_path / "repo"))
    r = build_locally(ctx, record_dir=tmp_path / "rec", tools=("definitely-not-a-builder",))
    assert r.status == "skipped" and "definitely-not-a-builder not installed" in r.reason
    assert not (tmp_path / "rec").exists()


def test_a_recorded_build_is_not_repeated(tmp_path):
    import json

    ctx = BuildContext(archive="x", content_hash="ab" * 32, image="reg/serving:abab", files=1)
    (tmp_path / "rec").mkdir()
    (tmp_path / "rec" / f"{ctx.content_hash[:16]}.json").write_text(
        json.dumps({"status": "built", "builder": "docker"})
    )
    r = build_locally(ctx, record_dir=tmp_path / "rec", tools=())
    assert r.status == "exists" and "no rebuild" in r.reason


def test_missing_dockerfile_is_a_clear_error(tmp_path):
    src = _repo(tmp_path / "repo")
    (src["edgeloop/serving"] / "Dockerfile").unlink()
    with pytest.raises(FileNotFoundError, match="Dockerfile"):
        write_context(tmp_path / "c.tar.gz", "r/s", src)


def test_cli_params_are_typed_and_unknown_ones_refused():
    from edgeloop.pipelines.cli import _parse_params

    got = _parse_params(("epochs=3", "min_accuracy=0.8", "auto_approve=true", "architecture=resnet18"))
    assert got == {"epochs": 3, "min_accuracy": 0.8, "auto_approve": True, "architecture": "resnet18"}
    with pytest.raises(click.BadParameter, match="unknown pipeline parameter"):
        _parse_params(("epochz=3",))
    with pytest.raises(click.BadParameter):
        _parse_params(("epochs=three",))


def test_failure_cause_is_the_failed_steps_last_exception():
    from edgeloop.pipelines.runner import _failure_cause

    log = (
        "Executing task 'train-model'\n  Traceback (most recent call last):\n"
        '  File "x.py", line 1\n  edgeloop.components.errors.TrainingError: training failed (exit code 1)\n'
    )
    assert (
        _failure_cause(log, "train-model")
        == "edgeloop.components.errors.TrainingError: training failed (exit code 1)"
    )


def test_a_local_run_survives_a_builder_that_cannot_build_here(tmp_path, monkeypatch):
    """podman installed but no registry reachable: the build is recorded as failed, the run goes on."""
    import json
    import os
    from types import SimpleNamespace

    from edgeloop.pipelines.tasks import local_image_build_task

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "podman"
    fake.write_text(
        '#!/bin/sh\n[ "$1" = info ] && exit 0\necho \'Error: Resolved "python" as an alias\' >&2\nexit 125\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin")
    monkeypatch.setenv("EDGELOOP_STATE_DIR", str(tmp_path / "state"))
    ctx = write_context(tmp_path / "c.tar.gz", "reg.example/serving", _repo(tmp_path / "repo"))
    artifact = SimpleNamespace(
        path=ctx.archive, metadata={"content_hash": ctx.content_hash, "files": ctx.files}
    )
    got = json.loads(local_image_build_task(artifact, ctx.image, ""))
    assert got["status"] == "failed" and got["builder"] == "podman"
    assert "Resolved" in got["reason"]


def test_pipeline_image_requirements_follow_pyproject():
    import tomllib

    from edgeloop.pipelines.image_build import pinned_torch

    root = Path(__file__).resolve().parents[3]
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = [d for d in deps if not d.startswith(("torch==", "torchvision=="))]
    listed = [
        ln for ln in (root / "pipelines" / "requirements.txt").read_text().splitlines() if ln and ln[0] != "#"
    ]
    assert listed == wanted, "pipelines/requirements.txt is pyproject's dependencies less torch/torchvision"
    assert pinned_torch() == " ".join(sorted(d for d in deps if d.startswith(("torch==", "torchvision=="))))


def test_build_arguments_are_part_of_the_content_hash(tmp_path):
    src = _repo(tmp_path / "repo")
    plain = content_hash(src)
    assert content_hash(src, build_args={"BASE_IMAGE": "a"}) != content_hash(
        src, build_args={"BASE_IMAGE": "b"}
    )
    assert content_hash(src, build_args={}) == plain


def test_every_image_context_has_its_dockerfile_and_the_pipeline_image_no_test_kit():
    from edgeloop.pipelines.image_build import IMAGES

    for spec in IMAGES.values():
        files = context_files(spec.sources())
        assert spec.dockerfile in files, spec.name
    pipeline = context_files(IMAGES["edgeloop-pipeline"].sources())
    assert "requirements/constraints.txt" in pipeline and "edgeloop/pipelines/tasks.py" in pipeline
    assert "edgeloop/components/train.py" in pipeline and "edgeloop/cli.py" in pipeline
    assert not any(k.startswith("edgeloop/testing/") for k in pipeline)
    assert not any("/compiled/" in k for k in pipeline)


def test_torch_comes_from_local_cpu_wheels_when_the_cpu_index_is_unreachable(tmp_path, monkeypatch):
    from edgeloop.pipelines import image_build as ib

    monkeypatch.setattr(ib, "_reachable", lambda url, timeout_s=5.0: False)
    monkeypatch.setattr(ib, "_pip_find_links", lambda: [tmp_path])
    monkeypatch.setattr(ib, "_pip_local_indexes", lambda: [])
    (tmp_path / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    # a CPU torch alone is no use: PyPI's torchvision needs PyPI's CUDA torch
    with pytest.raises(ib.ImageBuildError, match="TORCH_INDEX_URL"):
        ib.torch_source()
    (tmp_path / "torchvision-0.28.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    src = ib.torch_source()
    assert src.requirement == "torch==2.13.0+cpu torchvision==0.28.0+cpu" and src.wheels == str(tmp_path)
    assert "unreachable" in src.note and "2.14.1" in src.note  # says what it uses instead of the pin


def test_torch_comes_from_a_local_pip_index_holding_the_pins_with_pypi_for_the_rest(tmp_path, monkeypatch):
    from edgeloop.pipelines import image_build as ib

    monkeypatch.setattr(ib, "_reachable", lambda url, timeout_s=5.0: False)
    monkeypatch.setattr(ib, "_pip_find_links", lambda: [])
    root = tmp_path / "pypi"
    monkeypatch.setattr(ib, "_pip_local_indexes", lambda: [root / "simple"])
    (root / "files").mkdir(parents=True)
    for name, version in (("torch", "2.14.1"), ("torchvision", "0.29.1")):
        wheel = f"{name}-{version}-cp311-cp311-manylinux_2_28_x86_64.whl"
        (root / "files" / wheel).write_bytes(b"")
        (root / "simple" / name).mkdir(parents=True)
        (root / "simple" / name / "index.html").write_text(
            f'<a href="../../files/{wheel}#sha256=00">{wheel}</a>'
        )
    src = ib.torch_source(requirement="torch==2.14.1 torchvision==0.29.1")
    assert src.wheels == str(root)  # the build context: the index with the files it links to
    assert src.build_args() == {
        "TORCH_INDEX_URL": "https://pypi.org/simple",
        "TORCH_REQUIREMENT": "torch==2.14.1 torchvision==0.29.1",
        "TORCH_EXTRA_INDEX_URL": "file:///wheels/simple",
    }
    assert "CUDA" in src.note and "CPU" in src.note
    # an index without the pinned torchvision is no source
    with pytest.raises(ib.ImageBuildError, match="no local index"):
        ib.torch_source(requirement="torch==2.14.1 torchvision==0.30.0")


def test_a_training_image_without_a_torch_source_is_skipped_with_the_reason(tmp_path, monkeypatch):
    from edgeloop.pipelines import image_build as ib

    def no_torch():
        raise ib.ImageBuildError("no CPU build of torch here")

    built: list[str] = []

    def fake_build(spec, out_dir, **kw):
        built.append(spec.name)
        return ib.BuiltImage(
            spec.name, f"localhost/{spec.name}:t", "h", "sha256:" + "0" * 64, "a", 1, "built", 0.0
        )

    monkeypatch.setattr(ib, "torch_source", no_torch)
    monkeypatch.setattr(ib, "build_image", fake_build)
    monkeypatch.setattr(ib, "resolve_base_image", lambda engine, requested: "base")
    lines: list[str] = []
    out = ib.build_images(tmp_path, ("edgeloop-training",), engine="podman", log=lines.append)
    assert built == ["edgeloop-pipeline"]  # the image it extends is built first
    assert [b.status for b in out] == ["built", "skipped"] and "no CPU build" in out[1].note
    assert set(ib.read_index(tmp_path)) == {"edgeloop-pipeline"}  # nothing unpinnable in the index
    assert any(line.startswith("skipped edgeloop-training") for line in lines)


def test_the_debian_mirror_comes_from_apt_sources(tmp_path):
    from edgeloop.pipelines.image_build import apt_mirror

    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n"
    )
    assert apt_mirror(tmp_path) == "http://mirror.example/debian"
    assert apt_mirror(tmp_path / "nothing") == "http://deb.debian.org/debian"


def test_no_engine_is_an_error_naming_the_fix():
    from edgeloop.pipelines.image_build import ImageBuildError, container_engine

    with pytest.raises(ImageBuildError, match="make setup"):
        container_engine(("definitely-not-an-engine",))


def test_a_failed_auto_approval_in_a_container_run_says_how_to_go_on(tmp_path, monkeypatch):
    """Otherwise await-approval would wait approval_timeout_s (a day) in silence."""
    import json
    import threading

    from edgeloop.core.config import load_settings
    from edgeloop.pipelines import registry, runner
    from edgeloop.pipelines.training_pipeline import PIPELINE_NAME

    def refuse(*args, **kwargs):
        raise registry.RegistryError("no signing key for edgeloop-auto")

    monkeypatch.setattr(registry, "record_decision", refuse)
    step = tmp_path / f"{PIPELINE_NAME}-1" / "register-model"
    step.mkdir(parents=True)
    (step / "executor_output.json").write_text(
        json.dumps({"parameterValues": {"version": "7", "gate_passed": True}})
    )
    said: list[str] = []
    settings = load_settings(state_dir=tmp_path / "state")
    runner._approve_when_registered(settings, tmp_path, set(), threading.Event(), said.append)
    assert len(said) == 1
    assert "auto-approval of version 7 failed" in said[0] and "no signing key" in said[0]
    assert f"edgeloop approve {settings.mlflow.registered_model} 7" in said[0]


def test_builds_trust_the_ca_bundle_this_machines_pip_trusts_without_any_environment(monkeypatch):
    """A fresh shell (CI, `env -i`) has no PIP_CERT: pip inside the build must still get this machine's CAs
    (a TLS-intercepting proxy's CA lives there), else every pip install in the build fails."""
    from edgeloop.pipelines import image_build

    for var in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        monkeypatch.delenv(var, raising=False)
    if not image_build.SYSTEM_CA_BUNDLE.is_file():
        pytest.skip("no system CA bundle on this machine")
    cert = image_build._cacert()
    assert cert is not None and Path(cert).is_file()
