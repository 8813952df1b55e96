"""What `edgeloop batch score` and `edgeloop model import` make of their arguments, before any service is reached."""

import json

import pytest
from click.testing import CliRunner

from edgeloop.cli import cli
from edgeloop.components.batch_score import BatchError, BatchPlan, Shard, model_uri, parse_out
from edgeloop.components.model_import import ImportSpec, ModelImportError, import_model
from edgeloop.testing.external import write_external_onnx


def test_model_names_become_registry_uris_and_uris_pass_through(tmp_path):
    assert model_uri("inspection@champion") == "models:/inspection@champion"
    assert model_uri("inspection/7") == "models:/inspection/7"
    assert model_uri("az://models/inspection/abc") == "az://models/inspection/abc"
    assert model_uri(str(tmp_path)) == str(tmp_path)


def test_out_prefix_defaults_to_the_images_container():
    assert parse_out("results/day1/", "images") == ("images", "results/day1")
    assert parse_out("az://scores/day1", "images") == ("scores", "day1")
    with pytest.raises(BatchError, match="names no prefix"):
        parse_out("az://scores/", "images")


def test_the_manifest_round_trips():
    plan = BatchPlan("c", "p", "o", "x", "models:/m@champion", "m", "3", "d" * 64, 2, [Shard(0, ["a", "b"])])
    again = BatchPlan.from_json(plan.to_json())
    assert again == plan and again.images == 2 and again.blob(again.shards[0].stem) == "x/shards/00000"


def test_import_refuses_a_dataset_it_cannot_use(tmp_path):
    raw = write_external_onnx(tmp_path / "m.onnx")
    spec = ImportSpec(name="v", labels=["ok", "scratch", "dent", "stain"])
    with pytest.raises(ModelImportError, match="not an edgeloop dataset"):
        import_model(None, raw, spec, tmp_path, tmp_path / "out", register=False)
    ds = tmp_path / "ds"
    ds.mkdir()
    row = {"sha256": "0", "file": "x.png", "label": "rust", "split": "test", "image": "az://i/x.png"}
    (ds / "index.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(ModelImportError, match=r"labels the model does not know: \['rust'\]"):
        import_model(None, raw, spec, ds, tmp_path / "out", register=False)
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "notes.txt").write_text("mine")
    with pytest.raises(ModelImportError, match="not a model directory"):
        import_model(None, raw, spec, ds, tmp_path / "keep", register=False)
    assert (tmp_path / "keep" / "notes.txt").read_text() == "mine"


def test_cli_flags_are_checked_before_any_work(tmp_path):
    raw = write_external_onnx(tmp_path / "m.onnx")
    base = ["model", "import", str(raw), "--name", "v", "--labels", "ok,scratch,dent,stain"]
    base += ["--dataset", str(tmp_path), "--no-register"]
    env = {"EDGELOOP_STATE_DIR": str(tmp_path / "state")}
    r = CliRunner().invoke(cli, [*base, "--mean", "0.5,0.5"], env=env)
    assert r.exit_code == 2 and "three comma-separated numbers" in r.output
    r = CliRunner().invoke(cli, [*base, "--gate", "min_acuracy=0.9"], env=env)
    assert r.exit_code == 2 and "min_accuracy" in r.output
    r = CliRunner().invoke(cli, [*base, "--labels", "ok,ok"], env=env)
    assert r.exit_code == 2 and "distinct" in r.output
