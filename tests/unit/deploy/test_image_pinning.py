"""Every image the manifests name is built from a Dockerfile here and is pinned by digest when rendered."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgeloop.deploy.errors import RenderError
from edgeloop.deploy.render import image_name, pin_images, unpinned_images
from edgeloop.deploy.validate import validate_objects
from edgeloop.pipelines.image_build import IMAGES

from .conftest import REPO_ROOT

DIGESTS = {name: "sha256:" + f"{i:x}" * 64 for i, name in enumerate(IMAGES, start=1)}
DIGEST = "ab" * 32


def test_every_image_of_every_overlay_has_a_dockerfile_here(rendered_overlays):
    for overlay, objs in rendered_overlays.items():
        for ref in unpinned_images(objs):
            spec = IMAGES.get(image_name(ref))
            assert spec is not None, f"{overlay}: {ref} is built by no Dockerfile in this repository"
            assert (REPO_ROOT / spec.dockerfile.removeprefix("edgeloop/")).is_file(), ref


def test_pinned_overlays_name_digests_only_and_still_validate(rendered_overlays):
    for overlay, objs in rendered_overlays.items():
        pinned = pin_images(objs, DIGESTS)
        assert unpinned_images(pinned) == [], overlay
        refs = {h for o in pinned for h in json.dumps(o).split('"') if "@sha256:" in h}
        assert refs and all(r.startswith("ghcr.io/edgeloop/edgeloop-") for r in refs), refs
        validate_objects(pinned)
        assert unpinned_images(objs), "pinning copies; the rendered overlay is left as it was"


def test_an_image_missing_from_the_index_is_an_error_naming_make_images(rendered_overlays):
    partial = {k: v for k, v in DIGESTS.items() if k != "edgeloop-pipeline"}
    with pytest.raises(RenderError, match="edgeloop-pipeline.*make images"):
        pin_images(rendered_overlays["edge-cpu"], partial)


def test_render_with_the_images_index_pins_the_release(tmp_path, rendered_overlays):
    from edgeloop.cli import cli

    index = tmp_path / "index.json"
    index.write_text(json.dumps({n: {"digest": d} for n, d in DIGESTS.items()}))
    r = CliRunner().invoke(
        cli, ["deploy", "render", "edgeloop-inspection", "7", "--digest", DIGEST, "--images", str(index)]
    )
    assert r.exit_code == 0, r.output
    text = r.output
    assert f"ghcr.io/edgeloop/edgeloop-serving@{DIGESTS['edgeloop-serving']}" in text
    assert f"ghcr.io/edgeloop/edgeloop-training@{DIGESTS['edgeloop-training']}" in text
    assert f"ghcr.io/edgeloop/edgeloop-pipeline@{DIGESTS['edgeloop-pipeline']}" in text
    assert ":0.1.0" not in text
