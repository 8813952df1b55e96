"""The Kubeflow training pipeline: staging evaluation, the human-gated registry, image build, deploy.

Library modules (``evaluation``, ``gate``, ``registry``, ``image_build``, ``deploy``) hold the logic
and are plain Python; ``steps`` holds thin KFP components over them and ``training_pipeline`` the DAG.
"""
