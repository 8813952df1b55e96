"""The FFmpeg-side resize decided by evidence, frame skipping counted, the decoder reported.

The agreement function on known cases (an identical path, a deliberately bad filter), the
processor's choice following the model card, predictions through the FFmpeg path equal to the
shared path's where the card allows it, and frames skipped by policy counted apart from drops.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from edgeloop.cli import cli
from edgeloop.core.model_card import ModelCard
from edgeloop.core.model_loader import verify_model
from edgeloop.stream.predictors import OnnxPredictor
from edgeloop.stream.processor import StreamConfig, StreamProcessor
from edgeloop.stream.publisher import CountingSink
from edgeloop.stream.queues import DropPolicy
from edgeloop.stream.resize import (
    AGREEMENT_THRESHOLD,
    ResizeMode,
    ResizePath,
    choose_resize,
    record_resize_agreement,
    resize_agreement,
)
from edgeloop.stream.sources import ReaderConfig, SourceSpec, choose_hwaccel, hardware_decoders
from edgeloop.testing.media import make_video
from edgeloop.testing.models import build_linear_model_dir

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]  # one class each for the colour model
BAD_FILTER = "negate,scale=32:32,format=rgb24"


def _colour_images(n: int, width: int, height: int, seed: int = 0) -> list[np.ndarray]:
    """Noisy frames whose mean colour is one of COLOURS in turn, with a moving grey square."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = np.empty((height, width, 3), dtype=np.int16)
        img[:] = COLOURS[(i // 5) % len(COLOURS)]
        img += rng.integers(-40, 40, size=img.shape, dtype=np.int16)
        side = height // 4
        x = (i * 7) % (width - side)
        img[side : 2 * side, x : x + side] = 128
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def _encode(path: Path, frames: list[np.ndarray], fps: int, gop: int | None = None) -> Path:
    return make_video(path, frames=frames, fps=fps, gop=gop)


@pytest.fixture(scope="module")
def colour_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Mean colour -> class (red, green, blue): confident away from grey, as a trained model is."""
    weights = np.eye(3, dtype=np.float32) * 8.0
    return build_linear_model_dir(
        tmp_path_factory.mktemp("colour-model"), labels=("red", "green", "blue"), size=32, weights=weights
    )


@pytest.fixture(scope="module")
def colour_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 s at 30 fps, 320x240: 90 frames, the class changing every 5 frames."""
    return _encode(tmp_path_factory.mktemp("colour-video") / "cam.mp4", _colour_images(90, 320, 240), fps=30)


def _with_evidence(model: Path, out: Path, filter: str | None = None) -> Path:
    """A copy of ``model`` whose card records the agreement measured with ``filter``."""
    import shutil

    shutil.copytree(model, out)
    if filter is None:
        record_resize_agreement(out, _colour_images(200, 96, 64, seed=1))
    else:
        r = resize_agreement(out, _colour_images(200, 96, 64, seed=1), filter=filter)
        card = ModelCard.load(out)
        card.model_copy(update={"stream_resize": r.card_fields()}).save(out)
    return out


def _run(model: Path, video: Path, resize: ResizeMode = ResizeMode.AUTO, **reader: Any):
    predictor = OnnxPredictor(model)
    config = StreamConfig(
        drop_policy=DropPolicy.BLOCK,
        queue_size=16,
        resize=resize,
        reader=ReaderConfig(realtime=False, **reader),
    )
    proc = StreamProcessor([SourceSpec.parse(f"cam={video}")], predictor, None, config)
    sink = CountingSink(proc.stats_for, keep=True)
    proc.sink = sink
    summary = proc.run(duration_s=60)
    results = {m["frame_index"]: m for m in (json.loads(p) for _, p in sink.messages)}
    return proc, summary, results


# -- the agreement function ------------------------------------------------------------------------


def test_an_identical_path_agrees_on_every_image(colour_model: Path):
    images = _colour_images(40, 80, 60)
    # no scaling in FFmpeg and no YUV round trip: the rest of the shared preprocessing does it all
    r = resize_agreement(colour_model, images, filter="format=rgb24", source_format="rgb24", min_images=40)
    assert (r.agreement, r.n, r.agreeing, r.allowed) == (1.0, 40, 40, True)
    # by default 40 of 40 is too little evidence for a 0.995 rule
    assert not resize_agreement(colour_model, images, filter="format=rgb24", source_format="rgb24").allowed
    assert r.max_abs_pixel_diff == 0


def test_the_default_ffmpeg_filter_is_allowed_for_a_confident_model(colour_model: Path):
    r = resize_agreement(colour_model, _colour_images(200, 96, 64))
    assert r.allowed and r.agreement >= AGREEMENT_THRESHOLD and r.n == 200
    assert "ffmpeg" not in r.card_fields()  # this machine's FFmpeg build stays out of the model digest
    assert r.filter.startswith("scale=32:32:") and r.source_format == "yuv420p"
    assert 0 < r.mean_abs_pixel_diff < 3  # a grey level or two, not the same pixels


def test_a_bad_filter_disagrees_and_is_not_allowed(colour_model: Path):
    r = resize_agreement(colour_model, _colour_images(60, 96, 64), filter=BAD_FILTER)
    assert r.agreement < 0.5 and not r.allowed and r.filter == BAD_FILTER
    empty = resize_agreement(colour_model, [])
    assert (empty.n, empty.allowed) == (0, False)  # no evidence is no permission


# -- the processor's choice follows the card -----------------------------------------------------------


def test_the_choice_follows_the_card_and_the_override():
    allowed = {
        "agreement": 1.0,
        "n": 260,
        "allowed": True,
        "threshold": 0.995,
        "filter": "scale=64:64,format=rgb24",
    }
    refused = {**allowed, "agreement": 0.93, "allowed": False}
    assert choose_resize(None).path is ResizePath.SHARED
    c = choose_resize(allowed)
    assert c.path is ResizePath.FFMPEG and c.filter == "scale=64:64,format=rgb24" and "n=260" in c.reason
    assert choose_resize(refused).path is ResizePath.SHARED
    assert "does not allow" in choose_resize(refused).reason
    assert choose_resize(allowed, ResizeMode.SHARED).path is ResizePath.SHARED
    forced = choose_resize(refused, "ffmpeg")
    assert forced.path is ResizePath.FFMPEG and "against the model card" in forced.reason


def test_a_bad_filter_makes_the_processor_fall_back_to_shared(colour_model, colour_video, tmp_path):
    model = _with_evidence(colour_model, tmp_path / "bad", BAD_FILTER)
    verify_model(model)  # the card's files still verify
    proc, summary, results = _run(model, colour_video)
    assert proc.resize_choice.path is ResizePath.SHARED
    assert summary.preprocessing["path"] == "shared" and "does not allow" in summary.preprocessing["reason"]
    assert summary.sources[0]["decoder"]["resize"] == "shared"
    assert len(results) == 90
    assert "resize: shared (model card does not allow" in summary.table()


def test_ffmpeg_path_predictions_equal_the_shared_paths_where_allowed(colour_model, colour_video, tmp_path):
    model = _with_evidence(colour_model, tmp_path / "good")
    assert ModelCard.load(model).stream_resize["allowed"]
    proc, summary, fast = _run(model, colour_video)
    assert proc.resize_choice.path is ResizePath.FFMPEG
    assert summary.sources[0]["decoder"]["resize"] == "ffmpeg"
    _, shared_summary, slow = _run(model, colour_video, ResizeMode.SHARED)
    assert shared_summary.preprocessing["path"] == "shared"
    assert sorted(fast) == sorted(slow) == list(range(90))
    assert [fast[i]["label"] for i in range(90)] == [slow[i]["label"] for i in range(90)]
    assert {fast[i]["label"] for i in range(90)} == {"red", "green", "blue"}  # the answers do vary


def test_staging_records_the_agreement_before_the_digest(sample_dir: Path, tmp_path: Path):
    from edgeloop.pipelines.staging import load_split_images, stage_model
    from edgeloop.testing.datasets import sample_dataset_dir

    dataset = sample_dataset_dir(sample_dir, tmp_path / "dataset")
    model = build_linear_model_dir(tmp_path / "model", size=32)
    staged = stage_model(model, tmp_path / "staged", dataset)
    evidence = ModelCard.load(staged).stream_resize
    assert evidence is not None and evidence["n"] == len(load_split_images(dataset, "test")) > 0
    assert set(evidence) >= {"agreement", "n", "allowed", "filter"}
    card = verify_model(staged).card  # the staged model still verifies, and its digest covers the evidence
    assert card.digest() != ModelCard.load(model).digest()


# -- frame skipping and decoding ---------------------------------------------------------------------------


def test_fps_skipping_is_counted_and_no_frame_disappears(colour_model, colour_video):
    proc, summary, results = _run(colour_model, colour_video, fps=10)
    s = summary.sources[0]
    # a 30 fps source at 10 fps: 2 of every 3 frames skipped before any conversion
    assert s["frames_decoded"] == 90 and s["frames_in"] == 30 and s["frames_skipped_by_fps"] == 60
    assert s["frames_decoded"] == s["frames_in"] + s["skipped_total"]
    assert s["frames_in"] == s["frames_processed"] + s["dropped_total"] and s["dropped_total"] == 0
    assert sorted(results) == list(range(0, 90, 3))
    reg = proc.metrics.registry
    assert (
        reg.get_sample_value("edgeloop_stream_frames_skipped_total", {"source": "cam", "reason": "fps"}) == 60
    )
    assert "skipped" in summary.table().splitlines()[0]


def test_keyframes_only_skips_without_decoding_and_counts(colour_model, tmp_path):
    video = _encode(tmp_path / "gop10.mp4", _colour_images(60, 160, 120), fps=30, gop=10)
    _, summary, results = _run(colour_model, video, keyframes_only=True)
    s = summary.sources[0]
    assert s["frames_decoded"] == s["frames_in"] == len(results) == 6  # one key frame every 10
    assert s["frames_skipped"] == {"not_keyframe": 54} and s["skipped_total"] == 54
    assert sorted(results) == list(range(0, 60, 10))
    assert s["decoder"]["keyframes_only"] is True


def test_hardware_decode_only_where_present_and_reported(colour_model, colour_video):
    found = hardware_decoders()
    assert set(found) <= {"cuda", "vaapi"}
    assert choose_hwaccel("none") == (None, "software decode (--hwaccel none)")
    for hw in ("cuda", "vaapi"):
        chosen, why = choose_hwaccel(hw)
        assert (chosen == hw) == (hw in found) and (hw in why)
    _, summary, _ = _run(colour_model, colour_video, hwaccel="none", decode_threads=2)
    d = summary.sources[0]["decoder"]
    assert d["hwaccel"] == "none" and d["threads"] == 2 and d["codec"] == "h264"
    assert "h264 in software, 2 thread(s)" in summary.table()


def test_cli_resize_override_is_reported(colour_model, colour_video, tmp_path):
    out = tmp_path / "summary.json"
    result = CliRunner().invoke(
        cli,
        [
            "stream",
            "--model",
            str(colour_model),
            "--no-mqtt",
            "--no-realtime",
            "--drop-policy",
            "block",
            "--resize",
            "ffmpeg",
            "--fps",
            "10",
            "--summary-json",
            str(out),
            f"cam={colour_video}",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "resize: ffmpeg (--resize ffmpeg (the model card records no agreement))" in result.output
    summary = json.loads(out.read_text())
    assert summary["preprocessing"]["path"] == "ffmpeg"
    assert (
        summary["sources"][0]["frames_skipped"] == {"fps": 60}
        and summary["sources"][0]["frames_processed"] == 30
    )
