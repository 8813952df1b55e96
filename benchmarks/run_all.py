"""Run every benchmark in turn (what `make bench` runs); each writes its JSON under benchmarks/results/.

The training-steps benchmark needs the local stack with seeded labels; it is skipped
with a note when the stack is not running. Pass --only NAME to run one.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time

BENCHMARKS: dict[str, str | tuple[str, list[str]]] = {
    "serving": "benchmarks.serving_bench",
    "detection-serving": "benchmarks.detection_serving",
    "stream": "benchmarks.stream_bench",
    "stream-detection": ("benchmarks.stream_bench", ["--task", "detection"]),
    "training": "benchmarks.training_steps",
    "batch": "benchmarks.batch_bench",
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--only", choices=sorted(BENCHMARKS), action="append", help="run only this one (repeatable)"
    )
    args = ap.parse_args(argv)
    summary: dict[str, str] = {}
    for name in args.only or list(BENCHMARKS):
        if name in ("training", "batch") and not _stack_ready():
            summary[name] = "skipped: the local stack is not running (run `make up` and `edgeloop data seed`)"
            continue
        print(f"\n=== {name} ===", flush=True)
        t0 = time.perf_counter()
        entry = BENCHMARKS[name]
        module, argv = entry if isinstance(entry, tuple) else (entry, [])
        importlib.import_module(module).main(argv)
        summary[name] = f"done in {time.perf_counter() - t0:.0f} s"
    print(json.dumps(summary, indent=2))
    return 0


def _stack_ready() -> bool:
    from edgeloop.core.config import load_settings
    from edgeloop.local.stack import Stack

    return all(s.state == "ready" for s in Stack(load_settings()).status())


if __name__ == "__main__":
    sys.exit(main())
