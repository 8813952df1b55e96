"""edgeloop's model server: ONNX Runtime behind kserve's ModelServer (REST v1/v2 + gRPC).

Importing this package is cheap; kserve and onnxruntime load only with
:mod:`serving.server` / :mod:`serving.model`. Clients use :mod:`serving.client`
(no kserve import) and tests/pipelines start servers with :mod:`serving.launcher`.
"""
