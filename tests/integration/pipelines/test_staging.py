"""Staging evaluation through the real model server (started for the test) on a tiny ONNX model."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeloop.pipelines.gate import GateThresholds
from edgeloop.pipelines.staging import StagingResult, run_staging_evaluation, stage_model
from edgeloop.testing.datasets import sample_dataset_dir
from edgeloop.testing.models import build_linear_model_dir


@pytest.fixture(scope="module")
def dataset_dir(sample_dir: Path) -> Path:
    return sample_dataset_dir(sample_dir, sample_dir.parent / "dataset")


def test_staging_evaluation_through_real_server(dataset_dir: Path, tmp_path: Path):
    model = build_linear_model_dir(tmp_path / "model", size=32)
    staged = stage_model(model, tmp_path / "staged", dataset_dir)
    assert (staged / "reference_profile.npz").exists()  # monitoring's reference, stored with the model
    result = run_staging_evaluation(
        None,
        dataset_dir,
        staged,
        reference_model_dir=model,
        # a tiny untrained model on ~32 test images: the loop is tested, not quality or evidence
        thresholds=GateThresholds(min_accuracy=0.0, min_class_recall=0.0, max_ece=1.0, min_eval_images=0),
        latency_requests=40,
        compare_with_champion=False,
    )
    r = result.report
    n_test = sum(1 for x in (dataset_dir / "index.jsonl").read_text().splitlines() if '"split": "test"' in x)
    assert r.n == n_test and sum(map(sum, r.confusion_matrix)) == n_test
    assert (
        r.latency is not None and r.latency.n == max(40, n_test) and 0 < r.latency.p50_ms <= r.latency.p99_ms
    )
    # the server's answers match the in-process fp32 reference: same model, same preprocessing
    assert r.parity is not None and r.parity.top1_agreement == 1.0 and r.parity.max_abs_diff < 1e-4
    assert set(r.slices) == {"lighting", "camera"} and sum(s.n for s in r.slices["camera"].values()) == n_test
    assert result.decision.passed, result.decision.reasons
    assert "Gate: PASS" in result.markdown and "latency through the staging server" in result.markdown
    again = StagingResult.from_json(result.to_json())
    assert again.report.digest() == r.digest()


def test_staging_fails_clearly_without_test_images(tmp_path: Path):
    from edgeloop.pipelines.staging import StagingError

    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "index.jsonl").write_text("")
    model = build_linear_model_dir(tmp_path / "model")
    with pytest.raises(StagingError, match="no test images"):
        run_staging_evaluation(None, tmp_path / "ds", model, compare_with_champion=False)
