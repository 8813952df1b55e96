"""The payload log: what the server saw and answered, for drift monitoring and relabeling.

Layout in the payloads container (all names are UTC):

* ``images/<sha256>.png`` - each distinct input image once (content-addressed);
* ``records/<model>/<YYYY>/<MM>/<DD>/<HH>/<epoch_ms>-<uuid>.jsonl`` - one line per
  prediction (:class:`PayloadRecord`), written in batches by the server.

Readers list a time window by the hour prefixes and filter records by ``ts``.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from edgeloop.core.blob import BlobStore


#: A detector's detections below this score are not logged (the graph's own floor is 0.05).
LOG_SCORE_FLOOR = 0.1


class PayloadRecord(BaseModel):
    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    ts: float  # unix seconds, UTC
    model: str
    version: str
    label: str
    score: float
    probabilities: list[float]
    embedding: list[float] | None = None
    image_sha256: str
    image_uri: str  # az://payloads/images/<sha256>.png
    source: str | None = None  # camera / stream id when known
    request_id: str | None = None
    # a detector's record: its detections (label, score, x, y, width, height in the pixels of the
    # logged image) from LOG_SCORE_FLOOR up; ``probabilities`` is empty, ``label`` the top detection's
    # class ("" for none) and ``score`` its score
    detections: list[dict[str, Any]] | None = None


def image_blob_name(sha256: str) -> str:
    return f"images/{sha256}.png"


def records_prefix(model: str, hour: datetime) -> str:
    return f"records/{model}/{hour:%Y/%m/%d/%H}/"


def records_blob_name(model: str, when: datetime) -> str:
    return f"{records_prefix(model, when)}{int(when.timestamp() * 1000)}-{uuid.uuid4().hex[:8]}.jsonl"


def encode_png(hwc: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(hwc).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def encode_records(records: Iterable[PayloadRecord]) -> bytes:
    return "".join(r.model_dump_json() + "\n" for r in records).encode()


def write_batch(
    store: BlobStore, container: str, model: str, records: list[PayloadRecord], images: dict[str, bytes]
) -> str:
    """Write the images not yet stored and one JSONL blob of records; returns the records blob name."""
    for sha, png in images.items():
        uri = f"az://{container}/{image_blob_name(sha)}"
        if not store.exists(uri):
            store.upload(uri, png)
    name = records_blob_name(model, datetime.now(UTC))
    store.upload(f"az://{container}/{name}", encode_records(records))
    return name


def read_window(
    store: BlobStore,
    container: str,
    model: str,
    start: datetime,
    end: datetime,
    on_malformed: Callable[[str, int, Exception], None] | None = None,
) -> Iterator[PayloadRecord]:
    """Every record of ``model`` with ``start <= ts < end``, oldest blob first.

    A line that is not a valid record raises, unless ``on_malformed(blob_name, line_number, error)``
    is given: then it is called and the line skipped (a scan must not stop for one bad line).
    """
    hour = start.replace(minute=0, second=0, microsecond=0)
    t0, t1 = start.timestamp(), end.timestamp()
    while hour < end:
        for name in sorted(store.list(container, records_prefix(model, hour))):
            text = store.download(f"az://{container}/{name}").decode(errors="replace")
            for number, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rec = PayloadRecord.model_validate_json(line)
                except ValueError as e:  # pydantic's ValidationError is a ValueError
                    if on_malformed is None:
                        raise
                    on_malformed(name, number, e)
                    continue
                if t0 <= rec.ts < t1:
                    yield rec
        hour += timedelta(hours=1)


def load_image(store: BlobStore, record: PayloadRecord) -> np.ndarray:
    data = store.download(record.image_uri, referenced_by=f"payload record {record.id}")
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def record_to_json(record: PayloadRecord) -> str:
    return json.dumps(record.model_dump())
