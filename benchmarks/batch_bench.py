"""Batch scoring throughput by shard size, and what a resume costs, side by side in one run.

Against the running local stack (`make up`): seeded sample images are uploaded once to a fresh
container; for each shard size a full run (plan, score every shard, summary) is timed, then the
same command again (every shard finished: the resume path only reads markers and re-summarizes).
Sizes are measured interleaved, round after round, so load from other processes hits them alike.
Writes benchmarks/results/batch.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "batch.json"


def main(argv: list[str] | None = None) -> int:
    from edgeloop.components.batch_score import run_batch
    from edgeloop.core.blob import BlobStore, BlobUri
    from edgeloop.core.config import load_settings
    from edgeloop.core.model_card import ModelCard
    from edgeloop.local.sample_data import generate_dataset
    from edgeloop.monitoring.profile import build_reference_profile
    from edgeloop.testing.models import build_tiny_model_dir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=50, help="sample images per class (4 classes)")
    ap.add_argument("--shard-sizes", default="8,32,128")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    settings = load_settings()
    store = BlobStore.from_settings(settings)
    sizes = [int(x) for x in args.shard_sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "images"
        generate_dataset(images, per_class=args.per_class, seed=5, size=128)
        paths = sorted(images.rglob("*.png"))
        model = build_tiny_model_dir(Path(tmp) / "model", size=64, name="batch-bench")
        build_reference_profile(model, paths[:60])
        ModelCard.load(model).with_digests(model).save(model)
        container = f"bench-batch-{uuid.uuid4().hex[:6]}"
        store.ensure_container(container)
        for p in paths:
            store.upload(BlobUri(container, f"in/{p.name}"), p.read_bytes())
        full: dict[int, list[float]] = {s: [] for s in sizes}
        resume: dict[int, list[float]] = {s: [] for s in sizes}
        for r in range(args.rounds):
            for s in sizes:
                out = f"out/{s}-{r}"
                t0 = time.perf_counter()
                summary = run_batch(settings, container, "in/", str(model), out, shard_size=s)
                full[s].append(time.perf_counter() - t0)
                assert summary.scored == len(paths)
                t0 = time.perf_counter()
                again = run_batch(settings, container, "in/", str(model), out, shard_size=s)
                resume[s].append(time.perf_counter() - t0)
                assert again.shards_skipped == again.shards
    n = len(paths)
    rows = [
        {
            "shard_size": s,
            "shards": -(-n // s),
            "full_run_s_median": round(statistics.median(full[s]), 3),
            "images_per_s": round(n / statistics.median(full[s]), 1),
            "resume_noop_s_median": round(statistics.median(resume[s]), 3),
            "runs": len(full[s]),
        }
        for s in sizes
    ]
    doc = {
        "what": "edgeloop batch score over blob storage (Azurite), tiny CNN 64 px, in-process",
        "images": n,
        "load_avg_1m_at_end": os.getloadavg()[0],
        "cpus": os.cpu_count(),
        "rows": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(doc, indent=2))
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
