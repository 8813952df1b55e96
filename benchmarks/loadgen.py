"""Load generators that take little CPU from the server they measure.

* REST binary: ``wrk`` (C, Debian package ``wrk``) posting one pre-built OIP binary-tensor body
  from a Lua script; closed loop with N connections.
* gRPC: ``h2load`` (C, Debian package ``nghttp2-client``) posting one pre-framed
  ``ModelInferRequest`` as N concurrent streams on one HTTP/2 connection, as one channel would;
  h2load cannot read gRPC trailers, so the caller checks the server's own count of answered
  images against it. Else, and for the open loop at a rate (latency at a known load), a
  ``grpc.aio`` client in its own process sending the pre-serialized request as raw bytes.

    python -m benchmarks.loadgen grpc --target 127.0.0.1:8081 --body req.bin --concurrency 16 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"

_WRK_LUA = """
wrk.method = "POST"
local f = io.open("{body}", "rb")
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.headers["Inference-Header-Content-Length"] = "{header_len}"
{auth}
done = function(summary, latency, requests)
  io.write(string.format('WRKJSON {{"requests": %d, "duration_us": %d, "non2xx": %d, "errors": %d, '
    .. '"p50_us": %d, "p99_us": %d}}\\n', summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def grpc_body(model: str, frames: np.ndarray, outputs: tuple[str, ...] = ()) -> bytes:
    """One serialized ModelInferRequest with ``frames`` (uint8 NHWC) as raw input contents."""
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    req = pb.ModelInferRequest(model_name=model)
    inp = req.inputs.add()
    inp.name, inp.datatype = "images", "UINT8"
    inp.shape.extend(frames.shape)
    req.raw_input_contents.append(frames.tobytes())
    for name in outputs:
        req.outputs.add().name = name
    return req.SerializeToString()


def rest_body(frames: np.ndarray, outputs: tuple[str, ...] = ()) -> tuple[bytes, int]:
    from edgeloop.testing.oip import binary_request

    return binary_request(frames, outputs=[{"name": o} for o in outputs] if outputs else None)


def wrk(
    url: str, body: bytes, header_len: int, connections: int, seconds: float, token: str | None = None
) -> dict:
    """Closed-loop REST binary load with wrk (one thread: it needs little CPU)."""
    exe = shutil.which("wrk")
    if exe is None:
        raise RuntimeError("wrk is missing: `make setup` installs it (Debian package wrk)")
    with tempfile.TemporaryDirectory() as d:
        bpath, lua = Path(d) / "body.bin", Path(d) / "post.lua"
        bpath.write_bytes(body)
        auth = f'wrk.headers["Authorization"] = "Bearer {token}"' if token else ""
        lua.write_text(_WRK_LUA.format(body=bpath, header_len=header_len, auth=auth))
        out = subprocess.run(
            [
                exe,
                "-t1",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                *("--timeout", "60s"),  # wrk's 2 s default drops slow answers on a busy box
                "-s",
                str(lua),
                "--latency",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=True,
        ).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("WRKJSON "))
    r = json.loads(line[len("WRKJSON ") :])
    return {
        "requests_per_s": round(r["requests"] / (r["duration_us"] / 1e6), 1),
        "requests": r["requests"],
        "errors": r["non2xx"] + r["errors"],
        "p50_ms": round(r["p50_us"] / 1000, 2),
        "p99_ms": round(r["p99_us"] / 1000, 2),
    }


def h2load_grpc(target: str, body: bytes, seconds: float, concurrency: int = 16) -> dict | None:
    """Closed-loop gRPC ``ModelInfer`` load from h2load (one connection, ``concurrency`` streams);
    None when h2load is not installed. Every answer must be HTTP 200; gRPC errors travel in
    trailers h2load does not read (the caller checks the server's counters)."""
    exe = shutil.which("h2load")
    if exe is None:
        return None
    with tempfile.NamedTemporaryFile(suffix=".bin") as f:
        f.write(b"\0" + struct.pack(">I", len(body)) + body)  # gRPC message framing, uncompressed
        f.flush()
        cmd = [exe, "-c", "1", "-m", str(concurrency), "-t", "1", f"-D{max(1, round(seconds))}"]
        cmd += ["-d", f.name, "-H", "content-type: application/grpc", "-H", "te: trailers"]
        cmd += [f"http://{target}{MODEL_INFER}"]  # no warm-up: every answered call is counted
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    rate = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", out)
    lat = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", out)
    if not (done and rate and lat):
        raise RuntimeError(f"unexpected h2load output:\n{out[-2000:]}")
    return {
        "requests_per_s": round(float(rate.group(2)), 1),
        "requests": int(done.group(2)),
        "errors": int(done.group(3)),
        "mean_ms": round(_ms(lat.group(3)), 2),
        "load_generator": "h2load",
    }


def _ms(text: str) -> float:
    """h2load's durations (``870us``, ``5.88ms``, ``1.2s``) in milliseconds."""
    for unit, scale in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    raise ValueError(f"not an h2load duration: {text!r}")


def grpc_load(
    target: str, body: bytes, seconds: float, concurrency: int = 16, rate: float | None = None
) -> dict:
    """Run :func:`_grpc_main` in a child process (its CPU is its own, its GIL too)."""
    with tempfile.NamedTemporaryFile(suffix=".bin") as f:
        f.write(body)
        f.flush()
        cmd = [sys.executable, "-m", "benchmarks.loadgen", "grpc", "--target", target, "--body", f.name]
        cmd += ["--seconds", str(seconds), "--concurrency", str(concurrency)]
        if rate:
            cmd += ["--rate", str(rate)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


async def _grpc_main(target: str, body: bytes, seconds: float, concurrency: int, rate: float | None) -> dict:
    from grpc import aio

    opts = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    async with aio.insecure_channel(target, options=opts) as channel:
        call = channel.unary_unary(MODEL_INFER, request_serializer=None, response_deserializer=None)
        for _ in range(8):
            await call(body)
        lat: list[float] = []
        errors = 0

        async def one() -> None:
            nonlocal errors
            t = time.perf_counter()
            try:
                await call(body)
                lat.append(time.perf_counter() - t)
            except Exception:
                errors += 1

        t0 = time.perf_counter()
        stop = t0 + seconds
        if rate:  # open loop: send on schedule whatever the answers do
            tasks, i = [], 0
            while (now := time.perf_counter()) < stop:
                due = t0 + i / rate
                if due > now:
                    await asyncio.sleep(due - now)
                tasks.append(asyncio.ensure_future(one()))
                i += 1
            await asyncio.gather(*tasks)
        else:

            async def worker() -> None:
                while time.perf_counter() < stop:
                    await one()

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    a = np.asarray(lat or [0.0]) * 1000
    return {
        "requests_per_s": round(len(lat) / wall, 1),
        "requests": len(lat),
        "errors": errors,
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p99_ms": round(float(np.percentile(a, 99)), 2),
        **({"rate_rps": rate} if rate else {}),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("grpc", help="raw-bytes grpc.aio ModelInfer load")
    g.add_argument("--target", required=True)
    g.add_argument("--body", type=Path, required=True, help="a serialized ModelInferRequest")
    g.add_argument("--seconds", type=float, default=5.0)
    g.add_argument("--concurrency", type=int, default=16)
    g.add_argument("--rate", type=float, default=None, help="requests/s (open loop) instead of closed loop")
    args = ap.parse_args(argv)
    res: dict[str, Any] = asyncio.run(
        _grpc_main(args.target, args.body.read_bytes(), args.seconds, args.concurrency, args.rate)
    )
    print(json.dumps(res))


if __name__ == "__main__":
    main()
