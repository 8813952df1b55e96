"""edgeloop's model server: ONNX Runtime behind kserve's ModelServer (REST v1/v2 + gRPC).

Importing this package is cheap; kserve and onnxruntime load only with
:mod:`edgeloop.serving.server` / :mod:`edgeloop.serving.model`. Clients use :mod:`edgeloop.serving.client`
(no kserve import) and tests/pipelines start servers with :mod:`edgeloop.serving.launcher`.
"""
