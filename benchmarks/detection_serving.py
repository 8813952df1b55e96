"""Detection serving benchmark: edgeloop's server against bare ONNX Runtime for the edge detector, side by side, one run.

    .venv/bin/python -m benchmarks.detection_serving [--seconds 5] [--rounds 3] [--size 192]

The model is the default detector (``fasterrcnn_tiny_fpn`` at the training size, seeded weights
whose classifier is raised so that every image gets detections: the graph's NMS and the server's
box mapping do real work), exported with post-processing in the graph by the training path's code.

* **bare ONNX Runtime**: one image per run (the graph's input), one session with one thread per
  core, or one single-threaded session per core side by side. The best is the reference (1.00).
* **edgeloop serve** with one session and with one session per core: REST binary under ``wrk``
  and gRPC under h2load (else a raw-bytes ``grpc.aio`` client in its own process), 16 in flight,
  one uint8 frame at the model's size per request; the server's own counters must agree.

Rounds interleave the measurements; the median round is kept. Writes
``benchmarks/results/detection_serving.json`` and ``.png`` and prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.serving_bench import RESULTS, bare_ort, cpu_model, load_pair

MODEL = "inspection"


def bench(size: int, seconds: float, rounds: int) -> dict[str, Any]:
    from edgeloop.core.model_card import DETECTION_OUTPUTS
    from edgeloop.core.model_loader import available_cpus
    from edgeloop.serving.launcher import running_server
    from edgeloop.testing.media import random_frames
    from edgeloop.testing.models import build_detection_model_dir, reference_detections

    model_dir = build_detection_model_dir(
        Path(tempfile.mkdtemp(prefix="edgeloop-det-bench-")) / "v1", size=size, seed=3, version="1"
    )
    frames = random_frames(1, size, seed=1)
    detections = len(reference_detections(model_dir, frames)[0])
    cores = available_cpus()
    layouts = {f"1x{cores}": 1, f"{cores}x1": cores}
    runs: dict[str, list[dict]] = {}
    with contextlib.ExitStack() as stack:
        servers = {
            f"edgeloop_{lay}": stack.enter_context(
                running_server([model_dir], extra_args=["--ort_sessions", str(n)])
            )
            for lay, n in layouts.items()
        }
        for rnd in range(rounds):
            print(f"  round {rnd + 1}/{rounds}", flush=True)
            for lay, n in layouts.items():
                runs.setdefault(f"bare_{lay}", []).append(
                    bare_ort(model_dir, size, 1, n, seconds / 2, outputs=list(DETECTION_OUTPUTS))
                )
            for name, srv in servers.items():
                for proto, v in load_pair(srv.rest_url, srv.grpc_target, MODEL, frames, seconds).items():
                    runs.setdefault(f"{name}_{proto}", []).append(v)
    med = {k: sorted(v, key=lambda m: m["images_per_s"])[len(v) // 2] for k, v in runs.items()}
    best_bare_key = max((k for k in med if k.startswith("bare_")), key=lambda k: med[k]["images_per_s"])
    best_bare = med[best_bare_key]["images_per_s"]
    return {
        "model": f"fasterrcnn_tiny_fpn-{size}",
        "detections_per_image": detections,
        "cores": cores,
        "best_bare": {"layout": best_bare_key, "images_per_s": best_bare},
        "median": med,
        "ratio_vs_best_bare": {k: round(v["images_per_s"] / best_bare, 3) for k, v in med.items()},
        "rounds": {k: [r["images_per_s"] for r in v] for k, v in runs.items()},
    }


def table(m: dict[str, Any]) -> str:
    lines = [f"{m['model']} ({m['detections_per_image']} detections per image), {m['cores']} cores"]
    lines.append(f"{'':28s} {'images/s':>9s} {'vs bare':>8s}")
    for k, v in m["median"].items():
        lines.append(f"{k.replace('_', ' '):28s} {v['images_per_s']:9.1f} {m['ratio_vs_best_bare'][k]:8.2f}")
    return "\n".join(lines)


def plot(m: dict[str, Any], machine: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(m["median"])
    vals = [m["median"][k]["images_per_s"] for k in keys]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    bars = ax.barh(
        range(len(keys)), vals, color=["#999999" if k.startswith("bare") else "#1f77b4" for k in keys]
    )
    ax.set_yticks(range(len(keys)), [k.replace("_", " ") for k in keys], fontsize=8)
    ax.invert_yaxis()
    for b, k in zip(bars, keys, strict=True):
        ax.text(
            b.get_width(), b.get_y() + b.get_height() / 2, f" {m['ratio_vs_best_bare'][k]:.2f}", va="center"
        )
    ax.set_xlabel("images/s (label: ratio to best bare ONNX Runtime)")
    ax.set_title(f"{m['model']} on {machine}", fontsize=9)
    ax.margins(x=0.12)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from edgeloop.components.defaults import DETECTION

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="duration of each measurement")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is kept")
    ap.add_argument(
        "--size", type=int, default=DETECTION.size, help="model input size (the training default)"
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "detection_serving.json")
    args = ap.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res: dict[str, Any] = {
        "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "settings": {"seconds": args.seconds, "rounds": args.rounds, "frames_per_request": 1},
        "load_before": list(os.getloadavg()),
    }
    res["result"] = bench(args.size, args.seconds, args.rounds)
    res["load_after"] = list(os.getloadavg())
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    args.out.write_text(json.dumps(res, indent=2))
    plot(
        res["result"],
        f"{res['machine']['cpu']} ({res['machine']['cpus']} CPUs)",
        args.out.with_suffix(".png"),
    )
    print("\n" + table(res["result"]))
    print(f"load average before {res['load_before'][0]:.1f}, after {res['load_after'][0]:.1f}")
    print(f"wrote {args.out} and {args.out.with_suffix('.png')} ({res['wall_s']} s)")
    return res


if __name__ == "__main__":
    main()
