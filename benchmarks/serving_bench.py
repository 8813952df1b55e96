"""Serving benchmark: the server against bare ONNX Runtime, side by side, in one run.

    .venv/bin/python -m benchmarks.serving_bench [--quick] [--seconds 4]

Same model files (mobilenet_v3_small, random weights, exported from torchvision with
weights=None) and the same ONNX Runtime thread settings for the server and the bare
baseline. Measures images/s at saturation for gRPC and REST binary at 224x224 and
64x64 and the served/bare ratio; p50/p99 at 50% of saturation; dynamic batching on vs
off under concurrency; REST JSON vs REST binary vs gRPC; JPEG vs raw frames; cold start
(launch to ready); and the REST decode cost of stock kserve vs this server's codec.
Writes ``benchmarks/results/serving.json`` and prints a table.

The load generator runs in this process on the same cores as the server (2 on the
reference box), so absolute numbers are a floor; the ratios are the point.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "serving.json"
CACHE = Path(tempfile.gettempdir()) / "edgeloop-bench-models"
MAX_BATCH = 16
CONCURRENCY = 32


def build_models() -> dict[int, Path]:
    from edgeloop.testing.models import build_model_dir

    dirs = {}
    for size in (224, 64):
        d = CACHE / f"mnv3-{size}"
        if not (d / "model_card.json").exists():
            build_model_dir(d, size=size, seed=0, name=f"mnv3-{size}", version="1")
        dirs[size] = d
    return dirs


# ----------------------------------------------------------------------------- bare ONNX Runtime
def bare_ort(model_dir: Path, size: int, batch: int, seconds: float) -> float:
    """Images/s of back-to-back ``batch``-sized runs with the server's session settings."""
    import onnxruntime as ort

    from edgeloop.core.model_loader import OrtSettings

    sess = ort.InferenceSession(
        str(model_dir / "model.onnx"),
        sess_options=OrtSettings().session_options(),
        providers=["CPUExecutionProvider"],
    )
    x = np.random.default_rng(0).normal(size=(batch, 3, size, size)).astype(np.float32)
    for _ in range(3):
        sess.run(None, {"images": x})
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sess.run(None, {"images": x})
        n += batch
    return n / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------- load generation
def make_client(kind: str, srv: Any, model: str) -> Any:
    from edgeloop.serving.client import AsyncGrpcClient, AsyncRestClient

    if kind == "grpc":  # srv.security: TLS and the token when the server was started with them
        return AsyncGrpcClient(srv.grpc_target, model, security=srv.security)
    return AsyncRestClient(srv.rest_url, model, binary=(kind == "rest_binary"), security=srv.security)


async def _close(client: Any) -> None:
    await client.aclose()


def saturation(
    kind: str, srv: Any, model: str, data: Any, seconds: float, concurrency: int = CONCURRENCY
) -> dict:
    """Closed loop: ``concurrency`` requests always in flight; images/s and latency."""

    async def main() -> dict:
        client = make_client(kind, srv, model)
        for _ in range(4):
            await client.infer(data)
        lat: list[float] = []
        errors = 0
        stop = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                t = time.perf_counter()
                try:
                    await client.infer(data)
                    lat.append(time.perf_counter() - t)
                except Exception:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
        await _close(client)
        n = len(data) if isinstance(data, list) else data.shape[0]
        return {
            "images_per_s": round(len(lat) * n / wall, 1),
            "requests": len(lat),
            "errors": errors,
            **_pcts(lat),
        }

    return asyncio.run(main())


def fixed_rate(kind: str, srv: Any, model: str, data: Any, rate: float, seconds: float) -> dict:
    """Open loop at ``rate`` requests/s: latency percentiles at a known load."""

    async def main() -> dict:
        client = make_client(kind, srv, model)
        for _ in range(4):
            await client.infer(data)
        lat: list[float] = []
        errors = 0

        async def one() -> None:
            nonlocal errors
            t = time.perf_counter()
            try:
                await client.infer(data)
                lat.append(time.perf_counter() - t)
            except Exception:
                errors += 1

        tasks = []
        t0 = time.perf_counter()
        i = 0
        while (now := time.perf_counter()) - t0 < seconds:
            due = t0 + i / rate
            if due > now:
                await asyncio.sleep(due - now)
            tasks.append(asyncio.ensure_future(one()))
            i += 1
        await asyncio.gather(*tasks)
        await _close(client)
        return {"rate_rps": round(rate, 1), "sent": i, "errors": errors, **_pcts(lat)}

    return asyncio.run(main())


def _pcts(lat: list[float]) -> dict:
    if not lat:
        return {}
    a = np.asarray(lat) * 1000
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p99_ms": round(float(np.percentile(a, 99)), 2),
        "mean_ms": round(float(a.mean()), 2),
    }


def batch_mean(srv: Any, model: str) -> float | None:
    import httpx

    text = httpx.get(srv.rest_url + "/metrics").text
    s = c = 0.0
    for line in text.splitlines():
        if f'model="{model}"' not in line:
            continue
        if line.startswith("edgeloop_serving_batch_size_sum"):
            s += float(line.split()[-1])
        elif line.startswith("edgeloop_serving_batch_size_count"):
            c += float(line.split()[-1])
    return round(s / c, 2) if c else None


# ----------------------------------------------------------------------------- decode cost
def decode_cost(size: int) -> dict:
    """ms to decode one binary [1,size,size,3] UINT8 REST body: stock kserve vs edgeloop.serving.codec."""
    import orjson
    from kserve.protocol.infer_type import InferRequest

    from edgeloop.serving import codec

    frames = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    raw = frames.tobytes()
    hdr = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "shape": list(frames.shape),
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    )
    body = hdr + raw

    def stock() -> None:
        InferRequest.from_bytes(body, len(hdr), "m").inputs[0].as_numpy()

    def ours() -> None:
        codec.tensor_values(codec.decode_rest_v2(body, len(hdr), "m").inputs[0])

    out = {}
    for name, fn in (("kserve_stock_ms", stock), ("edgeloop_ms", ours)):
        reps = 5 if name.startswith("kserve") else 200
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        out[name] = round(statistics.median(ts) * 1000, 3)
    return out


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=4.0, help="duration of each measurement")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the headline measurements")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    sec = args.seconds

    from edgeloop.serving.launcher import running_server
    from edgeloop.testing.media import encode_jpeg, random_frames

    t_start = time.perf_counter()
    dirs = build_models()
    res: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
        },
        "settings": {
            "max_batch_size": MAX_BATCH,
            "max_wait_ms": 2.0,
            "concurrency": CONCURRENCY,
            "seconds_per_measurement": sec,
            "request_batch": 1,
            "model": "mobilenet_v3_small (torchvision, weights=None), fp32, CPUExecutionProvider",
        },
    }
    res["decode_ms_per_request"] = {f"{s}": decode_cost(s) for s in (224, 64)}
    frames = {s: random_frames(1, s, seed=1) for s in (224, 64)}
    extra = ["--max_batch_size", str(MAX_BATCH), "--max_batch_wait_ms", "2"]
    print("starting servers (batching on: both models; batching off: 224) ...", flush=True)
    with (
        running_server([dirs[224], dirs[64]], extra_args=extra) as srv,
        running_server([dirs[224]], extra_args=["--batching", "false"]) as off_srv,
    ):
        res["cold_start_s"] = round(srv.started_s, 2)
        # The box is shared and noisy: interleave the headline measurements (bare, served, batching
        # off) in rounds under the same conditions and keep each one's median round.
        rounds: dict[str, list[dict]] = {}
        for rnd in range(args.rounds):
            print(f"round {rnd + 1}/{args.rounds} ...", flush=True)
            for s in (224, 64):
                rounds.setdefault(f"bare_{s}_batch1", []).append(
                    {"images_per_s": round(bare_ort(dirs[s], s, 1, sec / 2), 1)}
                )
                rounds.setdefault(f"bare_{s}_batch{MAX_BATCH}", []).append(
                    {"images_per_s": round(bare_ort(dirs[s], s, MAX_BATCH, sec / 2), 1)}
                )
                for kind in ("grpc", "rest_binary"):
                    rounds.setdefault(f"{kind}_{s}", []).append(
                        saturation(kind, srv, f"mnv3-{s}", frames[s], sec)
                    )
            rounds.setdefault("batching_off_grpc_224", []).append(
                saturation("grpc", off_srv, "mnv3-224", frames[224], sec)
            )
        med = {k: sorted(v, key=lambda r: r["images_per_s"])[len(v) // 2] for k, v in rounds.items()}
        res["rounds"] = {k: [r["images_per_s"] for r in v] for k, v in rounds.items()}
        res["bare_ort_images_per_s"] = {
            k[5:]: v["images_per_s"] for k, v in med.items() if k.startswith("bare_")
        }
        sat: dict[str, Any] = {}
        for s in (224, 64):
            for kind in ("grpc", "rest_binary"):
                r = dict(med[f"{kind}_{s}"])
                r["efficiency_vs_bare_batch16"] = round(
                    r["images_per_s"] / res["bare_ort_images_per_s"][f"{s}_batch{MAX_BATCH}"], 3
                )
                sat[f"{kind}_{s}"] = r
        sat["rest_json_64"] = saturation("rest_json", srv, "mnv3-64", frames[64], sec)
        sat["rest_json_64"]["efficiency_vs_bare_batch16"] = round(
            sat["rest_json_64"]["images_per_s"] / res["bare_ort_images_per_s"][f"64_batch{MAX_BATCH}"], 3
        )
        jpeg = [encode_jpeg(frames[224][0])]
        sat["grpc_jpeg_224"] = saturation("grpc", srv, "mnv3-224", jpeg, sec)
        sat["grpc_raw_224_again"] = saturation("grpc", srv, "mnv3-224", frames[224], sec)
        res["saturation"] = sat
        res["mean_batch_size_under_saturation"] = {
            "224": batch_mean(srv, "mnv3-224"),
            "64": batch_mean(srv, "mnv3-64"),
        }
        lat = {}
        for kind in ("grpc", "rest_binary"):
            rate = 0.5 * sat[f"{kind}_224"]["images_per_s"]
            lat[f"{kind}_224"] = fixed_rate(kind, srv, "mnv3-224", frames[224], rate, sec)
        res["latency_at_50pct_saturation"] = lat
        res["single_request_latency_64"] = {
            k: fixed_rate(k, srv, "mnv3-64", frames[64], 20, min(sec, 2))
            for k in ("grpc", "rest_binary", "rest_json")
        }
    on, off = med["grpc_224"], med["batching_off_grpc_224"]
    res["batching"] = {
        "on_grpc_224": on["images_per_s"],
        "off_grpc_224": off["images_per_s"],
        "gain": round(on["images_per_s"] / off["images_per_s"], 2),
        "off_p50_ms": off.get("p50_ms"),
        "on_p50_ms": on.get("p50_ms"),
    }
    res["jpeg_vs_raw_224"] = {
        "raw_images_per_s": sat["grpc_raw_224_again"]["images_per_s"],
        "jpeg_images_per_s": sat["grpc_jpeg_224"]["images_per_s"],
    }
    res["wall_s"] = round(time.perf_counter() - t_start, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    print_table(res)
    print(f"\nwrote {args.out} ({res['wall_s']} s)")
    return res


def print_table(res: dict) -> None:
    bare = res["bare_ort_images_per_s"]
    sat = res["saturation"]
    print(f"\n{'measurement':38s} {'img/s':>9s} {'vs bare b16':>11s} {'p50 ms':>8s} {'p99 ms':>8s}")
    for key in (
        "grpc_224",
        "rest_binary_224",
        "grpc_64",
        "rest_binary_64",
        "rest_json_64",
        "grpc_jpeg_224",
        "grpc_raw_224_again",
    ):
        r = sat[key]
        eff = r.get("efficiency_vs_bare_batch16")
        print(
            f"{'saturation ' + key:38s} {r['images_per_s']:9.1f} {eff if eff is not None else '':>11} "
            f"{r.get('p50_ms', ''):>8} {r.get('p99_ms', ''):>8}"
        )
    for key, r in res["latency_at_50pct_saturation"].items():
        print(
            f"{'50% load ' + key + ' @' + str(r['rate_rps']) + ' rps':38s} {'':9s} {'':11s} "
            f"{r.get('p50_ms', ''):>8} {r.get('p99_ms', ''):>8}"
        )
    for key, r in res["single_request_latency_64"].items():
        print(
            f"{'20 rps ' + key + '_64':38s} {'':9s} {'':11s} {r.get('p50_ms', ''):>8} {r.get('p99_ms', ''):>8}"
        )
    print(f"bare ORT img/s: {bare}")
    b = res["batching"]
    print(
        f"batching on/off (gRPC 224, {CONCURRENCY} in flight): {b['on_grpc_224']} / {b['off_grpc_224']} img/s "
        f"= x{b['gain']}; mean batch {res['mean_batch_size_under_saturation']}"
    )
    print(f"REST decode ms/request (stock kserve vs edgeloop): {res['decode_ms_per_request']}")
    print(f"cold start (launch to ready, 2 models, beside a second server): {res['cold_start_s']} s")
    print(f"rounds (img/s): {res['rounds']}")


if __name__ == "__main__":
    main()
