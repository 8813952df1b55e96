"""How many concurrent 30 fps 720p H.264 cameras does the stream processor sustain, per resize path?

    .venv/bin/python -m benchmarks.stream_bench [--mode auto|server|inprocess] [--paths shared,ffmpeg]
        [--task classification|detection] [--trial-s 8] [--hwaccel auto] [--decode-threads 1]
        [--out benchmarks/results/stream.json]

``--task detection`` feeds a defect detector instead (192x192, boxes per frame published in each
result; results/stream_detection.json).

A camera is a generated 720p H.264 clip looped and paced to 30 fps; frames are resized to
224x224 (mobilenet_v3_small, random weights: realistic compute) and classified in batches
across cameras. Both resize paths run in the same invocation, side by side:

* ``shared``: decoded frame -> full-size RGB -> the shared Pillow resize (what the processor
  did before, and still does when the model card does not allow FFmpeg);
* ``ffmpeg``: decoded frame -> one libswscale pass to 224x224 RGB (``--resize ffmpeg``; the
  model here has random weights, so the benchmark forces the path: it measures cost, the
  staging step decides correctness).

1. Per-frame cost, one core, interleaved chunk by chunk between the paths (so load from other
   processes hits both alike), in thread CPU time: decode, preprocess, and bare ONNX Runtime
   inference at batch 8 on one thread; the ratio (decode + preprocess) / inference per path.
2. Sustained cameras per path: a trial with N cameras passes when, after a warm-up, every camera
   delivers >= 99% of its 30 fps into the pipeline, < 1% of frames are dropped and the p99
   end-to-end latency (packet read -> result) is < 100 ms. N is searched by doubling, then
   bisection; the two paths' searches advance in lockstep (one trial each in turn). A second
   search (reusing the trials already run) finds the throughput limit: the same without the
   p99 bound, which on a busy shared machine says more than a latency bound other work breaks.

On a shared machine the absolute camera counts are lower bounds; the load average is recorded
at every trial. Results: benchmarks/results/stream.json and stream.png. Not run by the tests.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FPS = 30
PATHS = ("shared", "ffmpeg")
RESULTS = Path(__file__).resolve().parent / "results" / "stream.json"


@dataclass(frozen=True)
class Workload:
    """The model the cameras feed: its task, input size, outputs and the batch of the bare timing."""

    task: str
    size: int
    outputs: tuple[str, ...]
    batch: int
    description: str
    results: Path


CLASSIFICATION = Workload(
    "classification",
    224,
    ("probabilities",),
    8,
    "mobilenet_v3_small (random weights), fp32, 224x224",
    RESULTS,
)
DETECTION = Workload(
    "detection",
    192,
    ("boxes", "scores", "labels"),
    1,  # the graph takes one image
    "fasterrcnn_tiny_fpn (seeded weights raised to detect on every frame), fp32, 192x192, box decoding "
    "and NMS in the graph",
    RESULTS.with_name("stream_detection.json"),
)
WORKLOADS = {w.task: w for w in (CLASSIFICATION, DETECTION)}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_seconds(server: Any = None) -> float:
    """CPU time (user + system) of this process, plus the model server's process group if any."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    total = ru.ru_utime + ru.ru_stime
    if server is not None:
        tick = os.sysconf("SC_CLK_TCK")
        pgid = server.process.pid
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:  # pgrp; utime and stime are fields 11 and 12 after the name
                total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _input(w: Workload) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((w.batch, 3, w.size, w.size)).astype(np.float32)


def bare_ort(model_dir: Path, w: Workload = CLASSIFICATION, seconds: float = 3.0) -> dict[str, float]:
    """Images/s of ONNX Runtime alone on already-normalised input (default threads)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    x = _input(w)
    for _ in range(3):
        sess.run(list(w.outputs), {"images": x})
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sess.run(list(w.outputs), {"images": x})
        n += w.batch
    dt = time.perf_counter() - t0
    return {"images_per_s": n / dt, f"ms_per_image_batch{w.batch}": dt / n * 1e3}


class _PathCost:
    """Decodes the clip (looping) and preprocesses its frames through one resize path, timing each part."""

    def __init__(self, path: str, video: Path, preprocess: Any):
        from edgeloop.stream.resize import FfmpegResize, SharedResize

        self.name, self.video = path, video
        self.resize = FfmpegResize(preprocess) if path == "ffmpeg" else SharedResize(preprocess)
        self.normalize = preprocess.normalize
        self.frames = 0
        self.cpu = {"decode": 0.0, "preprocess": 0.0}
        self.wall = {"decode": 0.0, "preprocess": 0.0}
        self._packets = self._packet_iter()

    def _packet_iter(self):
        import av

        while True:
            with av.open(str(self.video)) as c:
                s = c.streams.video[0]
                s.thread_count = 1
                yield from c.demux(s)

    def chunk(self, n: int) -> None:
        done = 0
        while done < n:
            packet = next(self._packets)
            c0, w0 = time.thread_time(), time.perf_counter()
            frames = packet.decode()
            c1, w1 = time.thread_time(), time.perf_counter()
            for f in frames:
                self.normalize(self.resize(f))  # the whole reader-side preprocessing
            c2, w2 = time.thread_time(), time.perf_counter()
            self.cpu["decode"] += c1 - c0
            self.cpu["preprocess"] += c2 - c1
            self.wall["decode"] += w1 - w0
            self.wall["preprocess"] += w2 - w1
            self.frames += len(frames)
            done += len(frames)

    def result(self) -> dict[str, float]:
        n = max(self.frames, 1)
        return {
            "frames": self.frames,
            "decode_ms_cpu": round(self.cpu["decode"] / n * 1e3, 3),
            "preprocess_ms_cpu": round(self.cpu["preprocess"] / n * 1e3, 3),
            "decode_preprocess_ms_cpu": round((self.cpu["decode"] + self.cpu["preprocess"]) / n * 1e3, 3),
            "decode_preprocess_ms_wall": round((self.wall["decode"] + self.wall["preprocess"]) / n * 1e3, 3),
        }


class _InferCost:
    """Bare ONNX Runtime on one thread at the workload's batch (8; a detector's graph: 1), timed in
    thread CPU time (per image)."""

    def __init__(self, model_dir: Path, w: Workload = CLASSIFICATION):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(
            str(model_dir / "model.onnx"), opts, providers=["CPUExecutionProvider"]
        )
        self.x, self.outputs = _input(w), list(w.outputs)
        self.sess.run(self.outputs, {"images": self.x})
        self.images, self.cpu, self.wall = 0, 0.0, 0.0

    def chunk(self, n_images: int) -> None:
        while n_images > 0:
            c0, w0 = time.thread_time(), time.perf_counter()
            self.sess.run(self.outputs, {"images": self.x})
            self.cpu += time.thread_time() - c0
            self.wall += time.perf_counter() - w0
            self.images += len(self.x)
            n_images -= len(self.x)

    def result(self) -> dict[str, float]:
        n = max(self.images, 1)
        return {
            "images": self.images,
            "ms_per_image_cpu": round(self.cpu / n * 1e3, 3),
            "ms_per_image_wall": round(self.wall / n * 1e3, 3),
        }


def cost_side_by_side(
    video: Path,
    model_dir: Path,
    paths: tuple[str, ...],
    seconds: float = 12.0,
    chunk: int = 30,
    w: Workload = CLASSIFICATION,
) -> dict[str, Any]:
    """Per-frame decode + preprocess cost of each path and bare inference cost, interleaved in chunks
    of ``chunk`` frames for ``seconds``, all on this one thread; ratios against inference."""
    from edgeloop.core.preprocessing import Preprocess, PreprocessConfig

    pre = Preprocess(PreprocessConfig(size=w.size))
    meters = [_PathCost(p, video, pre) for p in paths]
    infer = _InferCost(model_dir, w)
    for m in meters:  # warm up: first open, first graph
        m.chunk(8)
        m.frames, m.cpu, m.wall = 0, dict.fromkeys(m.cpu, 0.0), dict.fromkeys(m.wall, 0.0)
    load_before = load()
    t_end = time.perf_counter() + seconds
    rounds = 0
    while time.perf_counter() < t_end:
        for m in meters:
            m.chunk(chunk)
        infer.chunk(chunk)
        rounds += 1
    inf = infer.result()
    out: dict[str, Any] = {
        "what": "per frame on one thread (thread CPU time), paths interleaved chunk by chunk",
        "rounds": rounds,
        "chunk_frames": chunk,
        "inference_one_thread": {"batch": w.batch, **inf},
        "load_average_before_after": [load_before, load()],
        "paths": {},
    }
    for m in meters:
        r = m.result()
        r["ratio_decode_preprocess_vs_inference"] = round(
            r["decode_preprocess_ms_cpu"] / inf["ms_per_image_cpu"], 3
        )
        # one core-second per camera-second at 30 fps is 33.3 ms per frame for everything
        per_frame = r["decode_preprocess_ms_cpu"] + inf["ms_per_image_cpu"]
        r["cpu_bound_cameras_on_all_cores"] = round((os.cpu_count() or 1) * 1e3 / (FPS * per_frame), 2)
        out["paths"][m.name] = r
    if "shared" in out["paths"] and "ffmpeg" in out["paths"]:
        s, f = out["paths"]["shared"], out["paths"]["ffmpeg"]
        out["ffmpeg_vs_shared"] = {
            "preprocess": round(f["preprocess_ms_cpu"] / s["preprocess_ms_cpu"], 3),
            "decode_preprocess": round(f["decode_preprocess_ms_cpu"] / s["decode_preprocess_ms_cpu"], 3),
        }
    return out


def make_predictor(mode: str, model_dir: Path, server: Any) -> Any:
    from edgeloop.stream.predictors import GrpcPredictor, OnnxPredictor

    if mode == "server":
        return GrpcPredictor(server.grpc_target, "bench", security=server.security)
    return OnnxPredictor(model_dir, sessions=inprocess_workers())


def inprocess_workers() -> int:
    """In-process inference threads: one single-threaded session per core."""
    from edgeloop.core.model_loader import available_cpus

    return available_cpus()


def trial(
    n: int,
    path: str,
    video: Path,
    mode: str,
    model_dir: Path,
    server: Any,
    seconds: float,
    warmup_s: float,
    hwaccel: str,
    decode_threads: int,
) -> dict[str, Any]:
    from edgeloop.stream.processor import StreamConfig, StreamProcessor
    from edgeloop.stream.publisher import CountingSink
    from edgeloop.stream.resize import ResizeMode
    from edgeloop.stream.sources import ReaderConfig, SourceSpec

    specs = [SourceSpec.parse(f"cam{i}={video}") for i in range(n)]
    cfg = StreamConfig(
        queue_size=8,
        batch_size=8,
        workers=2 if mode == "server" else inprocess_workers(),
        resize=ResizeMode(path),
        reader=ReaderConfig(realtime=True, loop=True, hwaccel=hwaccel, decode_threads=decode_threads),
    )
    proc = StreamProcessor(specs, make_predictor(mode, model_dir, server), None, cfg)
    proc.sink = CountingSink(proc.stats_for)
    load_start = load()
    proc.start()
    time.sleep(warmup_s)

    def snap() -> dict[str, tuple]:
        return {
            k: (
                s.frames_in,
                s.processed,
                sum(s.dropped.values()),
                s.latency.copy(),
                s.decode_time.copy(),
                s.resize_time.copy(),
                s.decode_s_total,
                s.resize_s_total,
                s.skipped,
            )
            for k, s in proc.stats.items()
        }

    before = snap()
    inf0 = (proc._inference_s, proc._inference_frames)
    cpu0 = cpu_seconds(server)
    t0 = time.monotonic()
    time.sleep(seconds)
    window = time.monotonic() - t0
    cpu1 = cpu_seconds(server)
    after = snap()
    inf1 = (proc._inference_s, proc._inference_frames)
    summary = proc.stop()

    def delta(i: int) -> float:
        return sum(after[k][i] - before[k][i] for k in after)

    frames_in, processed, dropped = delta(0), delta(1), delta(2)
    min_rate = min((after[k][0] - before[k][0]) / window for k in after)
    p99s, dec_total, dec_count, res_total, res_count = [], 0.0, 0, 0.0, 0
    for k in after:
        p99s.append(after[k][3].since(before[k][3]).quantile(0.99) or 0.0)
        d = after[k][4].since(before[k][4])
        r = after[k][5].since(before[k][5])
        dec_total, dec_count = dec_total + d.total, dec_count + d.count
        res_total, res_count = res_total + r.total, res_count + r.count
    reader_busy = delta(6) + delta(7)
    inf_frames = inf1[1] - inf0[1]
    infer_ms = (inf1[0] - inf0[0]) / inf_frames * 1e3 if inf_frames else None
    drop_frac = dropped / frames_in if frames_in else 1.0
    p99 = max(p99s) * 1e3 if p99s else None
    keeps_up = min_rate >= 0.99 * FPS and drop_frac < 0.01
    # whole-pipeline CPU (decode, resize, inference, queues, Python; the server's too) per camera
    core_s_per_camera_s = (cpu1 - cpu0) / (n * window)
    ok = keeps_up and p99 is not None and p99 < 100.0
    return {
        "path": path,
        "n": n,
        "ok": ok,
        "ok_throughput": keeps_up,
        "window_s": round(window, 2),
        "frames_in": int(frames_in),
        "processed": int(processed),
        "dropped_by_overload": int(dropped),
        "skipped_by_policy": int(delta(8)),
        "results_per_s": round(processed / window, 1),
        "drop_fraction": round(drop_frac, 4),
        "min_input_fps": round(min_rate, 2),
        "p99_ms_worst_camera": None if p99 is None else round(p99, 1),
        "decode_preprocess_ms_per_frame_wall": round(dec_total / dec_count * 1e3, 2) if dec_count else None,
        "preprocess_ms_per_frame_wall": round(res_total / res_count * 1e3, 2) if res_count else None,
        "reader_ms_per_frame_in_wall": round(reader_busy / frames_in * 1e3, 2) if frames_in else None,
        "inference_ms_per_frame": None if infer_ms is None else round(infer_ms, 2),
        "cpu_cores_used": round((cpu1 - cpu0) / window, 3),
        "cpu_core_s_per_camera_s": round(core_s_per_camera_s, 4),
        "cpu_bound_cameras_on_all_cores": round((os.cpu_count() or 1) / core_s_per_camera_s, 2)
        if core_s_per_camera_s > 0
        else None,
        "resize": summary.preprocessing,
        "decoder": summary.sources[0].get("decoder", {}),
        "load_average_start_end": [load_start, load()],
    }


def search(paths: tuple[str, ...], run: Any, max_n: int, start_n: int = 1) -> dict[str, int]:
    """Largest passing N per path: doubling then bisection, the paths advancing in lockstep."""
    state = {p: {"lo": 0, "hi": None, "n": start_n} for p in paths}
    while True:
        active = False
        for p in paths:
            st = state[p]
            if st["hi"] is None:  # doubling
                n = st["n"]
                if n > max_n:
                    st["hi"] = max_n + 1
                    continue
                active = True
                if run(p, n):
                    st["lo"], st["n"] = n, n * 2
                else:
                    st["hi"] = n
            elif st["hi"] - st["lo"] > 1:  # bisection
                active = True
                mid = (st["lo"] + st["hi"]) // 2
                if run(p, mid):
                    st["lo"] = mid
                else:
                    st["hi"] = mid
        if not active and all(st["hi"] is not None and st["hi"] - st["lo"] <= 1 for st in state.values()):
            return {p: int(st["lo"]) for p, st in state.items()}


def plot(result: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    cost = result["cost_side_by_side"]
    names = list(cost["paths"])
    dec = [cost["paths"][p]["decode_ms_cpu"] for p in names]
    pre = [cost["paths"][p]["preprocess_ms_cpu"] for p in names]
    a.bar(names, dec, label="decode")
    a.bar(names, pre, bottom=dec, label="preprocess (resize + normalise)")
    inf = cost["inference_one_thread"]["ms_per_image_cpu"]
    batch = cost["inference_one_thread"].get("batch", 8)
    a.axhline(inf, color="k", ls="--", label=f"inference {inf:.2f} ms (bare ORT, batch {batch}, 1 thread)")
    for i, p in enumerate(names):
        r = cost["paths"][p]["ratio_decode_preprocess_vs_inference"]
        a.text(i, dec[i] + pre[i], f"{r:.2f}x inference", ha="center", va="bottom")
    a.set_ylabel("ms CPU per 720p frame (one thread)")
    a.set_title("Per-frame cost, measured side by side")
    a.legend(fontsize=8)
    for p in names:
        ts = sorted((t for t in result["trials"] if t["path"] == p), key=lambda t: t["n"])
        xs = [t["n"] for t in ts]
        ys = [t["p99_ms_worst_camera"] or 0 for t in ts]
        label = (
            f"{p}: {result['sustained_cameras'][p]} sustained, {result['throughput_cameras'][p]} throughput"
        )
        (line,) = b.plot(xs, ys, marker="o", label=label)
        for t in ts:
            if not t["ok_throughput"]:
                b.plot(t["n"], t["p99_ms_worst_camera"] or 0, "x", color=line.get_color(), ms=10)
    b.axhline(100, color="r", ls=":", label="p99 limit 100 ms")
    b.set_xlabel("concurrent 720p30 cameras")
    b.set_ylabel("p99 latency, worst camera (ms)")
    b.set_title(
        f"{result['mode']} (x: fell behind or dropped; load {result['machine']['load_average_1_5_15'][0]})"
    )
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--mode",
        choices=["auto", "server", "inprocess"],
        default="auto",
        help="auto: the model server over gRPC if serving/ is present, else ONNX Runtime in process",
    )
    ap.add_argument("--paths", default=",".join(PATHS), help="resize paths to compare (shared, ffmpeg)")
    ap.add_argument("--trial-s", type=float, default=8.0, help="measured seconds per trial (after warm-up)")
    ap.add_argument("--warmup-s", type=float, default=3.0)
    ap.add_argument("--cost-s", type=float, default=12.0, help="seconds of the side-by-side cost measurement")
    ap.add_argument("--max-n", type=int, default=16)
    ap.add_argument("--hwaccel", default="auto", choices=["auto", "none", "cuda", "vaapi"])
    ap.add_argument("--decode-threads", type=int, default=1)
    ap.add_argument(
        "--task",
        choices=sorted(WORKLOADS),
        default="classification",
        help="the model the cameras feed: a classifier, or a detector (boxes per frame)",
    )
    ap.add_argument(
        "--out", type=Path, default=None, help="[default: results/stream.json, or stream_detection.json]"
    )
    args = ap.parse_args(argv)
    w = WORKLOADS[args.task]
    args.out = args.out or w.results
    logging.basicConfig(level=logging.WARNING)
    paths = tuple(p.strip() for p in args.paths.split(",") if p.strip())
    if not paths or not set(paths) <= set(PATHS):
        ap.error(f"--paths takes {', '.join(PATHS)}")

    from edgeloop.core.preprocessing import PreprocessConfig
    from edgeloop.stream.resize import ffmpeg_filter, ffmpeg_versions
    from edgeloop.stream.sources import choose_hwaccel
    from edgeloop.testing.media import make_video
    from edgeloop.testing.models import build_model_dir

    work = Path(tempfile.mkdtemp(prefix="stream-bench-"))
    t_start = time.monotonic()
    load_start = load()
    print(
        f"load average {load_start}; generating a 720p H.264 clip and the model: {w.description} ...",
        flush=True,
    )
    # longer than warm-up + trial: a looping file's restart (reopen, first key frame) costs its
    # camera a few frames of input rate that a live camera would not lose
    seconds = int(args.warmup_s + args.trial_s) + 3
    video = make_video(
        work / "cam720p.mp4", seconds=seconds, fps=FPS, width=1280, height=720, preset="veryfast", gop=60
    )
    if w.task == "detection":
        from edgeloop.testing.models import build_detection_model_dir

        model_dir = build_detection_model_dir(work / "model", size=w.size, name="bench", version="1")
    else:
        model_dir = build_model_dir(
            work / "model", size=w.size, architecture="mobilenet_v3_small", name="bench", version="1"
        )

    mode = args.mode
    if mode == "auto":
        try:
            import edgeloop.serving.launcher  # noqa: F401

            mode = "server"
        except ImportError:
            mode = "inprocess"

    bare = bare_ort(model_dir, w)
    cost = cost_side_by_side(video, model_dir, paths, seconds=args.cost_s, w=w)
    print(
        f"bare ONNX Runtime: {bare['images_per_s']:.0f} images/s (batch {w.batch}, default threads)",
        flush=True,
    )
    for p, c in cost["paths"].items():
        print(
            f"  {p:7s} decode {c['decode_ms_cpu']:.2f} + preprocess {c['preprocess_ms_cpu']:.2f} ms CPU/frame "
            f"= {c['ratio_decode_preprocess_vs_inference']:.2f}x inference "
            f"({cost['inference_one_thread']['ms_per_image_cpu']:.2f} ms); "
            f"CPU bound {c['cpu_bound_cameras_on_all_cores']} cameras",
            flush=True,
        )

    server_ctx: Any = None
    server = None
    if mode == "server":
        from edgeloop.serving.launcher import running_server

        server_ctx = running_server([model_dir])
        server = server_ctx.__enter__()
    trials: list[dict[str, Any]] = []
    done: dict[tuple[str, int], dict[str, Any]] = {}
    try:

        def measure(path: str, n: int) -> dict[str, Any]:
            if (path, n) in done:
                return done[(path, n)]
            r = trial(
                n,
                path,
                video,
                mode,
                model_dir,
                server,
                args.trial_s,
                args.warmup_s,
                args.hwaccel,
                args.decode_threads,
            )
            trials.append(r)
            done[(path, n)] = r
            print(
                f"  {path:7s} N={n:3d} {'ok  ' if r['ok'] else 'FAIL'} drop {r['drop_fraction']:.2%} "
                f"p99 {r['p99_ms_worst_camera']} ms  min input {r['min_input_fps']} fps  "
                f"reader {r['reader_ms_per_frame_in_wall']} ms/frame  infer {r['inference_ms_per_frame']} ms/frame  "
                f"CPU {r['cpu_core_s_per_camera_s']:.3f} core/camera -> {r['cpu_bound_cameras_on_all_cores']} "
                f"cameras on {os.cpu_count()} free cores  load {r['load_average_start_end'][1][0]}",
                flush=True,
            )
            return r

        sustained = search(paths, lambda p, n: bool(measure(p, n)["ok"]), args.max_n)
        throughput = search(paths, lambda p, n: bool(measure(p, n)["ok_throughput"]), args.max_n)
    finally:
        if server_ctx is not None:
            server_ctx.__exit__(None, None, None)

    hw, hw_why = choose_hwaccel(args.hwaccel)
    by_path: dict[str, Any] = {}
    for p in paths:
        best = next((t for t in trials if t["path"] == p and t["n"] == sustained[p] and t["ok"]), None)
        by_path[p] = {
            "sustained_cameras": sustained[p],
            "throughput_cameras": throughput[p],
            "frames_per_s_sustained": sustained[p] * FPS,
            "at_sustained": best,
            "first_failure": min(
                (t for t in trials if t["path"] == p and not t["ok"]), key=lambda t: t["n"], default=None
            ),
            "whole_pipeline_cpu": _whole_pipeline(trials, p),
        }
    result: dict[str, Any] = {
        "what": f"largest N of concurrent 30 fps 720p H.264 sources ({w.size}x{w.size} model input) with <1% dropped "
        "and p99 end-to-end latency < 100 ms, per resize path, measured side by side in one run",
        "mode": "model server over gRPC (serving/)" if mode == "server" else "ONNX Runtime in process",
        "sustained_cameras": sustained,
        "throughput_cameras": throughput,
        "paths": by_path,
        "cost_side_by_side": cost,
        "bare_ort": {k: round(v, 2) for k, v in bare.items()},
        "ffmpeg_filter": ffmpeg_filter(PreprocessConfig(size=w.size)),
        "ffmpeg": ffmpeg_versions(),
        "decode": {"hwaccel": hw or "none", "hwaccel_reason": hw_why, "threads": args.decode_threads},
        "trials": trials,
        "task": w.task,
        "model": w.description,
        "note": "the machine is shared: absolute camera counts are lower bounds; compare the paths side by side",
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_1_5_15": load_start,
            "load_average_end": load(),
            "platform": platform.platform(),
            "cpu_model": _cpu_model(),
        },
        "wall_s": round(time.monotonic() - t_start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    plot(result, args.out.with_suffix(".png"))
    print()
    print(f"{'mode':<36}{result['mode']}")
    for p in paths:
        c = cost["paths"][p]
        print(
            f"{p + ' resize: sustained cameras':<36}{sustained[p]} (throughput limit {throughput[p]}); "
            f"decode+preprocess {c['decode_preprocess_ms_cpu']} ms CPU/frame = "
            f"{c['ratio_decode_preprocess_vs_inference']}x inference; whole pipeline "
            f"{by_path[p]['whole_pipeline_cpu']}"
        )
    print(f"{'load average (start, end)':<36}{load_start} -> {result['machine']['load_average_end']}")
    print(f"results: {args.out} and {args.out.with_suffix('.png')}")
    return result


def _whole_pipeline(trials: list[dict[str, Any]], path: str) -> dict[str, Any] | None:
    """CPU per camera of the whole pipeline at the largest N that kept up (else the smallest N),
    and the cameras that many free cores would carry: the bound when the machine is not shared."""
    ts = sorted((t for t in trials if t["path"] == path), key=lambda t: t["n"])
    if not ts:
        return None
    kept = [t for t in ts if t["ok_throughput"]]
    t = kept[-1] if kept else ts[0]
    return {
        "at_n": t["n"],
        "core_s_per_camera_s": t["cpu_core_s_per_camera_s"],
        "cameras_on_free_cores": t["cpu_bound_cameras_on_all_cores"],
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
