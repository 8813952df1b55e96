"""Kubernetes manifests for edgeloop: render (kustomize + typed edits), validate, plan capacity.

- :mod:`edgeloop.deploy.render`: render an overlay, fill the InferenceService
  template for a model version, build a Trainer v2 TrainJob, write a GitOps directory.
- :mod:`edgeloop.deploy.validate`: check objects against the Kubernetes and CRD
  schemas plus edgeloop's own rules (Pod Security "restricted", digests, no secret values).
- :mod:`edgeloop.deploy.plan`: turn measured per-replica throughput into replicas and
  autoscaler targets, and replay load traces through the HPA algorithm.

Nothing here imports the Kubernetes client or reads settings at import time.
"""
