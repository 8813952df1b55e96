"""Sources: spec parsing, fps sampling, backoff, and a clear error for each kind of bad source."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeloop.core.errors import EdgeloopError
from edgeloop.core.preprocessing import Preprocess, PreprocessConfig
from edgeloop.stream.queues import DropPolicy, Scheduler
from edgeloop.stream.sources import (
    FpsSampler,
    ReaderConfig,
    SourceKind,
    SourceReader,
    SourceSpec,
    backoff_delay,
    unique_names,
)
from edgeloop.stream.stats import SourceState, SourceStats, StreamMetrics


def test_parse_names_kinds_and_defaults(tmp_path: Path):
    (tmp_path / "imgs").mkdir()
    assert SourceSpec.parse("cam1=rtsp://10.0.0.5:554/live") == SourceSpec(
        "cam1", "rtsp://10.0.0.5:554/live", SourceKind.NETWORK
    )
    # '=' inside a URL's query is not a name
    s = SourceSpec.parse("http://host:8080/live.ts?token=abc")
    assert (s.kind, s.uri, s.name) == (
        SourceKind.NETWORK,
        "http://host:8080/live.ts?token=abc",
        "host-8080-live.ts",
    )
    assert SourceSpec.parse(str(tmp_path / "line a.mp4")).name == "line-a"  # topic-safe
    assert SourceSpec.parse(str(tmp_path / "imgs")).kind == SourceKind.IMAGES
    assert SourceSpec.parse(f"file://{tmp_path}/x.mkv").kind == SourceKind.FILE
    with pytest.raises(EdgeloopError, match="unsupported scheme 'ftp'"):
        SourceSpec.parse("ftp://host/x.mp4")


def test_duplicate_names_get_suffixes():
    specs = [SourceSpec.parse("a.mp4"), SourceSpec.parse("dir/a.mp4"), SourceSpec.parse("b.mp4")]
    assert [s.name for s in unique_names(specs)] == ["a", "a-2", "b"]


def test_fps_sampler_keeps_the_target_rate():
    sampler = FpsSampler(10)
    kept = [i for i in range(90) if sampler.keep(i / 30)]  # 3 s at 30 fps
    assert len(kept) == 30
    assert kept[:4] == [0, 3, 6, 9]
    assert all(FpsSampler(None).keep(t / 30) for t in range(10))


def test_backoff_grows_and_is_capped():
    rng = random.Random(0)
    delays = [backoff_delay(a, 0.5, 8.0, rng) for a in range(1, 9)]
    assert 0.4 <= delays[0] <= 0.6
    assert delays[3] > delays[1] > delays[0]
    assert max(delays) <= 8.0 * 1.2


def _read(spec: SourceSpec, **cfg) -> tuple[SourceReader, SourceStats, list]:
    metrics = StreamMetrics()
    stats = SourceStats(spec.name, metrics, queue_capacity=1000)
    sched = Scheduler()
    q = sched.add_queue(spec.name, 1000, DropPolicy.BLOCK, stats)
    reader = SourceReader(
        spec,
        q,
        stats,
        Preprocess(PreprocessConfig(size=32)).resize,
        ReaderConfig(realtime=False, reconnect_initial_s=0.05, **cfg),
        threading.Event(),
    )
    reader.run()
    frames = []
    while (b := sched.take_batch(1000, timeout=0.01)) is not None:
        frames.extend(b[1])
    return reader, stats, frames


def test_video_file_is_decoded_resized_and_finishes(short_video: Path):
    reader, stats, frames = _read(SourceSpec.parse(str(short_video)))
    assert stats.state == SourceState.FINISHED
    assert [f.index for f in frames] == list(range(30))
    assert frames[0].image.shape == (32, 32, 3) and frames[0].image.dtype == np.uint8
    assert frames[1].media_time == pytest.approx(1 / 15, abs=1e-3)
    assert stats.frames_in == 30 and stats.decode_time.count == 30


def test_fps_sampling_on_a_file(short_video: Path):
    _, stats, frames = _read(SourceSpec.parse(str(short_video)), fps=5)
    assert [f.index for f in frames] == list(range(0, 30, 3))
    assert stats.skipped == 20 and stats.frames_in == 10


@pytest.mark.parametrize(
    "case, kind, message",
    [
        ("missing", "not_found", "does not exist"),
        ("corrupt", "corrupt", "not a readable video"),
        ("codec", "unsupported_codec", "no decoder for its video codec"),
        ("audio", "no_video", "has no video stream"),
        ("empty_dir", "empty", "holds no images"),
    ],
)
def test_bad_sources_fail_with_a_clear_error(
    tmp_path: Path, short_video: Path, case: str, kind: str, message: str
):
    path = _bad_source(tmp_path, case)
    reader, stats, frames = _read(SourceSpec.parse(f"bad={path}"))
    assert stats.state == SourceState.FAILED
    assert reader.error is not None and reader.error.kind == kind and reader.error.permanent
    assert message in str(reader.error) and str(reader.error).startswith("source bad: ")
    assert stats.errors[kind] == 1 and message in stats.last_error
    assert frames == []


def test_unreachable_network_source_retries_then_gives_up():
    reader, stats, _ = _read(SourceSpec.parse("cam=http://127.0.0.1:9/live.ts"), max_retries=2)
    assert stats.state == SourceState.FAILED
    assert stats.reconnects == 2
    assert stats.errors["unreachable"] == 3
    assert "cannot connect to http://127.0.0.1:9/live.ts" in stats.last_error
    assert "gave up after 2 failed reconnects" in str(reader.error)


def test_image_directory_skips_unreadable_images_and_counts_them(tmp_path: Path):
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(tmp_path / f"{i:03d}.png")
    (tmp_path / "002.png").write_bytes(b"not a png")
    (tmp_path / "notes.txt").write_text("ignored")
    _, stats, frames = _read(SourceSpec.parse(str(tmp_path)))
    assert stats.state == SourceState.FINISHED
    assert [f.index for f in frames] == [0, 1, 3]
    assert stats.dropped["decode_error"] == 1
    assert stats.frames_in == 4  # entered, then counted as dropped: the ledger balances
    assert frames[0].image.shape == (32, 32, 3)


def _bad_source(tmp_path: Path, case: str) -> Path:
    import av

    from edgeloop.testing.media import make_video

    if case == "missing":
        return tmp_path / "missing.mp4"
    if case == "corrupt":
        path = tmp_path / "corrupt.mp4"
        path.write_bytes(np.random.default_rng(1).bytes(20_000))
        return path
    if case == "codec":
        # an AVI whose fourcc names a codec no decoder knows
        src = make_video(tmp_path / "src.avi", seconds=0.5, fps=10, codec="mpeg4")
        data = src.read_bytes()
        assert b"FMP4" in data
        path = tmp_path / "unknown-codec.avi"
        path.write_bytes(data.replace(b"FMP4", b"QQQQ"))
        return path
    if case == "audio":
        path = tmp_path / "audio.wav"
        with av.open(str(path), "w") as c:
            s = c.add_stream("pcm_s16le", rate=8000)
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
            frame.sample_rate = 8000
            for p in s.encode(frame):
                c.mux(p)
            for p in s.encode():
                c.mux(p)
        return path
    if case == "empty_dir":
        d = tmp_path / "empty"
        d.mkdir()
        return d
    raise AssertionError(case)
