"""The in-cluster builder image builds rootless: buildah as user 1000, chroot isolation, vfs storage,
no daemon and no registry (base image and result as OCI archives), the flags of the pipeline's
buildah-build step. It labels the result with the content hash the step is given."""

from __future__ import annotations

import json
import tarfile

import pytest

from edgeloop.pipelines.image_build import HASH_LABEL, resolve_base_image
from edgeloop.testing.containers import run

pytestmark = [pytest.mark.containers, pytest.mark.slow]


def _config_labels(archive) -> dict:
    with tarfile.open(archive) as tar:
        index = json.load(tar.extractfile("index.json"))
        manifest_digest = index["manifests"][0]["digest"].split(":")[1]
        manifest = json.load(tar.extractfile(f"blobs/sha256/{manifest_digest}"))
        config = json.load(tar.extractfile(f"blobs/sha256/{manifest['config']['digest'].split(':')[1]}"))
    return config["config"].get("Labels") or {}


def test_the_builder_image_builds_rootless_as_user_1000(engine, images, tmp_path):
    builder = images("edgeloop-builder")
    ctx, out = tmp_path / "ctx", tmp_path / "out"
    ctx.mkdir()
    out.mkdir()
    (ctx / "Dockerfile").write_text(
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo built-rootless > /built && chown -R 0:0 /built\nUSER 1000\n"
    )
    run(
        engine,
        "save",
        "--format",
        "oci-archive",
        "-o",
        str(ctx / "base.tar"),
        resolve_base_image(engine, None),
    )
    for p in (tmp_path, ctx, *ctx.iterdir()):
        p.chmod(0o755 if p.is_dir() else 0o644)
    out.chmod(0o777)
    script = (
        "buildah build --isolation chroot --storage-driver vfs --build-arg BASE_IMAGE=oci-archive:/ctx/base.tar "
        f'--label "{HASH_LABEL}=0123abcd" -t localhost/probe:1 /ctx && '
        "buildah push --storage-driver vfs localhost/probe:1 oci-archive:/out/probe.tar"
    )
    r = run(
        engine,
        "run",
        "--rm",
        "--user",
        "1000:1000",
        "--network",
        "none",
        "-v",
        f"{ctx}:/ctx:ro",
        "-v",
        f"{out}:/out",
        "--entrypoint",
        "sh",
        builder,
        "-c",
        script,
        timeout=600,
        check=False,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert _config_labels(out / "probe.tar")[HASH_LABEL] == "0123abcd"
    user = run(engine, "image", "inspect", "--format", "{{.Config.User}}", builder).stdout.strip()
    assert user.split(":")[0] == "1000"
