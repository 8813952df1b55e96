"""The payload logger samples, never blocks the request path, and writes the shared record format."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
from PIL import Image

from edgeloop.core.preprocessing import Preprocess, PreprocessConfig
from edgeloop.serving.payload_logger import PayloadLogger
from edgeloop.testing.media import random_frames

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_records_and_images_are_written_in_the_payload_log_format():
    written = []
    pl = PayloadLogger(
        lambda model, recs, imgs: written.append((model, recs, imgs)),
        "payloads",
        sample_rate=1.0,
        flush_s=0.05,
    )
    pl.start()
    frames = random_frames(2, 16)
    probs = np.array([[0.9, 0.1], [0.2, 0.8]], np.float32)
    assert pl.offer("m", "3", ["ok", "dent"], probs, None, frames, None, MEAN, STD, "rid") == 2
    pl.close()
    ((model, recs, imgs),) = written
    assert model == "m" and [r.label for r in recs] == ["ok", "dent"] and recs[0].version == "3"
    assert recs[1].score == np.float32(0.8) and recs[0].request_id == "rid"
    png = imgs[recs[0].image_sha256]
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), frames[0])
    assert recs[0].image_uri == f"az://payloads/images/{recs[0].image_sha256}.png"


def test_normalised_input_is_logged_as_the_pixels_it_came_from():
    written = []
    pl = PayloadLogger(lambda m, r, i: written.append(i), "p", sample_rate=1.0, flush_s=0.05)
    pl.start()
    frames = random_frames(1, 16)
    x = Preprocess(PreprocessConfig(size=16)).normalize_batch(frames)
    pl.offer("m", "1", ["ok"], np.ones((1, 2), np.float32), None, None, x, MEAN, STD)
    pl.close()
    png = next(iter(written[0].values()))
    assert np.abs(np.asarray(Image.open(io.BytesIO(png))).astype(int) - frames[0]).max() <= 1


def test_a_full_queue_drops_and_counts_without_blocking():
    gate = threading.Event()

    def stuck_writer(m, r, i):
        gate.wait(10)

    pl = PayloadLogger(stuck_writer, "p", sample_rate=1.0, queue_size=4, batch_records=1, flush_s=0.01)
    pl.start()
    frames = random_frames(20, 8)
    t0 = time.perf_counter()
    for i in range(20):
        pl.offer("m", "1", ["ok"], np.ones((1, 2), np.float32), None, frames[i : i + 1], None, MEAN, STD)
    assert time.perf_counter() - t0 < 1.0  # generous: it must not wait for the writer
    assert pl.dropped >= 20 - 4 - 1
    gate.set()
    pl.close()


def test_sampling_rate_zero_logs_nothing_and_a_failing_writer_is_counted():
    def failing(m, r, i):
        raise ConnectionError("storage down")

    pl = PayloadLogger(failing, "p", sample_rate=0.0)
    assert (
        pl.offer("m", "1", ["ok"], np.ones((1, 2), np.float32), None, random_frames(1, 8), None, MEAN, STD)
        == 0
    )
    pl = PayloadLogger(failing, "p", sample_rate=1.0, flush_s=0.01)
    pl.start()
    pl.offer("m", "1", ["ok"], np.ones((1, 2), np.float32), None, random_frames(1, 8), None, MEAN, STD)
    pl.close()
    assert pl.failed == 1 and pl.written == 0


def test_a_record_that_cannot_be_encoded_is_counted_and_the_writer_keeps_going():
    import numpy as np

    from edgeloop.serving.payload_logger import PayloadLogger, _Item

    written: list = []
    logger = PayloadLogger(lambda model, recs, imgs: written.extend(recs), "payloads", sample_rate=1.0)
    good = np.zeros((8, 8, 3), dtype=np.uint8)
    bad = np.zeros((8, 8, 5), dtype=np.uint8)  # five channels: not encodable as PNG
    probs = np.array([0.9, 0.1], dtype=np.float32)

    def item(frame):
        return _Item(0.0, "m", "1", "ok", probs, None, frame, None, None, None)

    logger._flush([item(good), item(bad), item(good)])
    assert len(written) == 2
    assert logger.failed == 1
