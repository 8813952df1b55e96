"""Triton's Python clients against an OIP server; run with .tools/triton-client/bin/python (own venv:
tritonclient cannot share the test process with kserve). Prints the outputs as JSON.

    triton_infer.py {http|grpc} HOST:PORT MODEL INPUT.npy --ca CA.pem --token-file TOKEN
"""

import argparse
import json

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("protocol", choices=["http", "grpc"])
    ap.add_argument("url")
    ap.add_argument("model")
    ap.add_argument("input")
    ap.add_argument("--ca", required=True)
    ap.add_argument("--token-file", required=True)
    a = ap.parse_args()
    x = np.load(a.input)
    headers = {"authorization": "Bearer " + open(a.token_file).read().strip()}
    if a.protocol == "http":
        import gevent.ssl
        import tritonclient.http as tc

        client = tc.InferenceServerClient(
            a.url, ssl=True, ssl_context_factory=lambda: gevent.ssl.create_default_context(cafile=a.ca)
        )
        inp = tc.InferInput("images", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        outs = [tc.InferRequestedOutput(n, binary_data=True) for n in ("probabilities", "label")]
    else:
        import tritonclient.grpc as tc

        client = tc.InferenceServerClient(a.url, ssl=True, root_certificates=a.ca)
        inp = tc.InferInput("images", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        outs = [tc.InferRequestedOutput(n) for n in ("probabilities", "label")]
    ready = client.is_model_ready(a.model, headers=headers)
    result = client.infer(a.model, [inp], outputs=outs, headers=headers)
    labels = [v.decode() if isinstance(v, bytes) else str(v) for v in result.as_numpy("label").ravel()]
    print(
        json.dumps(
            {
                "ready": bool(ready),
                "probabilities": result.as_numpy("probabilities").tolist(),
                "labels": labels,
                "model_version": result.get_response()["model_version"]
                if a.protocol == "http"
                else result.get_response().model_version,
            }
        )
    )


if __name__ == "__main__":
    main()
