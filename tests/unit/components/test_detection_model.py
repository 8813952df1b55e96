"""The detection library on a few seeded images: boxes follow the image through resize and flips, a
training step runs on both detectors, predictions come back as boxes and scores the COCO metrics read."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeloop.components.coco_eval import Detection, evaluate_detections
from edgeloop.components.dataset import DatasetRow
from edgeloop.components.detection import (
    DETECTORS,
    BoxDataset,
    build_detector,
    collate,
    predict,
    to_source,
    train_one_epoch,
)
from edgeloop.core.boxes import Box
from edgeloop.core.preprocessing import Preprocess, PreprocessConfig
from edgeloop.local.sample_data import DEFECT_CLASSES, generate_detection_dataset


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    root = tmp_path_factory.mktemp("det")
    samples = generate_detection_dataset(root, images=8, seed=5, size=96)
    return root, [
        DatasetRow(
            f"{i:064x}", m.file, "", "train", "az://x", boxes=[b.as_dict() for b in bs], width=96, height=96
        )
        for i, (m, bs) in enumerate(samples)
    ]


def test_boxes_are_scaled_to_the_model_size_and_flip_with_the_image(rows):
    root, data = rows
    plain = BoxDataset(data, root, DEFECT_CLASSES, Preprocess(PreprocessConfig(size=64)))
    i = next(k for k, r in enumerate(data) if r.boxes)
    b, src = plain.boxes[i][0], data[i].box_list()[0]
    assert (b.x, b.w) == pytest.approx((src.x * 64 / 96, src.w * 64 / 96))
    flipped = BoxDataset(
        data, root, DEFECT_CLASSES, Preprocess(PreprocessConfig(size=64)), augment=True, seed=1
    )
    for _ in range(20):  # until the draw flips horizontally only
        flipped.rng = np.random.default_rng(_)
        x, t = flipped[i]
        x0, y0, x1, y1 = t["boxes"][0].tolist()
        if abs(x0 - (64 - b.x - b.w)) < 1e-4 and abs(y0 - b.y) < 1e-4:
            break
    else:
        pytest.fail("no horizontal-only flip in 20 draws")
    assert (x1 - x0, y1 - y0) == pytest.approx((b.w, b.h), abs=1e-4)
    base, _ = plain[i]
    back = x.flip(-1)  # the image flipped back: the same picture up to the lighting gain
    assert float(torch.corrcoef(torch.stack([back.flatten(), base.flatten()]))[0, 1]) > 0.98


@pytest.mark.parametrize("arch", DETECTORS)
def test_a_training_step_and_predictions_on_each_detector(rows, arch):
    root, data = rows
    torch.manual_seed(0)
    ds = BoxDataset(data, root, DEFECT_CLASSES, Preprocess(PreprocessConfig(size=96)), augment=True)
    model = build_detector(arch, len(DEFECT_CLASSES), 96)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate)
    loss = train_one_epoch(model, loader, torch.optim.AdamW(model.parameters(), lr=1e-3), torch.device("cpu"))
    assert np.isfinite(loss) and loss > 0
    preds = predict(model, ds, torch.device("cpu"))
    assert len(preds) == len(ds)
    for dets in preds:
        for d in dets:
            assert d.box.label in DEFECT_CLASSES and 0 <= d.score <= 1 and d.box.w >= 0 and d.box.h >= 0
    m = evaluate_detections(ds.truth(), preds, DEFECT_CLASSES, bootstrap=0)
    assert 0.0 <= m.map_50 <= 1.0 and m.images == len(ds)


def test_detections_map_back_to_the_source_pixels():
    d = [Detection(Box("dent", 10, 20, 30, 40), 0.8)]
    assert to_source(d, 100, 640, 480) == [Detection(Box("dent", 64, 96, 192, 192), 0.8)]


def test_an_unknown_detector_names_the_known_ones():
    with pytest.raises(ValueError, match="ssdlite320_mobilenet_v3_large"):
        build_detector("yolo", 3, 96)


def test_the_detector_exports_to_onnx_with_its_post_processing_and_matches_torch(rows, tmp_path):
    """Trained a few steps so that it finds boxes; ONNX Runtime alone gives the same detections."""
    import onnxruntime as ort

    from edgeloop.components.detection_export import check_detection_parity, export_detector, run_detector

    root, data = rows
    torch.manual_seed(0)
    ds = BoxDataset(data, root, DEFECT_CLASSES, Preprocess(PreprocessConfig(size=96)))
    model = build_detector(DETECTORS[0], len(DEFECT_CLASSES), 96)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate)
    train_one_epoch(model, loader, torch.optim.AdamW(model.parameters(), lr=1e-3), torch.device("cpu"))
    path = export_detector(model, 96, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    boxes, scores, labels = run_detector(session, ds[0][0].numpy())
    assert boxes.dtype == np.float32 and boxes.shape[1:] == (4,) and labels.dtype == np.int64
    assert len(boxes) == len(scores) == len(labels)
    images = [ds[i][0] for i in range(len(ds))]
    report = check_detection_parity(model, session, images, score_threshold=0.0, box_tol=0.05)
    assert report.agreement == 1.0 and report.max_box_diff <= 0.05


def test_a_detector_whose_onnx_graph_disagrees_is_refused(rows, tmp_path):
    import onnxruntime as ort

    from edgeloop.components.detection_export import check_detection_parity, export_detector
    from edgeloop.components.errors import ParityError

    root, data = rows
    ds = BoxDataset(data, root, DEFECT_CLASSES, Preprocess(PreprocessConfig(size=96)))
    torch.manual_seed(0)
    exported = build_detector(DETECTORS[0], len(DEFECT_CLASSES), 96)
    session = ort.InferenceSession(
        str(export_detector(exported, 96, tmp_path / "m.onnx")), providers=["CPUExecutionProvider"]
    )
    torch.manual_seed(1)
    other = build_detector(DETECTORS[0], len(DEFECT_CLASSES), 96)  # other weights than the graph's
    with pytest.raises(ParityError, match="not shipped") as err:
        check_detection_parity(other, session, [ds[i][0] for i in range(4)], score_threshold=0.0)
    assert err.value.report["agreement"] < 1.0


def test_the_detector_quantizes_to_int8_without_litter_in_the_working_directory(rows, tmp_path, monkeypatch):
    """Symbolic shape inference gives up on NMS's data-dependent counts; its partial graph must not
    land in the directory the user ran edgeloop from."""
    import onnx
    import onnxruntime as ort

    from edgeloop.components.detection_export import export_detector, run_detector
    from edgeloop.components.precision import quantize_int8

    root, data = rows
    ds = BoxDataset(data, root, DEFECT_CLASSES, Preprocess(PreprocessConfig(size=96)))
    torch.manual_seed(0)
    fp32 = export_detector(build_detector(DETECTORS[0], len(DEFECT_CLASSES), 96), 96, tmp_path / "m.onnx")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    x = np.stack([ds[i][0].numpy() for i in range(4)])
    int8 = quantize_int8(fp32, tmp_path / "out" / "m.int8.onnx", x, op_types=("Conv", "MatMul", "Gemm"))
    assert list(cwd.iterdir()) == []
    assert sorted(p.name for p in int8.parent.iterdir()) == ["m.int8.onnx"]
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert "QuantizeLinear" in ops, sorted(ops)
    session = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    boxes, scores, labels = run_detector(session, x[0])
    assert boxes.shape[1:] == (4,) and len(boxes) == len(scores) == len(labels)
