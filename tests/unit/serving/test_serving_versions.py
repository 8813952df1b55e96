"""Loading with integrity checks, version/alias resolution, model URIs, the error table."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
from kserve.errors import InvalidInput, ModelNotFound
from prometheus_client import REGISTRY

from edgeloop.serving import errors
from edgeloop.serving.model import ModelVersions, load_version
from edgeloop.serving.providers import OrtSettings
from edgeloop.serving.sources import ModelSpec, resolve


def _integrity_count(model: str) -> float:
    return REGISTRY.get_sample_value("edgeloop_serving_integrity_failures_total", {"model": model}) or 0.0


def test_load_verifies_warms_up_and_describes(tiny_dirs):
    lv = load_version(tiny_dirs["1"], OrtSettings(), version="1")
    assert lv.version == "1" and lv.size == 64 and lv.has_embedding
    assert lv.describe()["execution_provider"] == "CPUExecutionProvider"
    probs, emb = lv.run(np.zeros((2, 3, 64, 64), np.float32))
    assert probs.shape == (2, 4) and emb.shape == (2, 8)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_a_changed_model_file_is_refused_and_counted(tiny_copy):
    path = tiny_copy / "model.onnx"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    before = _integrity_count("tampered")
    with pytest.raises(errors.IntegrityRefusedError, match="sha256"):
        load_version(tiny_copy, OrtSettings(), model_name="tampered")
    assert _integrity_count("tampered") == before + 1


def test_a_card_without_digests_is_refused(tiny_copy):
    card = json.loads((tiny_copy / "model_card.json").read_text())
    card["files"] = {}
    (tiny_copy / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(errors.IntegrityRefusedError, match="no digest"):
        load_version(tiny_copy, OrtSettings())


def test_labels_that_do_not_match_the_model_are_refused(tiny_copy):
    card = json.loads((tiny_copy / "model_card.json").read_text())
    card["labels"] = ["a", "b"]
    (tiny_copy / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(errors.ModelLoadError, match="2 labels"):
        load_version(tiny_copy, OrtSettings())


def test_version_and_alias_resolution(tiny_dirs):
    vs = ModelVersions("inspection")
    v1 = load_version(tiny_dirs["1"], OrtSettings(), version="1")
    v2 = load_version(tiny_dirs["2"], OrtSettings(), version="2")
    vs.add(v1)
    vs.add(v2, aliases=["candidate"])
    assert vs.resolve(None) is v1 and vs.resolve("") is v1 and vs.resolve("champion") is v1
    assert vs.resolve("2") is v2 and vs.resolve("candidate") is v2
    vs.set_alias("champion", "2")
    assert vs.resolve(None) is v2
    with pytest.raises(errors.VersionNotFoundError, match="versions: \\['1', '2'\\]"):
        vs.resolve("7")
    with pytest.raises(errors.ConflictError, match="champion"):
        vs.remove("2")
    with pytest.raises(errors.ConflictError, match="already serves"):
        vs.add(v1)
    with pytest.raises(errors.InvalidInputError):
        vs.set_alias("1", "2")  # an alias may not shadow a version id
    vs.remove("1")
    assert sorted(vs.versions) == ["2"]


def test_model_spec_fragment():
    spec = ModelSpec.parse("models:/inspection@candidate#version=7&alias=canary")
    assert spec.uri == "models:/inspection@candidate" and spec.version == "7" and spec.aliases == ("canary",)
    with pytest.raises(errors.ModelLoadError, match="unknown option"):
        ModelSpec.parse("/m#colour=red")


def test_resolve_local_dirs(tiny_dirs, tmp_path):
    assert resolve(str(tiny_dirs["1"])).directory == tiny_dirs["1"]
    assert resolve(str(tiny_dirs["1"].parent / "v2") + "#version=9").spec.version == "9"
    with pytest.raises(errors.ModelLoadError, match="does not exist"):
        resolve(str(tmp_path / "missing"))
    with pytest.raises(errors.ModelLoadError, match="no model_card.json"):
        resolve(str(tmp_path))
    with pytest.raises(errors.ModelLoadError, match="needs edgeloop settings"):
        resolve("models:/x@champion")


@pytest.mark.parametrize(
    "exc,http,code",
    [
        (errors.ShapeError("x"), 400, grpc.StatusCode.INVALID_ARGUMENT),
        (errors.UndecodableImageError("x"), 400, grpc.StatusCode.INVALID_ARGUMENT),
        (errors.PayloadTooLargeError("x"), 413, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.VersionNotFoundError("x"), 404, grpc.StatusCode.NOT_FOUND),
        (errors.IntegrityRefusedError("x"), 422, grpc.StatusCode.FAILED_PRECONDITION),
        (errors.OverloadedError("x"), 503, grpc.StatusCode.UNAVAILABLE),
        (InvalidInput("x"), 400, grpc.StatusCode.INVALID_ARGUMENT),
        (ModelNotFound("x"), 404, grpc.StatusCode.NOT_FOUND),
        (KeyError("secret internals"), 500, grpc.StatusCode.INTERNAL),
    ],
)
def test_one_table_maps_errors_to_statuses(exc, http, code):
    assert errors.http_status(exc) == http
    assert errors.grpc_status(exc) == code
    if http == 500:
        assert "secret" not in errors.public_message(exc)


def test_one_session_by_default_and_one_per_core_on_request(tiny_dirs):
    from edgeloop.core.model_loader import available_cpus

    single = load_version(tiny_dirs["1"], OrtSettings(), version="1")
    assert single.describe()["sessions"] == 1
    per_core = load_version(tiny_dirs["1"], OrtSettings(), version="1", sessions=0)
    assert per_core.describe()["sessions"] == available_cpus()
    x = np.zeros((2, 3, per_core.size, per_core.size), np.float32)
    np.testing.assert_allclose(per_core.run(x, full=False)[0], single.run(x)[0], atol=1e-6)
    assert len(per_core.run(x, full=False)) == 1 and len(single.run(x)) == 2
