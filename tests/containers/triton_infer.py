"""Triton's Python clients against an OIP server; run with .tools/triton-client/bin/python (own venv:
tritonclient cannot share the test process with kserve). Prints the outputs as JSON.

    triton_infer.py {http|grpc} HOST:PORT MODEL INPUT.npy [--ca CA.pem --token-file TOKEN]
        [--outputs probabilities,label]

Without --ca the connection is plain (a test server without TLS). ``outputs`` holds every
requested output as a list (BYTES decoded).
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
    ap.add_argument("--ca")
    ap.add_argument("--token-file")
    ap.add_argument("--outputs", default="probabilities,label")
    a = ap.parse_args()
    x = np.load(a.input)
    names = a.outputs.split(",")
    headers = {"authorization": "Bearer " + open(a.token_file).read().strip()} if a.token_file else {}
    tls = a.ca is not None
    if a.protocol == "http":
        import gevent.ssl
        import tritonclient.http as tc

        client = tc.InferenceServerClient(
            a.url, ssl=tls, ssl_context_factory=lambda: gevent.ssl.create_default_context(cafile=a.ca)
        )
        inp = tc.InferInput("images", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        outs = [tc.InferRequestedOutput(n, binary_data=True) for n in names]
    else:
        import tritonclient.grpc as tc

        client = tc.InferenceServerClient(a.url, ssl=tls, root_certificates=a.ca)
        inp = tc.InferInput("images", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        outs = [tc.InferRequestedOutput(n) for n in names]
    ready = client.is_model_ready(a.model, headers=headers)
    result = client.infer(a.model, [inp], outputs=outs, headers=headers)
    outputs = {}
    for n in names:
        v = result.as_numpy(n)
        outputs[n] = (
            [e.decode() if isinstance(e, bytes) else str(e) for e in v.ravel()]
            if v.dtype == object
            else v.tolist()
        )
    answer = {
        "ready": bool(ready),
        "outputs": outputs,
        "model_version": result.get_response()["model_version"]
        if a.protocol == "http"
        else result.get_response().model_version,
    }
    if "probabilities" in outputs and "label" in outputs:
        answer.update(probabilities=outputs["probabilities"], labels=outputs["label"])
    print(json.dumps(answer))


if __name__ == "__main__":
    main()
