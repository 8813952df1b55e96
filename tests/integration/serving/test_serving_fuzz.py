"""Fuzz every REST route of the Open Inference Protocol spec (vendored from KServe) and the V1
predict route: malformed names, versions, methods and bodies get a 4xx, never a 5xx."""

from __future__ import annotations

import random
from typing import Any

import httpx
import orjson
import pytest
import yaml

from edgeloop.schemas import schemas_dir

MODEL, VERSION = "inspection", "1"
NAMES = [MODEL, "nope", "in%2Fspection", "a" * 300, "..", "%00", "inspection%20x"]
VERSIONS = [VERSION, "2", "999", "-1", "..", "1.0", "%2e%2e", "x" * 200]


def _spec_routes() -> list[tuple[str, str]]:
    spec = yaml.safe_load((schemas_dir() / "kserve" / "oip_rest_predict_v2.yaml").read_text())
    routes = []
    for path, ops in spec["paths"].items():
        for method in ops:
            if method != "parameters":
                routes.append((method.upper(), path))
                if "${MODEL_VERSION}" in path:  # the spec marks the version segment optional
                    routes.append((method.upper(), path.replace("/versions/${MODEL_VERSION}", "")))
    routes.append(("POST", "/v1/models/${MODEL_NAME}:predict"))
    return routes


def _bodies(rng: random.Random) -> list[tuple[bytes, dict[str, str]]]:
    j = {"Content-Type": "application/json"}
    shapes: list[Any] = [[1, 64, 64, 3], [], [-1], [2**62, 2], "x", [1.5], None, [[1]]]
    datatypes: list[Any] = ["UINT8", "FP32", "BYTES", "FP64", "INT4", "", 7, None]
    cases: list[tuple[bytes, dict[str, str]]] = [
        (b"", j),
        (b"{", j),
        (b"null", j),
        (b"[]", j),
        (b'"inputs"', j),
        (b"\xff\xfe\x00", j),
        (b'{"inputs": {}}', j),
        (b'{"inputs": [null]}', j),
        (b'{"instances": "x"}', j),
        (b'{"instances": [[[[[[[[[[1]]]]]]]]]]}', j),
        (b'{"inputs": [], "outputs": 5}', j),
        (b'{"inputs": [{"name": "images"}]}', j),
        (b"{}", {"Content-Type": "application/octet-stream"}),
        (b"{}" + b"\x00" * 64, {"Inference-Header-Content-Length": "2"}),
        (b"{}", {"Inference-Header-Content-Length": "-5"}),
        (b"{}", {"Inference-Header-Content-Length": "99999"}),
        (b"{}", {"Inference-Header-Content-Length": "abc"}),
        (rng.randbytes(512), {}),
    ]
    for _ in range(40):
        inp: dict[str, Any] = {
            "name": rng.choice(["images", "", "x" * 100, 3]),
            "shape": rng.choice(shapes),
            "datatype": rng.choice(datatypes),
            "data": rng.choice(
                [[1, 2, 3], [], "AAAA", [["a"]], [1e308], [None], {"a": 1}, list(range(12288))]
            ),
        }
        if rng.random() < 0.3:
            inp["parameters"] = rng.choice([{"binary_data_size": rng.randint(-3, 10**6)}, [], "p"])
        body = {
            "inputs": [inp] * rng.randint(1, 3),
            "parameters": rng.choice([None, {}, [], {"embedding": "yes"}]),
        }
        cases.append((orjson.dumps(body), j))
        v1 = {"instances": rng.choice([[inp["data"]], [{"b64": "!!!"}], [{"b64": "AAAA"}], [[[0] * 3] * 2]])}
        cases.append((orjson.dumps(v1), j))
    return cases


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.rest_url, timeout=30) as c:
        yield c


def test_no_route_of_the_spec_answers_5xx_to_malformed_input(client, server):
    rng = random.Random(20261129)
    bodies = _bodies(rng)
    seen: dict[int, int] = {}
    bad: list[str] = []
    for method, template in _spec_routes():
        for name in NAMES:
            for version in VERSIONS if "${MODEL_VERSION}" in template else [VERSION]:
                path = template.replace("${MODEL_NAME}", name).replace("${MODEL_VERSION}", version)
                tries = [(method, b"", {})] if method == "GET" else [(method, *b) for b in bodies]
                tries += [(m, b"{}", {}) for m in ("PUT", "DELETE", "PATCH") if rng.random() < 0.2]
                for verb, content, headers in tries:
                    r = client.request(verb, path, content=content, headers=headers)
                    seen[r.status_code] = seen.get(r.status_code, 0) + 1
                    if r.status_code >= 500:
                        bad.append(f"{verb} {path} {content[:80]!r} -> {r.status_code} {r.text[:200]}")
    print("status counts:", dict(sorted(seen.items())))
    assert not bad, f"{len(bad)} requests got a 5xx, e.g.\n" + "\n".join(bad[:10])
    assert sum(seen.values()) > 1000 and any(400 <= s < 500 for s in seen)
    # and the server still serves
    ready = client.get(f"/v2/models/{MODEL}/ready")
    assert ready.status_code == 200
