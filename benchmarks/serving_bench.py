"""Serving benchmark: edgeloop's server and stock KServe against bare ONNX Runtime, side by side, one run.

    .venv/bin/python -m benchmarks.serving_bench [--seconds 5] [--rounds 2] [--models resnet18-int8-128]

For each model (the demo's champion shape, resnet18 int8 at 128 px, and resnet18 fp32 at 224 px;
random weights, exported and quantized by the pipeline's code):

* **bare ONNX Runtime**, every layout: one session with one thread per core, or one single-threaded
  session per core run side by side; batch 1 and 8. The best of them is the reference (1.00).
* **edgeloop serve** with one session (threads across the cores) and with one session per core:
  REST binary under ``wrk`` (16 connections, one pre-built body) and gRPC under a raw-bytes
  ``grpc.aio`` client in its own process (16 in flight, one pre-serialized request).
* **stock KServe 0.21** (``benchmarks/kserve_peer.py``): the same two load generators.
* p99 latency at half of edgeloop's gRPC saturation (open loop), beside bare ONNX Runtime's batch-8 time.

Each request carries one uint8 frame at the model's size. Rounds interleave every measurement so
they share the box's conditions; the median round is kept. Writes
``benchmarks/results/serving.json`` and ``serving.png`` and prints the table. On a shared or busy
machine absolute figures move; ratios measured side by side are the result (the load average is
recorded).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
CONNECTIONS = 16


# ----------------------------------------------------------------------------- bare ONNX Runtime
def bare_ort(
    model_dir: Path,
    size: int,
    batch: int,
    sessions: int,
    seconds: float,
    outputs: list[str] | None = None,
) -> dict:
    """Images/s of back-to-back runs: ``sessions`` sessions side by side, each with cores/sessions
    threads. ``outputs``: the graph outputs fetched (default ``probabilities``; None of a detection
    graph's three is skipped: its post-processing is part of the work)."""
    import onnxruntime as ort

    from edgeloop.core.model_loader import OrtSettings, available_cpus

    threads = max(1, available_cpus() // sessions)
    opts = OrtSettings(intra_op_threads=threads).session_options()
    sess = [
        ort.InferenceSession(
            str(model_dir / "model.onnx"), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        for _ in range(sessions)
    ]
    x = np.random.default_rng(0).normal(size=(batch, 3, size, size)).astype(np.float32)
    names = outputs or ["probabilities"]
    for s in sess:
        for _ in range(3):
            s.run(names, {"images": x})
    counts = [0] * sessions
    times: list[float] = []
    stop = time.perf_counter() + seconds

    def loop(i: int) -> None:
        while time.perf_counter() < stop:
            t = time.perf_counter()
            sess[i].run(names, {"images": x})
            times.append(time.perf_counter() - t)
            counts[i] += batch

    t0 = time.perf_counter()
    workers = [threading.Thread(target=loop, args=(i,)) for i in range(sessions)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - t0
    return {
        "images_per_s": round(sum(counts) / wall, 1),
        "run_ms_p50": round(float(np.median(times)) * 1000, 2),
    }


# ----------------------------------------------------------------------------- servers
@contextlib.contextmanager
def kserve_peer(model_dir: Path, name: str) -> Iterator[dict[str, Any]]:
    """Stock KServe on free ports until the block ends."""
    import httpx

    from edgeloop.core.processes import terminate_group
    from edgeloop.serving.launcher import free_ports

    http_port, grpc_port = free_ports(2)
    cmd = [sys.executable, "-m", "benchmarks.kserve_peer", "--model_dir", str(model_dir), "--name", name]
    cmd += ["--http_port", str(http_port), "--grpc_port", str(grpc_port)]
    log = open(RESULTS / f"kserve-peer-{name}.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=Path.cwd())
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"stock KServe exited ({proc.returncode}); see {log.name}")
            with contextlib.suppress(httpx.HTTPError):
                if (
                    httpx.get(f"http://127.0.0.1:{http_port}/v2/models/{name}/ready", timeout=1).status_code
                    == 200
                ):
                    break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"stock KServe was not ready after 180 s; see {log.name}")
        time.sleep(1.0)  # its gRPC server starts beside the REST one
        yield {"rest_url": f"http://127.0.0.1:{http_port}", "grpc_target": f"127.0.0.1:{grpc_port}"}
    finally:
        terminate_group(proc.pid, 10, proc)
        log.close()


def load_pair(rest_url: str, grpc_target: str, name: str, frames: np.ndarray, seconds: float) -> dict:
    """REST binary under wrk, then gRPC under h2load (else the raw-bytes client): images/s (1 frame
    per request). One checked call first: a load generator that only counts HTTP answers must not
    count errors as work. The edgeloop server's own counters are checked after each run."""
    import grpc

    from benchmarks import loadgen

    msg = loadgen.grpc_body(name, frames)
    with grpc.insecure_channel(grpc_target) as channel:  # raises on a gRPC error status
        channel.unary_unary(loadgen.MODEL_INFER)(msg, timeout=60)
    body, hlen = loadgen.rest_body(frames)
    before = served_images(rest_url, name)
    rest = loadgen.wrk(f"{rest_url}/v2/models/{name}/infer", body, hlen, CONNECTIONS, seconds)
    after_rest = served_images(rest_url, name)
    grpc = loadgen.h2load_grpc(grpc_target, msg, seconds, CONNECTIONS) or loadgen.grpc_load(
        grpc_target, msg, seconds, CONNECTIONS
    )
    after_grpc = served_images(rest_url, name)
    n = len(frames)
    if before is not None:  # edgeloop's server: answered images, errors (stock KServe has neither)
        grpc["server_answered"] = after_grpc[0] - after_rest[0]
        grpc["server_errors"] = after_grpc[1] - after_rest[1]
        rest["server_errors"] = after_rest[1] - before[1]
        answered_beyond = grpc["server_answered"] - grpc["requests"] * n  # calls in flight at the end
        if grpc["server_errors"] or rest["server_errors"] or not 0 <= answered_beyond <= CONNECTIONS * n:
            raise RuntimeError(f"the server counted errors or fewer answers than the load generator: {grpc}")
    return {
        "rest_binary": {**rest, "images_per_s": round(rest["requests_per_s"] * n, 1)},
        "grpc": {**grpc, "images_per_s": round(grpc["requests_per_s"] * n, 1)},
    }


def served_images(rest_url: str, name: str) -> tuple[float, float] | None:
    """(images answered, requests failed) from an edgeloop server's /metrics; None elsewhere."""
    import httpx

    text = httpx.get(f"{rest_url}/metrics", timeout=10).text
    if "edgeloop_serving_images_total" not in text:
        return None
    images = errors = 0.0
    for line in text.splitlines():
        if line.startswith("edgeloop_serving_images_total") and f'model="{name}"' in line:
            images += float(line.rsplit(" ", 1)[1])
        elif line.startswith("edgeloop_serving_errors_total"):  # any model label: "unknown" too
            errors += float(line.rsplit(" ", 1)[1])
    return images, errors


# ----------------------------------------------------------------------------- one model
def bench_model(key: str, seconds: float, rounds: int) -> dict:
    from benchmarks import loadgen
    from benchmarks.models import MODELS
    from benchmarks.models import bench_model as build
    from edgeloop.core.model_loader import available_cpus
    from edgeloop.serving.launcher import running_server
    from edgeloop.testing.media import random_frames

    _, size = MODELS[key]
    model_dir = build(key)
    frames = random_frames(1, size, seed=1)
    runs: dict[str, list[dict]] = {}
    cores = available_cpus()
    # sessions x threads: one over every core, or one single-threaded session per core (the default)
    layouts = {f"1x{cores}": 1, f"{cores}x1": cores}
    with contextlib.ExitStack() as stack:
        servers = {  # the server's defaults otherwise (batching, pinning): what ships is measured
            f"edgeloop_{lay}": stack.enter_context(
                running_server([model_dir], extra_args=["--ort_sessions", str(n)])
            )
            for lay, n in layouts.items()
        }
        peer = stack.enter_context(kserve_peer(model_dir, key))
        for rnd in range(rounds):
            print(f"  {key}: round {rnd + 1}/{rounds}", flush=True)
            for lay, n in layouts.items():
                for batch in (1, 8):
                    runs.setdefault(f"bare_{lay}_b{batch}", []).append(
                        bare_ort(model_dir, size, batch, n, seconds / 2)
                    )
            for name, srv in servers.items():
                r = load_pair(srv.rest_url, srv.grpc_target, key, frames, seconds)
                for proto, v in r.items():
                    runs.setdefault(f"{name}_{proto}", []).append(v)
            r = load_pair(peer["rest_url"], peer["grpc_target"], key, frames, seconds)
            for proto, v in r.items():
                runs.setdefault(f"kserve_{proto}", []).append(v)
        med = {k: sorted(v, key=lambda m: m["images_per_s"])[len(v) // 2] for k, v in runs.items()}
        best_bare_key = max((k for k in med if k.startswith("bare_")), key=lambda k: med[k]["images_per_s"])
        best_bare = med[best_bare_key]["images_per_s"]
        best_served = max(
            (k for k in med if k.startswith("edgeloop_") and k.endswith("_grpc")),
            key=lambda k: med[k]["images_per_s"],
        )
        srv = servers[best_served.rsplit("_", 1)[0]]
        rate = 0.5 * med[best_served]["images_per_s"]
        half = loadgen.grpc_load(srv.grpc_target, loadgen.grpc_body(key, frames), seconds, rate=rate)
    best_layout = {
        proto: max(layouts, key=lambda lay, p=proto: med[f"edgeloop_{lay}_{p}"]["images_per_s"])
        for proto in ("grpc", "rest_binary")
    }
    return {
        "model": key,
        "cores": cores,
        "best_bare": {"layout": best_bare_key, "images_per_s": best_bare},
        "best_served_layout": best_layout,
        "median": med,
        "ratio_vs_best_bare": {k: round(v["images_per_s"] / best_bare, 3) for k, v in med.items()},
        "rounds": {k: [r["images_per_s"] for r in v] for k, v in runs.items()},
        "grpc_at_half_saturation": {
            **half,
            "server": best_served,
            "bare_batch8_run_ms": med[best_bare_key.rsplit("_b", 1)[0] + "_b8"]["run_ms_p50"],
        },
    }


# ----------------------------------------------------------------------------- report
def rows(cores: int) -> list[tuple[str, str]]:
    """(label, key) of every measured path, on a box with ``cores`` cores."""
    one, per = f"1 session x {cores} threads", f"{cores} sessions x 1 thread"
    out = [
        (f"bare ONNX Runtime, {lay}, batch {b}", f"bare_{key}_b{b}")
        for lay, key in ((one, f"1x{cores}"), (per, f"{cores}x1"))
        for b in (1, 8)
    ]
    for lay, key in ((per, f"{cores}x1"), (one, f"1x{cores}")):
        out += [
            (f"edgeloop serve, gRPC ({lay})", f"edgeloop_{key}_grpc"),
            (f"edgeloop serve, REST binary ({lay})", f"edgeloop_{key}_rest_binary"),
        ]
    return out + [
        ("stock KServe 0.21, gRPC", "kserve_grpc"),
        ("stock KServe 0.21, REST binary", "kserve_rest_binary"),
    ]


def table(m: dict) -> str:
    lines = [f"### {m['model']}", "", "| path | img/s | vs best bare ORT | latency ms |", "|---|---|---|---|"]
    for label, key in rows(m["cores"]):
        r = m["median"].get(key)
        if r is None:
            continue
        p99 = f"p99 {r['p99_ms']}" if "p99_ms" in r else f"mean {r['mean_ms']}" if "mean_ms" in r else ""
        lines.append(f"| {label} | {r['images_per_s']:.0f} | {m['ratio_vs_best_bare'][key]:.2f} | {p99} |")
    h = m["grpc_at_half_saturation"]
    lines.append("")
    lines.append(
        f"gRPC at half saturation ({h['rate_rps']:.0f} req/s, {h['server']}): p50 {h['p50_ms']} ms, "
        f"p99 {h['p99_ms']} ms; bare batch-8 run {h['bare_batch8_run_ms']} ms"
    )
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = results["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 5), squeeze=False)
    for ax, m in zip(axes[0], models, strict=True):
        keys = [k for _, k in rows(m["cores"]) if k in m["median"]]
        vals = [m["median"][k]["images_per_s"] for k in keys]
        colors = [
            "#999999" if k.startswith("bare") else "#1f77b4" if k.startswith("edgeloop") else "#d62728"
            for k in keys
        ]
        bars = ax.barh(range(len(keys)), vals, color=colors)
        ax.set_yticks(range(len(keys)), [k.replace("_", " ") for k in keys], fontsize=8)
        ax.invert_yaxis()
        for b, k in zip(bars, keys, strict=True):
            ax.text(
                b.get_width(),
                b.get_y() + b.get_height() / 2,
                f" {m['ratio_vs_best_bare'][k]:.2f}",
                va="center",
                fontsize=8,
            )
        ax.set_xlabel("images/s (label: ratio to best bare ONNX Runtime)")
        ax.set_title(m["model"])
    fig.suptitle(
        f"{results['machine']['cpu']} ({results['machine']['cpus']} CPUs), load avg {results['load_before'][0]:.1f}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> dict:
    from benchmarks.models import MODELS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="duration of each measurement")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is kept")
    ap.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    ap.add_argument("--out", type=Path, default=RESULTS / "serving.json")
    args = ap.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res: dict[str, Any] = {
        "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "settings": {
            "seconds": args.seconds,
            "rounds": args.rounds,
            "connections": CONNECTIONS,
            "frames_per_request": 1,
            "load_generators": "wrk (REST binary), raw-bytes grpc.aio in its own process (gRPC)",
        },
        "load_before": list(os.getloadavg()),
        "models": [],
    }
    for key in args.models:
        res["models"].append(bench_model(key, args.seconds, args.rounds))
    res["load_after"] = list(os.getloadavg())
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    args.out.write_text(json.dumps(res, indent=2))
    plot(res, args.out.with_suffix(".png"))
    for m in res["models"]:
        print("\n" + table(m))
    print(
        f"\n{res['machine']['cpu']}, {res['machine']['cpus']} CPUs; load average before "
        f"{res['load_before'][0]:.1f}, after {res['load_after'][0]:.1f}"
    )
    print(f"wrote {args.out} and {args.out.with_suffix('.png')} ({res['wall_s']} s)")
    return res


if __name__ == "__main__":
    main()
