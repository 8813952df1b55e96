"""Write payload records for a set of images without a model server.

What the server would log (label, score, probabilities, embedding, the PNG under
``images/<sha>.png``) computed here with ONNX Runtime. For tests, demos and backfills:
``replay_images(settings, model_dir, paths, ts=...)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeloop.core.model_card import sha256_bytes
from edgeloop.core.payload_log import (
    PayloadRecord,
    encode_png,
    encode_records,
    image_blob_name,
    records_blob_name,
)

if TYPE_CHECKING:
    from edgeloop.core.blob import BlobStore
    from edgeloop.core.config import Settings


def replay_images(
    settings: Settings,
    model_dir: Path | str,
    images: Sequence[Any],
    *,
    ts: datetime | float | None = None,
    source: str | None = "replay",
    with_embeddings: bool = True,
    store: BlobStore | None = None,
    batch_size: int = 64,
    model_name: str | None = None,
) -> list[PayloadRecord]:
    """Predict ``images`` with the model and write them to the payload log at time ``ts`` (default now).

    Records are filed under the hour of ``ts`` (a backfill lands where a window reader looks), for the
    model name ``model_name`` (default: the model card's name)."""
    from edgeloop.core.blob import BlobStore
    from edgeloop.monitoring.model import ModelRunner, to_rgb_array

    store = store or BlobStore.from_settings(settings)
    container = settings.blob.payloads_container
    store.ensure_container(container)
    runner = ModelRunner(model_dir)
    card = runner.card
    name = model_name or card.name
    when = (
        ts.timestamp()
        if isinstance(ts, datetime)
        else float(ts if ts is not None else datetime.now(UTC).timestamp())
    )
    when_dt = datetime.fromtimestamp(when, UTC)
    written: list[PayloadRecord] = []
    for i in range(0, len(images), batch_size):
        # the server logs what the model saw: the image resized to the model's input size
        arrays = [runner.preprocess.resize(to_rgb_array(im)) for im in images[i : i + batch_size]]
        out = runner.run(arrays)
        pngs: dict[str, bytes] = {}
        records = []
        for arr, p, e in zip(arrays, out.probabilities, out.embeddings, strict=True):
            png = encode_png(arr)
            sha = sha256_bytes(png)
            pngs[sha] = png
            k = int(p.argmax())
            records.append(
                PayloadRecord(
                    ts=when,
                    model=name,
                    version=card.version or "",
                    label=card.labels[k],
                    score=float(p[k]),
                    probabilities=[float(v) for v in p],
                    embedding=[float(v) for v in e] if with_embeddings else None,
                    image_sha256=sha,
                    image_uri=f"az://{container}/{image_blob_name(sha)}",
                    source=source,
                )
            )
        for sha, png in pngs.items():
            uri = f"az://{container}/{image_blob_name(sha)}"
            if not store.exists(uri):
                store.upload(uri, png)
        store.upload(f"az://{container}/{records_blob_name(name, when_dt)}", encode_records(records))
        written.extend(records)
    return written
