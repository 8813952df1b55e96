"""Split stability, dataset versioning, and exclusion of bad images (in-memory blob store)."""

from __future__ import annotations

import hashlib
import json

from edgeloop.components.dataset import DatasetInfo, assign_split, build_dataset, dataset_version, load_rows
from edgeloop.components.labels import ManifestRow, write_manifest


def shas(n, prefix="x"):
    return [hashlib.sha256(f"{prefix}{i}".encode()).hexdigest() for i in range(n)]


def test_split_is_a_function_of_content_and_roughly_follows_fractions():
    ids = shas(3000)
    first = {s: assign_split(s) for s in ids}
    assert first == {s: assign_split(s) for s in reversed(ids)}
    share = {k: sum(v == k for v in first.values()) / len(ids) for k in ("train", "val", "test")}
    assert (
        abs(share["train"] - 0.7) < 0.03
        and abs(share["val"] - 0.2) < 0.03
        and abs(share["test"] - 0.1) < 0.03
    )


def test_version_ignores_order_and_changes_with_labels_or_images():
    rows = [(s, "ok") for s in shas(10)]
    v = dataset_version(rows)
    assert v == dataset_version(list(reversed(rows)))
    assert v != dataset_version([*rows[:-1], (rows[-1][0], "dent")])
    assert v != dataset_version([*rows, (shas(1, "new")[0], "ok")])
    assert v != dataset_version(rows, fractions=(0.8, 0.1, 0.1))


def test_rebuild_is_stable_and_adding_images_only_adds_rows(tmp_path, memory_store, rows_factory):
    make_rows = rows_factory
    rows = make_rows(memory_store, 5)
    m1 = write_manifest(rows, tmp_path / "m1.jsonl")
    a = build_dataset(None, m1, tmp_path / "a", store=memory_store, upload=False, log_mlflow=False)
    calls = memory_store.calls
    again = build_dataset(None, m1, tmp_path / "a", store=memory_store, upload=False, log_mlflow=False)
    assert again.version == a.version and again.counts == a.counts
    assert memory_store.calls == calls and again.cached == len(rows)  # verified local copies are reused
    assert (tmp_path / "a" / "index.jsonl").read_bytes() == (tmp_path / "a" / "index.jsonl").read_bytes()

    more = rows + make_rows(memory_store, 3, start=50)
    m2 = write_manifest(sorted(more, key=lambda r: r.sha256), tmp_path / "m2.jsonl")
    b = build_dataset(None, m2, tmp_path / "b", store=memory_store, upload=False, log_mlflow=False)
    assert b.version != a.version
    old = {(r.sha256, r.split) for r in load_rows(tmp_path / "a")}
    new = {(r.sha256, r.split) for r in load_rows(tmp_path / "b")}
    assert old < new and len(new - old) == 12  # every old image kept its split; only rows were added


def test_corrupt_missing_and_tampered_images_are_excluded_not_fatal(tmp_path, memory_store, rows_factory):
    make_rows = rows_factory
    rows = make_rows(memory_store, 3)
    corrupt = b"\x89PNG\r\n\x1a\n" + b"garbage" * 20
    csha = hashlib.sha256(corrupt).hexdigest()
    memory_store.put("az://images/test/corrupt.png", corrupt)
    memory_store.put("az://images/test/tampered.png", b"not what the manifest says")

    def extra(image, sha):
        return ManifestRow(
            image=image,
            sha256=sha,
            label="ok",
            annotator="t",
            annotated_at="",
            task_id=0,
            annotation_id=None,
            n_annotations=1,
            agreement=1.0,
        )

    rows += [
        extra("az://images/test/corrupt.png", csha),
        extra("az://images/test/missing.png", "0" * 64),
        extra("az://images/test/tampered.png", "1" * 64),
    ]
    m = write_manifest(rows, tmp_path / "m.jsonl")
    info = build_dataset(
        None, m, tmp_path / "ds", store=memory_store, upload=False, log_mlflow=False, retries=1
    )
    reasons = {e["image"].rsplit("/", 1)[1]: e["reason"] for e in info.excluded}
    assert set(reasons) == {"corrupt.png", "missing.png", "tampered.png"}
    assert reasons["corrupt.png"].startswith("undecodable")
    assert "missing" in reasons["missing.png"] and "sha256 mismatch" in reasons["tampered.png"]
    assert info.images == 12
    assert DatasetInfo.load(tmp_path / "ds").version == info.version
    assert all(
        json.loads(line)["sha256"] != csha
        for line in (tmp_path / "ds" / "index.jsonl").read_text().splitlines()
    )
