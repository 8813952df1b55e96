"""Time each step of the training path on the sample data, against the running local stack.

    .venv/bin/python -m benchmarks.training_steps --project edgeloop-train-dev [--arch resnet18 --epochs 25]

Seed the project first (`edgeloop data seed --project NAME --per-class 60`). Writes
benchmarks/results/training_steps.json: per-step seconds, val accuracy, parity, the precision
decision with its latencies, the machine, and the command. On a shared machine the figures
move with the load: report the machine's load average with them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "training_steps.json"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--project", default=None)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--nproc-per-node", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    from edgeloop.components.path import run_training_path
    from edgeloop.components.training import TrainConfig
    from edgeloop.core.config import load_settings

    out = args.out or Path(tempfile.mkdtemp(prefix="edgeloop-train-bench-"))
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    res = run_training_path(
        load_settings(),
        out,
        project=args.project,
        config=TrainConfig(arch=args.arch, size=args.size, epochs=args.epochs),
        nproc_per_node=args.nproc_per_node,
        progress=False,
        log=lambda m: print(m, file=sys.stderr),
    )
    total = time.perf_counter() - t0
    record = {
        "command": " ".join([sys.executable, "-m", "benchmarks.training_steps", *(argv or sys.argv[1:])]),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "timings_s": {**res.timings_s, "total": round(total, 2)},
        "val_accuracy": res.val_accuracy,
        "test_accuracy": res.test_accuracy,
        "parity": res.parity,
        "precision": res.precision,
        "precision_measurements": res.precision_evidence["measurements"],
        "dataset_version": res.dataset_version,
        "run_url": res.run_url,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(record, indent=2, default=str))
    print(json.dumps(record, indent=2, default=str))
    return record


if __name__ == "__main__":
    main()
