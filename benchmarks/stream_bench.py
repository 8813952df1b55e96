"""How many concurrent 30 fps 720p H.264 cameras does the stream processor sustain?

    .venv/bin/python -m benchmarks.stream_bench [--mode auto|server|inprocess] [--trial-s 8]

A camera is a generated 720p H.264 clip looped and paced to 30 fps; frames are
resized to 224x224 (mobilenet_v3_small, random weights: realistic compute) and
classified in batches across cameras. A trial with N cameras passes when, after
a warm-up, every camera delivers >= 99% of its 30 fps into the pipeline, < 1% of
frames are dropped and the p99 end-to-end latency (packet read -> result) is
< 100 ms. N is searched by doubling, then bisection.

Also measured in the same run: bare ONNX Runtime throughput on the same model
(images/s at batch 8), so N x 30 / bare is the fraction of the model's raw
capacity the whole pipeline turns into results; and the decode share, decode +
resize time per frame over inference time per frame.

Results: benchmarks/results/stream.json. Not run by the tests (minutes of CPU).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

FPS = 30
SIZE = 224
RESULTS = Path(__file__).resolve().parent / "results" / "stream.json"


def bare_ort(model_dir: Path, batch: int = 8, seconds: float = 3.0) -> dict[str, float]:
    """Images/s of ONNX Runtime alone on already-normalised 224x224 input (default threads)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, 3, SIZE, SIZE)).astype(np.float32)
    for _ in range(3):
        sess.run(["probabilities"], {"images": x})
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sess.run(["probabilities"], {"images": x})
        n += batch
    dt = time.perf_counter() - t0
    x1 = x[:1]
    t1, m = time.perf_counter(), 0
    while time.perf_counter() - t1 < 1.0:
        sess.run(["probabilities"], {"images": x1})
        m += 1
    return {
        "images_per_s": n / dt,
        "ms_per_image_batch8": dt / n * 1e3,
        "ms_per_image_batch1": (time.perf_counter() - t1) / m * 1e3,
    }


def decode_only(video: Path, seconds: float = 2.0) -> dict[str, float]:
    """One core's decode and decode+resize rate for the 720p clip (context for the decode share)."""
    import av

    from edgeloop.core.preprocessing import Preprocess, PreprocessConfig

    pre = Preprocess(PreprocessConfig(size=SIZE))
    n, dec, conv = 0, 0.0, 0.0
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        with av.open(str(video)) as c:
            s = c.streams.video[0]
            s.thread_count = 1
            for packet in c.demux(s):
                t0 = time.perf_counter()
                frames = packet.decode()
                t1 = time.perf_counter()
                dec += t1 - t0
                for f in frames:
                    pre.resize(f.to_image())
                    n += 1
                conv += time.perf_counter() - t1
    return {
        "decode_ms": dec / n * 1e3,
        "convert_resize_ms": conv / n * 1e3,
        "decode_resize_fps_one_core": n / (dec + conv),
    }


def make_predictor(mode: str, model_dir: Path, stack: Any) -> Any:
    from edgeloop.stream.predictors import GrpcPredictor, OnnxPredictor

    if mode == "server":
        return GrpcPredictor(stack.grpc_target, "bench", security=stack.security)
    return OnnxPredictor(model_dir)


def trial(
    n: int, video: Path, mode: str, model_dir: Path, server: Any, seconds: float, warmup_s: float
) -> dict[str, Any]:
    from edgeloop.stream.processor import StreamConfig, StreamProcessor
    from edgeloop.stream.publisher import CountingSink
    from edgeloop.stream.sources import ReaderConfig, SourceSpec

    specs = [SourceSpec.parse(f"cam{i}={video}") for i in range(n)]
    cfg = StreamConfig(
        queue_size=8,
        batch_size=8,
        workers=2 if mode == "server" else 1,
        reader=ReaderConfig(realtime=True, loop=True),
    )
    proc = StreamProcessor(specs, make_predictor(mode, model_dir, server), None, cfg)
    proc.sink = CountingSink(proc.stats_for)
    proc.start()
    time.sleep(warmup_s)
    before = {
        k: (s.frames_in, s.processed, sum(s.dropped.values()), s.latency.copy(), s.decode_time.copy())
        for k, s in proc.stats.items()
    }
    inf0 = (proc._inference_s, proc._inference_frames)
    t0 = time.monotonic()
    time.sleep(seconds)
    window = time.monotonic() - t0
    after = {
        k: (s.frames_in, s.processed, sum(s.dropped.values()), s.latency.copy(), s.decode_time.copy())
        for k, s in proc.stats.items()
    }
    inf1 = (proc._inference_s, proc._inference_frames)
    proc.stop()

    frames_in = sum(after[k][0] - before[k][0] for k in after)
    processed = sum(after[k][1] - before[k][1] for k in after)
    dropped = sum(after[k][2] - before[k][2] for k in after)
    dec_total, dec_count = 0.0, 0
    min_rate = min((after[k][0] - before[k][0]) / window for k in after)
    p99s = []
    for k in after:
        h = after[k][3].since(before[k][3])
        p99s.append(h.quantile(0.99) or 0.0)
        d = after[k][4].since(before[k][4])
        dec_total += d.total
        dec_count += d.count
    inf_frames = inf1[1] - inf0[1]
    infer_ms = (inf1[0] - inf0[0]) / inf_frames * 1e3 if inf_frames else None
    decode_ms = dec_total / dec_count * 1e3 if dec_count else None
    drop_frac = dropped / frames_in if frames_in else 1.0
    p99 = max(p99s) * 1e3 if p99s else None
    ok = min_rate >= 0.99 * FPS and drop_frac < 0.01 and p99 is not None and p99 < 100.0
    return {
        "n": n,
        "ok": ok,
        "window_s": round(window, 2),
        "frames_in": frames_in,
        "processed": processed,
        "dropped": dropped,
        "results_per_s": round(processed / window, 1),
        "drop_fraction": round(drop_frac, 4),
        "min_input_fps": round(min_rate, 2),
        "p99_ms_worst_camera": None if p99 is None else round(p99, 1),
        "decode_resize_ms_per_frame": None if decode_ms is None else round(decode_ms, 2),
        "inference_ms_per_frame": None if infer_ms is None else round(infer_ms, 2),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--mode",
        choices=["auto", "server", "inprocess"],
        default="auto",
        help="auto: the model server over gRPC if serving/ is present, else ONNX Runtime in process",
    )
    ap.add_argument("--trial-s", type=float, default=8.0, help="measured seconds per trial (after warm-up)")
    ap.add_argument("--warmup-s", type=float, default=3.0)
    ap.add_argument("--max-n", type=int, default=64)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from edgeloop.testing.media import make_video
    from edgeloop.testing.models import build_model_dir

    work = Path(tempfile.mkdtemp(prefix="stream-bench-"))
    t_start = time.monotonic()
    print("generating a 720p H.264 clip and a mobilenet_v3_small model ...", flush=True)
    video = make_video(
        work / "cam720p.mp4", seconds=4, fps=FPS, width=1280, height=720, preset="veryfast", gop=60
    )
    model_dir = build_model_dir(
        work / "model", size=SIZE, architecture="mobilenet_v3_small", name="bench", version="1"
    )

    mode = args.mode
    if mode == "auto":
        try:
            import edgeloop.serving.launcher  # noqa: F401

            mode = "server"
        except ImportError:
            mode = "inprocess"

    bare = bare_ort(model_dir)
    decode = decode_only(video)
    print(
        f"bare ONNX Runtime: {bare['images_per_s']:.0f} images/s (batch 8); "
        f"decode+resize on one core: {decode['decode_resize_fps_one_core']:.0f} fps",
        flush=True,
    )

    server_ctx: Any = None
    server = None
    if mode == "server":
        from edgeloop.serving.launcher import running_server

        server_ctx = running_server([model_dir])
        server = server_ctx.__enter__()
    trials: list[dict[str, Any]] = []
    try:

        def run(n: int) -> bool:
            r = trial(n, video, mode, model_dir, server, args.trial_s, args.warmup_s)
            trials.append(r)
            print(
                f"  N={n:3d} {'ok  ' if r['ok'] else 'FAIL'} drop {r['drop_fraction']:.2%} "
                f"p99 {r['p99_ms_worst_camera']} ms  min input {r['min_input_fps']} fps  "
                f"decode {r['decode_resize_ms_per_frame']} ms/frame  infer {r['inference_ms_per_frame']} ms/frame",
                flush=True,
            )
            return bool(r["ok"])

        lo, hi = 0, None  # lo passes, hi fails
        n = 1
        while n <= args.max_n and run(n):
            lo, n = n, n * 2
        hi = min(n, args.max_n + 1)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if run(mid):
                lo = mid
            else:
                hi = mid
    finally:
        if server_ctx is not None:
            server_ctx.__exit__(None, None, None)

    best = next((t for t in trials if t["n"] == lo and t["ok"]), None)
    ref = best or trials[0]
    decode_ms = ref["decode_resize_ms_per_frame"]
    infer_ms = ref["inference_ms_per_frame"]
    result = {
        "what": "largest N of concurrent 30 fps 720p H.264 sources (224x224 model input) with <1% drops and "
        "p99 end-to-end latency < 100 ms",
        "mode": "model server over gRPC (serving/)" if mode == "server" else "ONNX Runtime in process",
        "n_sustained": lo,
        "frames_per_s_sustained": lo * FPS,
        "bare_ort": {k: round(v, 2) for k, v in bare.items()},
        "fraction_of_bare_ort_capacity": round(lo * FPS / bare["images_per_s"], 3),
        "decode_share": {
            "decode_resize_ms_per_frame": decode_ms,
            "inference_ms_per_frame_in_pipeline": infer_ms,
            "ratio_vs_pipeline_inference": round(decode_ms / infer_ms, 2) if decode_ms and infer_ms else None,
            "ratio_vs_bare_ort_batch8": round(decode_ms / bare["ms_per_image_batch8"], 2)
            if decode_ms
            else None,
            "at_n": ref["n"],
        },
        "decode_alone_one_core": {k: round(v, 2) for k, v in decode.items()},
        "trials": trials,
        "model": "mobilenet_v3_small (random weights), fp32, 224x224",
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
            "platform": platform.platform(),
            "processor": platform.processor(),
        },
        "wall_s": round(time.monotonic() - t_start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print()
    print(f"{'mode':<34}{result['mode']}")
    print(f"{'sustained cameras (30 fps, 720p)':<34}{lo}  ({lo * FPS} frames/s)")
    print(f"{'bare ONNX Runtime':<34}{bare['images_per_s']:.0f} images/s")
    print(f"{'fraction of bare ORT capacity':<34}{result['fraction_of_bare_ort_capacity']:.1%}")
    print(
        f"{'decode+resize / inference':<34}{decode_ms} ms / {infer_ms} ms per frame = "
        f"{result['decode_share']['ratio_vs_pipeline_inference']}x"
    )
    print(f"results: {args.out}")
    return result


if __name__ == "__main__":
    main()
