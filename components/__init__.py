"""edgeloop's training path (issue 3): labels -> dataset -> DDP training -> ONNX -> precision -> model card.

Every step is a plain typed function (CLI, tests and the KFP wrappers in
:mod:`components.kfp_components` call the same code). Heavy libraries (torch,
onnxruntime, mlflow, label_studio_sdk) are imported inside functions only.
"""
