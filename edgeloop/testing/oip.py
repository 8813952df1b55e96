"""Open Inference Protocol request bodies, built the way a client sends them."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson


def binary_request(
    arr: np.ndarray,
    datatype: str = "UINT8",
    shape: list[int] | None = None,
    outputs: list[dict[str, Any]] | None = None,
    name: str = "images",
) -> tuple[bytes, int]:
    """A REST v2 binary-tensor body and its JSON header's length (``Inference-Header-Content-Length``)."""
    raw = arr.tobytes()
    request: dict[str, Any] = {
        "inputs": [
            {
                "name": name,
                "shape": shape or list(arr.shape),
                "datatype": datatype,
                "parameters": {"binary_data_size": len(raw)},
            }
        ]
    }
    if outputs is not None:
        request["outputs"] = outputs
    header = orjson.dumps(request)
    return header + raw, len(header)


def json_request(shape: list[int], datatype: str, data: Any, name: str = "images") -> bytes:
    """A REST v2 JSON body with one input."""
    return orjson.dumps({"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]})
