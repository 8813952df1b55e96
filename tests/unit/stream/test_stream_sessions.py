"""In-process inference: one ONNX Runtime session per worker thread, all answering alike."""

from __future__ import annotations

import threading

import numpy as np
import onnxruntime as ort

from edgeloop.core.preprocessing import Preprocess, PreprocessConfig
from edgeloop.stream.predictors import OnnxPredictor
from edgeloop.testing.media import random_frames
from edgeloop.testing.models import build_tiny_model_dir
from edgeloop.testing.waits import join


def test_each_worker_thread_gets_its_own_session_and_the_bare_answers(tmp_path):
    model = build_tiny_model_dir(tmp_path / "m", size=32)
    frames = random_frames(8, 32, seed=4)
    x = Preprocess(PreprocessConfig(size=32)).batch(list(frames))
    want = ort.InferenceSession(str(model / "model.onnx")).run(["probabilities"], {"images": x})[0]
    predictor = OnnxPredictor(model, sessions=2)
    assert predictor.sessions == 2
    used: dict[str, int] = {}
    got: dict[str, np.ndarray] = {}

    def worker(name: str) -> None:
        for _ in range(3):
            preds = predictor.predict(frames)
        used[name] = id(predictor._sessions.get())  # this thread's own
        got[name] = np.stack([p.probabilities for p in preds])

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        join(t, 120, "a worker thread's three predictions")
    assert len(set(used.values())) == 2  # two threads, two sessions
    for probs in got.values():
        np.testing.assert_allclose(probs, want, atol=1e-5)
    assert OnnxPredictor(model).sessions == 1
