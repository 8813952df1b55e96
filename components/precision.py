"""Choose the serving precision by measurement on the target execution provider.

Candidates: the fp32 export and an int8 static-QDQ variant calibrated on a sample of
training images. Each is measured for latency (batch 1 and 8, median) on the target
provider and for accuracy and top-1 agreement with fp32 on the validation split.
:func:`decide_precision` (pure, unit-tested) picks the fastest candidate within the
bounds; int8 must also beat fp32 by ``min_speedup`` (quantization is a risk worth
taking only for a real gain). On AVX2 CPUs without VNNI int8 QDQ is usually *slower*
than fp32, so the decision is made per target, never by rule.
"""

from __future__ import annotations

import contextlib
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeloop.components.defaults import PrecisionBounds
from edgeloop.components.errors import PrecisionError
from edgeloop.components.stats import metric_fields, proportion_fields, quantile_interval_ranks
from edgeloop.core.model_card import MODEL_FILE, Precision
from edgeloop.core.preprocessing import PreprocessConfig

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np

    from edgeloop.core.preprocessing import Preprocess


@dataclass
class PrecisionMeasurement:
    precision: Precision
    path: str
    latency_ms_b1: float
    latency_ms_b8: float
    accuracy: float
    agreement_with_fp32: float
    size_bytes: int
    latency_ms_b1_p90: float = 0.0
    latency_ms_b8_p90: float = 0.0
    images: int = 0  # validation images behind accuracy and agreement
    latency_runs_b1: int = 0  # timed calls behind each latency median
    latency_runs_b8: int = 0
    latency_ms_b1_ci95: tuple[float, float] = (0.0, 0.0)  # of the median (order statistics)
    latency_ms_b8_ci95: tuple[float, float] = (0.0, 0.0)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["precision"] = self.precision.value
        return d


@dataclass
class PrecisionDecision:
    precision: Precision
    model_path: str
    provider: str
    reasons: list[str]
    measurements: list[PrecisionMeasurement]
    bounds: PrecisionBounds
    errors: dict[str, str] = field(default_factory=dict)  # candidates that could not be built/measured

    def evidence(self) -> dict[str, Any]:
        """What goes into ModelCard.precision_evidence."""
        return {
            "chosen": self.precision.value,
            "provider": self.provider,
            "reasons": self.reasons,
            "bounds": asdict(self.bounds),
            "measurements": [m.as_dict() for m in self.measurements],
            "errors": self.errors,
        }


def decide_precision(
    measurements: list[PrecisionMeasurement],
    bounds: PrecisionBounds = PrecisionBounds(),
    quality: str = "accuracy",
) -> tuple[Precision, list[str]]:
    """The fastest (batch-1 median) variant within the bounds; fp32 is the baseline and always eligible.
    ``quality``: what ``accuracy`` measures (a detector's is mAP@0.5), named in the reasons."""
    by = {m.precision: m for m in measurements}
    if Precision.FP32 not in by:
        raise PrecisionError("precision selection needs the fp32 measurement as its baseline")
    base = by[Precision.FP32]
    chosen, reasons = base, []
    for m in sorted(measurements, key=lambda m: (m.latency_ms_b1, m.latency_ms_b8)):
        if m.precision is Precision.FP32:
            continue
        drop = base.accuracy - m.accuracy
        disagreement = 1.0 - m.agreement_with_fp32
        speedup = base.latency_ms_b1 / m.latency_ms_b1 if m.latency_ms_b1 > 0 else 0.0
        why = (
            f"{m.precision.value}: batch-1 {m.latency_ms_b1:.3f} ms vs fp32 {base.latency_ms_b1:.3f} ms "
            f"(x{speedup:.2f}), {quality} drop {drop:+.4f}, disagreement {disagreement:.4f}"
        )
        if drop > bounds.max_accuracy_drop:
            reasons.append(f"{why}: rejected, {quality} drop above {bounds.max_accuracy_drop}")
        elif disagreement > bounds.max_disagreement:
            reasons.append(f"{why}: rejected, disagreement above {bounds.max_disagreement}")
        elif speedup < bounds.min_speedup:
            reasons.append(f"{why}: rejected, speed-up below x{bounds.min_speedup}")
        elif chosen is base or m.latency_ms_b1 < chosen.latency_ms_b1:
            reasons.append(f"{why}: within bounds and faster")
            chosen = m
        else:
            reasons.append(f"{why}: within bounds but slower than {chosen.precision.value}")
    reasons.append(f"chose {chosen.precision.value}")
    return chosen.precision, reasons


# -- building and measuring variants -------------------------------------------------------------------


class _Calibration:
    def __init__(self, x):
        self._it = iter([{"images": x[i : i + 1]} for i in range(len(x))])

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # pragma: no cover - not used by MinMax
        pass


def quantize_int8(
    fp32_path: Path, out_path: Path, calibration, op_types: Sequence[str] | None = None
) -> Path:
    """Static QDQ int8 (U8 activations, S8 per-channel weights), calibrated on ``calibration`` (NCHW float32).

    Softmax stays in float so probabilities keep their resolution. ``op_types``: quantize only these
    (a detector's box decoding and NMS stay in float: its boxes would move by whole pixels otherwise).
    A graph whose shapes symbolic inference cannot follow (a detector's data-dependent counts) is
    prepared with ONNX's own shape inference.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out_path = Path(out_path).resolve()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    pre = out_path.with_name(out_path.stem + ".pre.onnx")
    fp32 = str(Path(fp32_path).resolve())
    # Incomplete symbolic inference saves its partial graph (and its weights, as external data) in
    # the working directory before it raises: run it where that litter is thrown away.
    with tempfile.TemporaryDirectory(prefix="edgeloop-quant-") as scratch, contextlib.chdir(scratch):
        try:
            quant_pre_process(fp32, str(pre), skip_symbolic_shape=False)
        except Exception:  # noqa: BLE001 - "Incomplete symbolic shape inference"
            quant_pre_process(fp32, str(pre), skip_symbolic_shape=True)
    softmax = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "Softmax"]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.inner = _Calibration(calibration)

        def get_next(self):
            return self.inner.get_next()

    quantize_static(
        str(pre),
        str(out_path),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=softmax,
        op_types_to_quantize=list(op_types) if op_types else None,
    )
    pre.unlink(missing_ok=True)
    return out_path


def measure_latencies(
    paths: dict[Precision, Path],
    size: int,
    batch: int,
    provider: str,
    runs: int = 50,
    warmup: int = 5,
    x: np.ndarray | None = None,
) -> dict[Precision, tuple[float, float, tuple[float, float]]]:
    """(median, p90, 95 % interval of the median) milliseconds per call for a batch of ``batch``
    images, per variant.

    Variants are timed interleaved (one call each, round after round), so load from other
    processes on a shared machine hits every variant alike instead of biasing the comparison.
    """
    import numpy as np

    from edgeloop.components.export import onnx_session

    sessions = {p: onnx_session(path, provider) for p, path in paths.items()}
    if x is None:  # a detector's cost depends on what it finds: it is timed on real images (``x``)
        x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    for sess in sessions.values():
        for _ in range(warmup):
            sess.run(None, {"images": x})
    times: dict[Precision, list[float]] = {p: [] for p in sessions}
    for _ in range(runs):
        for p, sess in sessions.items():
            t0 = time.perf_counter()
            sess.run(None, {"images": x})
            times[p].append((time.perf_counter() - t0) * 1000)
    out = {}
    for p, ts in times.items():
        ts.sort()
        lo, hi = median_interval(ts)
        out[p] = (
            round(statistics.median(ts), 4),
            round(ts[min(len(ts) - 1, int(0.9 * len(ts)))], 4),
            (round(lo, 4), round(hi, 4)),
        )
    return out


def median_interval(times_ms: list[float]) -> tuple[float, float]:
    """95 % distribution-free interval of the median of ``times_ms`` (order statistics)."""
    ts = sorted(times_ms)
    lo, hi = quantile_interval_ranks(len(ts), 0.5)
    return ts[lo - 1], ts[hi - 1]


def measure_quality(path: Path, x_val, y_val, fp32_top1, provider: str) -> tuple[float, float]:
    """(accuracy, top-1 agreement with fp32) on the validation images."""
    from edgeloop.components.export import onnx_session, run_onnx

    top1 = run_onnx(onnx_session(path, provider), x_val)[0].argmax(1)
    accuracy = float((top1 == y_val).mean()) if len(y_val) else float("nan")
    agreement = float((top1 == fp32_top1).mean()) if len(top1) else 1.0
    return accuracy, agreement


def _split_arrays(
    directory: Path, split: str, labels: Sequence[str], pre: Preprocess, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A split's images preprocessed as serving does (float32 NCHW) and their class indices, without
    torch: select-precision runs in the pipeline image, which has none."""
    import numpy as np

    from edgeloop.components.dataset import load_rows
    from edgeloop.core.preprocessing import decode_image

    rows = load_rows(directory, split)[:limit]
    index = {c: i for i, c in enumerate(labels)}
    x = [pre.normalize(pre.resize(decode_image((directory / r.file).read_bytes()))) for r in rows]
    empty = np.zeros((0, 3, pre.size, pre.size), np.float32)
    return (np.stack(x) if x else empty), np.asarray([index[r.label] for r in rows])


def select_precision(
    fp32_path: Path,
    dataset_dir: Path,
    out_dir: Path,
    *,
    labels: list[str],
    size: int,
    provider: str = "CPUExecutionProvider",
    bounds: PrecisionBounds = PrecisionBounds(),
    candidates: tuple[Precision, ...] = (Precision.FP32, Precision.INT8),
    calibration_images: int = 64,
    latency_runs: int = 50,
    preprocessing: PreprocessConfig | None = None,
) -> PrecisionDecision:
    """Build the candidates, measure them, choose; the chosen file is copied to ``out_dir/model.onnx``.
    ``preprocessing``: the model card's (default: ``size`` with ImageNet mean/std, as training uses)."""
    from edgeloop.components.export import onnx_session, run_onnx
    from edgeloop.core.preprocessing import Preprocess

    out_dir = Path(out_dir)
    work = out_dir.parent / f"{out_dir.name}-variants"
    work.mkdir(parents=True, exist_ok=True)
    pre = Preprocess(preprocessing or PreprocessConfig(size=size))
    x_val, y_val = _split_arrays(Path(dataset_dir), "val", labels, pre)
    fp32_copy = work / "model.fp32.onnx"
    shutil.copyfile(fp32_path, fp32_copy)
    fp32_top1 = run_onnx(onnx_session(fp32_copy, provider), x_val)[0].argmax(1)
    paths: dict[Precision, Path] = {Precision.FP32: fp32_copy}
    errors: dict[str, str] = {}
    if Precision.INT8 in candidates:
        x_train, _ = _split_arrays(Path(dataset_dir), "train", labels, pre, limit=calibration_images)
        try:
            paths[Precision.INT8] = quantize_int8(fp32_copy, work / "model.int8.onnx", x_train)
        except Exception as e:  # an op the quantizer cannot handle: record it and stay in fp32
            errors[Precision.INT8.value] = f"{type(e).__name__}: {e}"
    quality = {}
    for prec, path in list(paths.items()):
        try:
            quality[prec] = measure_quality(path, x_val, y_val, fp32_top1, provider)
        except Exception as e:  # e.g. the provider cannot run this variant
            if prec is Precision.FP32:
                raise
            errors[prec.value] = f"{type(e).__name__}: {e}"
            del paths[prec]
    runs_b1, runs_b8 = latency_runs, max(10, latency_runs // 4)
    b1 = measure_latencies(paths, size, 1, provider, runs_b1)
    b8 = measure_latencies(paths, size, 8, provider, runs_b8)
    measurements = [
        PrecisionMeasurement(
            precision=p,
            path=str(path),
            latency_ms_b1=b1[p][0],
            latency_ms_b1_p90=b1[p][1],
            latency_ms_b8=b8[p][0],
            latency_ms_b8_p90=b8[p][1],
            accuracy=quality[p][0],
            agreement_with_fp32=quality[p][1],
            size_bytes=Path(path).stat().st_size,
            images=len(y_val),
            latency_runs_b1=runs_b1,
            latency_runs_b8=runs_b8,
            latency_ms_b1_ci95=b1[p][2],
            latency_ms_b8_ci95=b8[p][2],
        )
        for p, path in paths.items()
    ]
    chosen, reasons = decide_precision(measurements, bounds)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(paths[chosen], out_dir / MODEL_FILE)
    return PrecisionDecision(
        precision=chosen,
        model_path=str(out_dir / MODEL_FILE),
        provider=provider,
        reasons=reasons,
        measurements=measurements,
        bounds=bounds,
        errors=errors,
    )


def chosen_metrics(m: PrecisionMeasurement, quality: str = "onnx_val_accuracy") -> dict[str, float]:
    """The chosen variant's figures for the model card, each with its sample size and interval:
    validation accuracy (Wilson; a detector's mAP@0.5 without one) and batch-1 / batch-8 median
    latency (order statistics; a detector's graph takes one image: no batch-8 figure)."""
    if quality == "onnx_val_accuracy":
        out = proportion_fields(quality, round(m.accuracy * m.images), m.images)
    else:
        out = {quality: m.accuracy, f"{quality}.n": float(m.images)}
    out |= metric_fields("latency_ms_b1", m.latency_ms_b1, m.latency_runs_b1, *m.latency_ms_b1_ci95)
    if m.latency_runs_b8:
        out |= metric_fields("latency_ms_b8", m.latency_ms_b8, m.latency_runs_b8, *m.latency_ms_b8_ci95)
    return out


def provider_for_target(target: str) -> str:
    """A target profile (``cpu-avx2``, ``cuda``, ``tensorrt``) or a provider name -> ONNX Runtime provider."""
    t = target.strip()
    if t.endswith("ExecutionProvider"):
        return t
    low = t.lower()
    if low.startswith(("cuda", "gpu", "nvidia")):
        return "CUDAExecutionProvider"
    if low.startswith(("tensorrt", "trt")):
        return "TensorrtExecutionProvider"
    if low.startswith("openvino"):
        return "OpenVINOExecutionProvider"
    return "CPUExecutionProvider"


def select_detection_precision(
    card: Any,
    fp32_path: Path,
    dataset_dir: Path,
    out_dir: Path,
    *,
    provider: str = "CPUExecutionProvider",
    bounds: PrecisionBounds = PrecisionBounds(),
    calibration_images: int = 64,
    latency_runs: int = 30,
) -> PrecisionDecision:
    """:func:`select_precision` for a detector (``card`` task detection): quality is mAP@0.5 on the
    validation images (pycocotools), agreement the share of them on which the variant's detections at
    the operating threshold match fp32's one to one (same class, IoU >= 0.5); latency is one image per
    call (the graph's input), on validation images."""
    import numpy as np

    from edgeloop.components.coco_eval import evaluate_detections
    from edgeloop.components.dataset import load_rows
    from edgeloop.components.detection_runtime import DetectorRunner, same_detections, truth_of
    from edgeloop.core.preprocessing import decode_image

    out_dir = Path(out_dir)
    work = out_dir.parent / f"{out_dir.name}-variants"
    work.mkdir(parents=True, exist_ok=True)
    rows = load_rows(Path(dataset_dir), "val")
    images = [np.asarray(decode_image((Path(dataset_dir) / r.file).read_bytes())) for r in rows]
    truth = truth_of(rows)
    fp32_copy = work / "model.fp32.onnx"
    shutil.copyfile(fp32_path, fp32_copy)
    paths: dict[Precision, Path] = {Precision.FP32: fp32_copy}
    errors: dict[str, str] = {}
    runner = DetectorRunner(card, fp32_copy, provider=provider)
    train = load_rows(Path(dataset_dir), "train")[:calibration_images]
    x_cal = runner.pre.batch([decode_image((Path(dataset_dir) / r.file).read_bytes()) for r in train])
    try:
        paths[Precision.INT8] = quantize_int8(
            fp32_copy, work / "model.int8.onnx", x_cal, op_types=("Conv", "MatMul", "Gemm")
        )
    except Exception as e:  # an op the quantizer cannot handle: record it and stay in fp32
        errors[Precision.INT8.value] = f"{type(e).__name__}: {e}"
    found: dict[Precision, list] = {}
    for prec, path in list(paths.items()):
        try:
            found[prec] = DetectorRunner(card, path, provider=provider).detect(images)
        except Exception as e:  # e.g. the provider cannot run this variant
            if prec is Precision.FP32:
                raise
            errors[prec.value] = f"{type(e).__name__}: {e}"
            del paths[prec]
    quality = {
        p: evaluate_detections(truth, dets, card.labels, bootstrap=0).map_50 if truth else float("nan")
        for p, dets in found.items()
    }
    agreement = {
        p: float(np.mean([same_detections(a, b) for a, b in zip(found[Precision.FP32], dets, strict=True)]))
        if images
        else 1.0
        for p, dets in found.items()
    }
    x = x_cal[:1] if len(x_cal) else None
    b1 = measure_latencies(paths, runner.pre.size, 1, provider, latency_runs, x=x)
    measurements = [
        PrecisionMeasurement(
            precision=p,
            path=str(path),
            latency_ms_b1=b1[p][0],
            latency_ms_b1_p90=b1[p][1],
            latency_ms_b8=0.0,
            accuracy=quality[p],
            agreement_with_fp32=agreement[p],
            size_bytes=Path(path).stat().st_size,
            images=len(images),
            latency_runs_b1=latency_runs,
            latency_ms_b1_ci95=b1[p][2],
        )
        for p, path in paths.items()
    ]
    chosen, reasons = decide_precision(measurements, bounds, quality="mAP@0.5")
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(paths[chosen], out_dir / MODEL_FILE)
    return PrecisionDecision(
        chosen, str(out_dir / MODEL_FILE), provider, reasons, measurements, bounds, errors
    )


def choose_precision(
    onnx_dir: Path,
    out_dir: Path,
    *,
    dataset_dir: Path,
    target: str = "cpu",
    bounds: PrecisionBounds = PrecisionBounds(),
    calibration_images: int = 64,
):
    """Model directory in (fp32 ``model.onnx`` + card, from :func:`edgeloop.components.export.export_model`),
    model directory out: the chosen variant as ``model.onnx`` and a card with precision, provider,
    evidence and fresh file digests. Returns the new :class:`~edgeloop.core.model_card.ModelCard`."""
    from edgeloop.core.model_card import DETECTION, ModelCard

    card = ModelCard.load(Path(onnx_dir))
    provider = provider_for_target(target)
    detector = card.task == DETECTION
    if detector:
        decision = select_detection_precision(
            card,
            Path(onnx_dir) / MODEL_FILE,
            dataset_dir,
            out_dir,
            provider=provider,
            bounds=bounds,
            calibration_images=calibration_images,
        )
    else:
        decision = select_precision(
            Path(onnx_dir) / MODEL_FILE,
            dataset_dir,
            out_dir,
            labels=card.labels,
            size=card.preprocessing.size,
            provider=provider,
            bounds=bounds,
            calibration_images=calibration_images,
            preprocessing=card.preprocessing,
        )
    chosen = next(m for m in decision.measurements if m.precision is decision.precision)
    evidence = {**decision.evidence(), "target": target}
    quality = "onnx_val_map_50" if detector else "onnx_val_accuracy"
    metrics = {**card.metrics, **chosen_metrics(chosen, quality)}
    new = card.model_copy(
        update={
            "precision": decision.precision,
            "execution_provider": provider,
            "precision_evidence": evidence,
            "metrics": metrics,
        }
    ).with_digests(Path(out_dir))
    new.save(Path(out_dir))
    return new
