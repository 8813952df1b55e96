# edgeloop-training: edgeloop-pipeline plus torch and torchvision. The train-model and export-onnx
# steps, the TrainingRuntime (torchrun) and TrainJobs run in it. Build with `make images` (after
# edgeloop-pipeline). Build arguments:
#   PIPELINE_IMAGE     the edgeloop-pipeline image to extend (make images passes the one it built)
#   TORCH_INDEX_URL    where torch/torchvision come from (default: PyTorch's CPU-only index, ~0.7 GB
#                      instead of PyPI's CUDA build with ~3 GB of CUDA libraries; a CUDA index such
#                      as https://download.pytorch.org/whl/cu130 gives a GPU training image)
#   TORCH_REQUIREMENT  the torch/torchvision pins (default: requirements/constraints.txt's)
#   TORCH_EXTRA_INDEX_URL (optional) a second index, e.g. file:///wheels/simple for a local simple index
#                      passed as the `wheels` context; pip takes a file both indexes offer from this one
#   build context `wheels` (optional): a directory of wheels pip may also use (--find-links), or the
#                      root of a local simple index (with TORCH_EXTRA_INDEX_URL)
#   secret cacert (optional): a CA bundle pip trusts; never stored.
ARG PIPELINE_IMAGE=ghcr.io/edgeloop/edgeloop-pipeline:0.1.0

FROM scratch AS wheels

FROM ${PIPELINE_IMAGE}
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_REQUIREMENT="torch==2.14.1 torchvision==0.29.1"
ARG TORCH_EXTRA_INDEX_URL=""
USER 0:0
RUN --mount=type=secret,id=cacert --mount=type=bind,from=wheels,target=/wheels \
    if [ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi \
    && pip install -q --no-cache-dir --index-url "$TORCH_INDEX_URL" \
       ${TORCH_EXTRA_INDEX_URL:+--extra-index-url "$TORCH_EXTRA_INDEX_URL"} --find-links /wheels $TORCH_REQUIREMENT \
    && find /opt/venv -name __pycache__ -prune -exec rm -rf {} + \
    && python -c "import torch, torchvision, edgeloop.components.train; print('torch', torch.__version__)"
USER 1000:1000
