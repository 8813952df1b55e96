"""Annotation policies on crafted Label Studio exports."""

from __future__ import annotations

from edgeloop.components.labels import (
    LabelPolicy,
    read_manifest,
    resolve_export,
    resolve_task,
    write_manifest,
)


def ann(aid, label, when, cancelled=False, who=1, empty=False):
    result = (
        []
        if empty
        else [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]
    )
    return {
        "id": aid,
        "result": result,
        "was_cancelled": cancelled,
        "completed_by": who,
        "created_at": when,
        "updated_at": when,
    }


def task(tid, annotations, sha=None, predictions=()):
    sha = sha or f"{tid:064x}"
    return {
        "id": tid,
        "annotations": list(annotations),
        "predictions": list(predictions),
        "data": {
            "image": f"http://x/{sha}.png?sig",
            "blob_uri": f"az://images/s/{sha}.png",
            "sha256": sha,
            "lighting": "dim",
            "camera": "cam-a",
            "unrelated": "dropped",
        },
    }


def test_latest_takes_the_most_recent_valid_annotation():
    t = task(
        1,
        [
            ann(1, "ok", "2026-01-01T00:00:00Z"),
            ann(2, "dent", "2026-01-03T00:00:00Z"),
            ann(3, "scratch", "2026-01-04T00:00:00Z", cancelled=True),
        ],
    )
    res = resolve_task(t, LabelPolicy.LATEST, users={1: "ann@x"})
    assert res.row.label == "dent"
    assert res.row.annotation_id == 2
    assert res.row.annotator == "ann@x"
    assert res.row.annotated_at == "2026-01-03T00:00:00Z"
    assert res.row.agreement == 0.5 and res.row.n_annotations == 2
    assert res.cancelled == 1
    assert res.row.metadata == {"lighting": "dim", "camera": "cam-a"}
    assert res.row.image.startswith("az://images/")


def test_majority_wins_over_a_newer_minority_label():
    t = task(
        2,
        [
            ann(1, "stain", "2026-01-01T00:00:00Z"),
            ann(2, "stain", "2026-01-02T00:00:00Z"),
            ann(3, "ok", "2026-01-05T00:00:00Z"),
        ],
    )
    assert resolve_task(t, "latest").row.label == "ok"
    res = resolve_task(t, "majority")
    assert res.row.label == "stain"
    assert res.row.annotation_id == 2  # the newest annotation with the winning label
    assert res.row.agreement == round(2 / 3, 4)


def test_majority_tie_is_flagged_and_left_out():
    t = task(3, [ann(1, "ok", "2026-01-01T00:00:00Z"), ann(2, "dent", "2026-01-02T00:00:00Z")])
    rows, report = resolve_export([t], "majority")
    assert rows == []
    assert report.tied_tasks == [3]
    assert report.disagreeing_tasks == 1
    # the same task under "latest" is not a tie
    rows, report = resolve_export([t], "latest")
    assert [r.label for r in rows] == ["dent"] and report.tied_tasks == []


def test_cancelled_empty_and_unlabeled_are_skipped_and_counted(tmp_path):
    tasks = [
        task(1, [ann(1, "ok", "2026-01-01T00:00:00Z", cancelled=True)]),
        task(2, [ann(2, "ok", "2026-01-01T00:00:00Z", empty=True)]),
        task(3, []),
        task(
            4,
            [ann(4, "scratch", "2026-01-01T00:00:00Z")],
            predictions=[
                {
                    "id": 9,
                    "result": [{"type": "choices", "from_name": "label", "value": {"choices": ["ok"]}}],
                    "score": 0.7,
                    "model_version": "v3",
                    "created_at": "2026-01-01",
                }
            ],
        ),
    ]
    rows, report = resolve_export(tasks, "latest")
    assert [r.task_id for r in rows] == [4]
    assert rows[0].prediction == {"label": "ok", "score": 0.7, "model_version": "v3"}
    assert report.tasks == 4 and report.labeled_images == 1 and report.unlabeled_tasks == 3
    assert report.cancelled_annotations == 1 and report.empty_annotations == 1 and report.annotations == 3
    assert report.label_counts == {"scratch": 1}
    path = write_manifest(rows, tmp_path / "m.jsonl")
    assert read_manifest(path) == rows


def test_manifest_is_sorted_by_content_hash_and_deduplicated():
    a, b = "b" * 64, "a" * 64
    tasks = [
        task(1, [ann(1, "ok", "2026-01-01T00:00:00Z")], sha=a),
        task(2, [ann(2, "dent", "2026-01-01T00:00:00Z")], sha=b),
        task(3, [ann(3, "stain", "2026-02-01T00:00:00Z")], sha=a),
    ]  # same image, newer label
    rows, report = resolve_export(tasks)
    assert [r.sha256 for r in rows] == [b, a]
    assert rows[1].label == "stain"
    assert report.duplicate_images == 1
