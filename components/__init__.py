"""edgeloop's training path (issue 3): labels -> dataset -> DDP training -> ONNX -> precision -> model card.

Every step is a plain typed function: the CLI, the tests and the pipeline's thin KFP
components (:mod:`edgeloop.pipelines.steps`, via :mod:`edgeloop.pipelines.tasks`) call the same code. Heavy libraries (torch,
onnxruntime, mlflow, label_studio_sdk) are imported inside functions only.
"""
