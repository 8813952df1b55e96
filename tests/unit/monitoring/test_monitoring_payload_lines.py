"""A malformed payload-log line is skipped and counted; it never aborts a scan."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from edgeloop.core.payload_log import PayloadRecord, encode_png, load_image, read_window, records_blob_name
from edgeloop.monitoring.scan import load_window


class MemoryStore:
    """The part of BlobStore the payload-log readers use, in memory."""

    def __init__(self):
        self.blobs: dict[str, bytes] = {}

    def upload(self, uri, data, **_):
        self.blobs[str(uri)] = data

    def download(self, uri, referenced_by=""):
        return self.blobs[str(uri)]

    def list(self, container, prefix=""):
        head = f"az://{container}/"
        return [k[len(head) :] for k in self.blobs if k.startswith(head + prefix)]


def _record(ts: datetime, i: int) -> PayloadRecord:
    rng = np.random.default_rng(i)
    return PayloadRecord(
        ts=ts.timestamp(),
        model="m",
        version="1",
        label="ok",
        score=0.9,
        probabilities=[0.9, 0.1],
        embedding=rng.normal(size=4).tolist(),
        image_sha256=f"{i:064x}",
        image_uri=f"az://payloads/images/{i:064x}.png",
    )


@pytest.fixture
def damaged_log():
    store, ts = MemoryStore(), datetime.now(UTC)
    recs = [_record(ts, i) for i in range(3)]
    for r in recs:
        store.upload(r.image_uri, encode_png(np.full((8, 8, 3), 40 * int(r.image_sha256, 16), np.uint8)))
    lines = [recs[0].model_dump_json(), '{"ts": 1, "truncated', recs[1].model_dump_json(), "\x00garbage", ""]
    store.upload(f"az://payloads/{records_blob_name('m', ts)}", ("\n".join(lines) + "\n").encode())
    store.upload(
        f"az://payloads/{records_blob_name('m', ts + timedelta(seconds=1))}",
        (recs[2].model_dump_json() + "\n").encode(),
    )
    return store, ts, recs


def test_read_window_raises_on_a_bad_line_unless_told_to_skip(damaged_log):
    store, ts, recs = damaged_log
    start, end = ts - timedelta(minutes=1), ts + timedelta(minutes=1)
    with pytest.raises(ValueError):
        list(read_window(store, "payloads", "m", start, end))
    bad = []
    got = list(read_window(store, "payloads", "m", start, end, on_malformed=lambda b, n, e: bad.append(n)))
    assert [r.image_sha256 for r in got] == [r.image_sha256 for r in recs]  # every good line, in order
    assert bad == [2, 4]


def test_a_scan_window_skips_and_counts_malformed_lines(damaged_log):
    store, ts, recs = damaged_log
    window = load_window(store, "payloads", "m", ts - timedelta(minutes=1), ts + timedelta(minutes=1), "1")
    assert window.records_malformed == 2
    assert len(window.records) == 3 and window.embeddings.shape == (3, 4)
    assert load_image(store, recs[0]).shape == (8, 8, 3)
