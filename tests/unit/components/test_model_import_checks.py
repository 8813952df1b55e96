"""`edgeloop model import`'s graph validation and rewrite, on raw .onnx files written with onnx.helper."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgeloop.components.model_import import ImportSpec, ModelImportError, import_onnx
from edgeloop.core.model_card import EMBEDDING_OUTPUT, INPUT_NAME, PROBS_OUTPUT, ModelCard
from edgeloop.core.model_loader import open_model
from edgeloop.core.preprocessing import Preprocess
from edgeloop.monitoring.model import ModelRunner
from edgeloop.testing.external import write_external_onnx

LABELS = ["ok", "scratch", "dent", "stain"]


def _images(n: int, size: int = 40) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def test_imported_model_answers_like_the_source_under_the_standard_interface(tmp_path):
    raw = write_external_onnx(tmp_path / "vendor.onnx", feature_name="feat", batch=1, opset=18)
    card, v = import_onnx(raw, tmp_path / "m", ImportSpec(name="vendor", labels=LABELS, embedding="feat"))
    # the directory opens through the one loader (digests recorded) with edgeloop's tensor names
    opened = open_model(tmp_path / "m")
    assert [i.name for i in opened.session.get_inputs()] == [INPUT_NAME]
    assert [o.name for o in opened.session.get_outputs()] == [PROBS_OUTPUT, EMBEDDING_OUTPUT]
    assert card.lineage["origin"] == "imported" and card.lineage["source_input"] == "pixel_values"
    assert card.preprocessing.size == 32 and card.embedding_dim == 3 and v.batch_axis_made_dynamic
    # same numbers as the vendor's own graph, on a batch of 5 (its batch axis was fixed at 1)
    images = _images(5)
    x = Preprocess(card.preprocessing).batch(images)
    src = ort.InferenceSession(str(raw))
    want = np.concatenate([src.run(["scores"], {"pixel_values": x[i : i + 1]})[0] for i in range(5)])
    out = ModelRunner(tmp_path / "m").run(images)
    np.testing.assert_allclose(out.probabilities, want, rtol=1e-5, atol=1e-6)
    assert out.embeddings.shape == (5, 3)


def test_logits_get_a_softmax_only_when_asked(tmp_path):
    raw = write_external_onnx(tmp_path / "logits.onnx", softmax=False, extra_outputs=["aux"])
    spec = {"name": "vendor", "labels": LABELS, "probabilities": "scores"}
    with pytest.raises(ModelImportError, match="not probabilities.*--softmax"):
        import_onnx(raw, tmp_path / "a", ImportSpec(**spec))
    card, v = import_onnx(raw, tmp_path / "b", ImportSpec(**spec, softmax=True))
    assert v.dropped_outputs == ["aux"] and card.outputs == [PROBS_OUTPUT] and card.embedding_dim is None
    images = _images(4)
    x = Preprocess(card.preprocessing).batch(images)
    logits = ort.InferenceSession(str(raw)).run(["scores"], {"pixel_values": x})[0]
    p = ModelRunner(tmp_path / "b").run(images).probabilities
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)
    assert (p.argmax(1) == logits.argmax(1)).all()


def test_a_tensor_already_named_like_the_standard_names_is_moved_aside(tmp_path):
    raw = write_external_onnx(
        tmp_path / "named.onnx", input_name="x", output_name="probabilities", feature_name="images"
    )
    card, _ = import_onnx(raw, tmp_path / "m", ImportSpec(name="v", labels=LABELS, embedding="images"))
    out = ModelRunner(tmp_path / "m").run(_images(2))
    assert out.probabilities.shape == (2, 4) and out.embeddings.shape == (2, 3)


@pytest.mark.parametrize(
    ("write", "spec", "message"),
    [
        ({}, {"labels": ["ok", "scratch", "dent"]}, "4 classes but --labels names 3"),
        ({}, {"size": 64}, "--size 64 but input 'pixel_values' takes 32x32"),
        ({"size": "s"}, {}, "dynamic spatial size.*--size S"),
        ({"channels": 1}, {}, "takes 1 channels"),
        ({"extra_outputs": ["aux"]}, {}, "2 outputs.*--probabilities NAME"),
        ({}, {"probabilities": "nope"}, "--probabilities 'nope'"),
        ({}, {"embedding": "nope"}, "--embedding 'nope'"),
        ({}, {"input": "nope"}, "--input 'nope'"),
    ],
)
def test_refusals_name_the_fix(tmp_path, write, spec, message):
    raw = write_external_onnx(tmp_path / "m.onnx", **write)
    with pytest.raises(ModelImportError, match=message):
        import_onnx(raw, tmp_path / "out", ImportSpec(**{"name": "v", "labels": LABELS, **spec}))
    assert not (tmp_path / "out" / "model_card.json").exists()


def test_not_onnx_and_bad_flags_are_refused(tmp_path):
    bad = tmp_path / "junk.onnx"
    bad.write_bytes(b"\x00not a model")
    with pytest.raises(ModelImportError, match="not a valid ONNX model"):
        import_onnx(bad, tmp_path / "o", ImportSpec(name="v", labels=LABELS))
    with pytest.raises(ModelImportError, match="not a file"):
        import_onnx(tmp_path / "missing.onnx", tmp_path / "o", ImportSpec(name="v", labels=LABELS))
    with pytest.raises(ModelImportError, match="distinct"):
        ImportSpec(name="v", labels=["ok", "ok"])
    with pytest.raises(ModelImportError, match="registry name"):
        ImportSpec(name="a/b", labels=LABELS)


def test_uint8_input_is_refused(tmp_path):
    raw = write_external_onnx(tmp_path / "m.onnx")
    model = onnx.load(str(raw))
    model.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.UINT8
    path = tmp_path / "u8.onnx"
    path.write_bytes(model.SerializeToString())  # no checker: the type error is ours to report
    with pytest.raises(ModelImportError, match="uint8|not a valid"):
        import_onnx(path, tmp_path / "o", ImportSpec(name="v", labels=LABELS))


def test_card_digest_covers_the_rewritten_model(tmp_path):
    raw = write_external_onnx(tmp_path / "m.onnx")
    card, _ = import_onnx(
        raw, tmp_path / "m", ImportSpec(name="v", labels=LABELS, mean=(0.5,) * 3, std=(0.5,) * 3)
    )
    again = ModelCard.load(tmp_path / "m")
    assert again.digest() == card.digest() and again.preprocessing.mean == (0.5, 0.5, 0.5)
    assert Path(tmp_path / "m" / "model.onnx").read_bytes() != raw.read_bytes()
