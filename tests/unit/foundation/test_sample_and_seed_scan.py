import hashlib

import numpy as np
from PIL import Image

from edgeloop.core.labelstudio import classes_of, label_config
from edgeloop.local.sample_data import CLASSES, generate_dataset, read_metadata, render_tag
from edgeloop.local.seed import scan_directory


def _digest(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.rglob("*.png")}


def test_generator_is_seeded_and_balanced(tmp_path):
    a = generate_dataset(tmp_path / "a", per_class=3, seed=5, size=64)
    generate_dataset(tmp_path / "b", per_class=3, seed=5, size=64)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert sorted({m.label for m in a}) == sorted(CLASSES)
    assert len(read_metadata(tmp_path / "a")) == 12


def test_shifted_variant_is_darker_and_bluer():
    base = np.stack([np.asarray(render_tag(s, "ok", 64)) for s in range(8)]).astype(float)
    shifted = np.stack([np.asarray(render_tag(s, "ok", 64, shifted=True)) for s in range(8)]).astype(float)
    assert shifted.mean() < 0.8 * base.mean()
    assert shifted[..., 2].mean() / shifted[..., 0].mean() > base[..., 2].mean() / base[..., 0].mean()


def test_defects_change_the_image():
    ok = np.asarray(render_tag(11, "ok", 64)).astype(float)
    for label in ("scratch", "dent", "stain"):
        assert np.abs(np.asarray(render_tag(11, label, 64)).astype(float) - ok).mean() > 0.5


def test_scan_reads_classes_loose_images_and_counts_skips(tmp_path):
    generate_dataset(tmp_path, per_class=2, seed=1, size=32)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "loose.png")
    (tmp_path / "notes.txt").write_text("not an image")
    dup = next((tmp_path / "ok").glob("*.png"))
    (tmp_path / "ok" / "copy.png").write_bytes(dup.read_bytes())
    images, skipped, duplicates = scan_directory(tmp_path)
    labels = [i.label for i in images]
    assert labels.count(None) == 1 and labels.count("dent") == 2
    assert skipped == ["notes.txt"]
    assert duplicates == 1
    meta = next(i.meta for i in images if i.label == "ok")
    assert {"lighting", "camera", "variant"} <= set(meta)


def test_label_config_round_trip():
    assert classes_of(label_config(["ok", "scratch", 'we"ird'])) == ["ok", "scratch", 'we"ird']
