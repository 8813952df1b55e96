"""ONNX Runtime session setup: execution provider choice with fallback, and deliberate thread settings."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Preferred first. TensorRT and CUDA need onnxruntime-gpu; OpenVINO needs onnxruntime-openvino.
DEFAULT_PROVIDER_ORDER = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "OpenVINOExecutionProvider",
    "CPUExecutionProvider",
)
_SHORT = {
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


def provider_name(name: str) -> str:
    """``cuda`` / ``CUDA`` / ``CUDAExecutionProvider`` -> ``CUDAExecutionProvider``."""
    return _SHORT.get(name.strip().lower(), name.strip())


def choose_providers(preferred: Sequence[str], available: Sequence[str]) -> list[str]:
    """The preferred providers that this onnxruntime build has, in order; CPU always last as a fallback."""
    chosen = [
        p for p in (provider_name(n) for n in preferred) if p in available and p != "CPUExecutionProvider"
    ]
    chosen = list(dict.fromkeys(chosen))
    chosen.append("CPUExecutionProvider")
    return chosen


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@dataclass
class OrtSettings:
    """Thread and graph settings. ``intra_op_threads=0`` means: one per available core.

    Spinning is off by default: spinning workers burn the cores the event loop needs to
    decode the next requests (measured on 2 cores; turn it on for a dedicated box).
    """

    providers: list[str] = field(default_factory=lambda: list(DEFAULT_PROVIDER_ORDER))
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    allow_spinning: bool = False
    graph_optimization: str = "all"  # disable | basic | extended | all

    def session_options(self) -> Any:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = self.intra_op_threads or available_cpus()
        so.inter_op_num_threads = self.inter_op_threads
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.graph_optimization]
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.allow_spinning else "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "1" if self.allow_spinning else "0")
        so.log_severity_level = 3
        return so


@dataclass
class SessionInfo:
    provider: str  # the provider that runs the model's nodes first
    providers: list[str]  # what the session reports, in priority order
    tried: list[tuple[str, str]]  # (provider list that failed, why)


def create_session(model: Path | bytes, settings: OrtSettings) -> tuple[Any, SessionInfo]:
    """An ``InferenceSession`` (from a path or verified bytes) on the best available provider,
    falling back down the configured order."""
    import onnxruntime as ort

    source = model if isinstance(model, bytes) else str(model)

    chosen = choose_providers(settings.providers, ort.get_available_providers())
    tried: list[tuple[str, str]] = []
    for i in range(len(chosen)):
        attempt = chosen[i:]
        try:
            sess = ort.InferenceSession(source, sess_options=settings.session_options(), providers=attempt)
        except Exception as e:  # a provider that is present but cannot start (driver, library)
            log.warning(
                "execution provider %s failed (%s: %s); falling back", attempt[0], type(e).__name__, e
            )
            tried.append((attempt[0], f"{type(e).__name__}: {e}"))
            continue
        used = sess.get_providers()
        info = SessionInfo(provider=used[0], providers=used, tried=tried)
        if used[0] != chosen[0]:
            log.warning("wanted %s, running on %s", chosen[0], used[0])
        return sess, info
    raise RuntimeError(f"no execution provider could load the model: {tried}")
