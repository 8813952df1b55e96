"""Monitoring and the relabel loop: reference profiles, drift scans over the payload log,
per-image flags and a budgeted, idempotent relabel queue into Label Studio.

Entry points:

* :func:`edgeloop.monitoring.profile.build_reference_profile` - at training time, store the
  reference profile next to ``model.onnx`` (``reference_profile.npz``);
* :func:`edgeloop.monitoring.scan.scan_window` - one drift scan over a window of served traffic;
* ``edgeloop monitor scan|run|deliver`` - the command line (``edgeloop.monitoring.cli``).

Nothing heavy is imported here: submodules import numpy/onnxruntime/label_studio_sdk themselves.
"""
