"""Where a frame is resized to the model's input: in FFmpeg (libswscale) or by the shared preprocessing.

The shared path converts every decoded frame to a full-size RGB image and resizes it with
:class:`~edgeloop.core.preprocessing.Preprocess` (Pillow): what training, evaluation and the
server use, and ~6 ms per 720p frame on one core. The FFmpeg path scales the decoded YUV frame
straight to the model's size and converts only those pixels to RGB (one libswscale pass,
~0.5 ms); normalisation stays the shared one. Its pixels differ from Pillow's by a grey level
or two, so it is used only where the evidence says the model's answers do not change:
:func:`resize_agreement` runs the staging images through both paths and counts top-1
agreement; the staging step records the result in the model card (``stream_resize``) and
:func:`choose_resize` allows the FFmpeg path when agreement >= :data:`AGREEMENT_THRESHOLD`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from enum import Enum
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from edgeloop.core.preprocessing import Preprocess, PreprocessConfig

log = logging.getLogger(__name__)

AGREEMENT_THRESHOLD = 0.995  # top-1 agreement with the shared preprocessing on the staging set
# fewer staging images than this are no evidence (10 of 10 agreeing is not 0.995); the gate's floor
MIN_AGREEMENT_IMAGES = 200
# measured on this machine only (FFmpeg build, pixel statistics): logged, kept out of the card so the
# model digest does not depend on where staging ran
_MACHINE_FIELDS = ("ffmpeg", "mean_abs_pixel_diff", "max_abs_pixel_diff")
SOURCE_FORMAT = "yuv420p"  # what H.264 cameras deliver: staging images are fed in this format
_SWS_FLAGS = {"bilinear": "bilinear", "nearest": "neighbor", "bicubic": "bicubic"}


class ResizeMode(str, Enum):
    """What the user asked for (``edgeloop stream --resize``)."""

    AUTO = "auto"  # FFmpeg where the model card allows it, else shared
    FFMPEG = "ffmpeg"  # FFmpeg even without (or against) the card's evidence
    SHARED = "shared"  # always the shared preprocessing


class ResizePath(str, Enum):
    """What the stream processor does."""

    FFMPEG = "ffmpeg"
    SHARED = "shared"


def ffmpeg_filter(config: PreprocessConfig) -> str:
    """The FFmpeg filter chain that scales a decoded frame to the model's input as RGB.

    ``accurate_rnd`` and ``full_chroma_int`` bring libswscale within ~1 grey level of the shared
    path on average (plain ``bilinear`` is ~2, with outliers of 60 at sharp colour edges).
    """
    flags = _SWS_FLAGS.get(config.interpolation, "bilinear")
    return f"scale={config.size}:{config.size}:flags={flags}+accurate_rnd+full_chroma_int,format=rgb24"


def ffmpeg_versions() -> str:
    import av

    v = av.library_versions
    return " ".join(f"{k} {'.'.join(map(str, v[k]))}" for k in ("libavfilter", "libswscale") if k in v)


class SharedResize:
    """A decoded frame -> full-size RGB -> :meth:`Preprocess.resize` (the shared definition)."""

    path = ResizePath.SHARED
    filter = ""

    def __init__(self, preprocess: Preprocess):
        self.preprocess = preprocess

    def __call__(self, frame: Any) -> np.ndarray:
        return self.preprocess.resize(frame.to_image())


class FfmpegResize:
    """A decoded frame -> FFmpeg filter graph (scale + RGB) -> uint8 HWC at the model's size.

    One graph per reader (not thread-safe); rebuilt when the input's size or pixel format
    changes (a reconnect to a camera with other settings, hardware frames). If the chain does
    not end at the model's size, the shared :meth:`Preprocess.resize` finishes the job.
    """

    path = ResizePath.FFMPEG

    def __init__(self, preprocess: Preprocess, filter: str | None = None, threads: int = 1):
        self.preprocess = preprocess
        self.filter = filter or ffmpeg_filter(preprocess.config)
        self.threads = threads
        self._chain = _parse_chain(self.filter)
        self._graph: Any = None
        self._key: tuple[int, int, str] | None = None

    def _build(self, frame: Any) -> None:
        import av

        graph = av.filter.Graph()
        graph.threads = self.threads
        prev = graph.add_buffer(
            width=frame.width,
            height=frame.height,
            format=frame.format,
            time_base=frame.time_base or Fraction(1, 30),
        )
        for name, args in self._chain:
            node = graph.add(name, args)
            prev.link_to(node)
            prev = node
        sink = graph.add("buffersink")
        prev.link_to(sink)
        graph.configure()
        self._graph, self._key = graph, (frame.width, frame.height, frame.format.name)

    def __call__(self, frame: Any) -> np.ndarray:
        if self._key != (frame.width, frame.height, frame.format.name):
            self._build(frame)
        self._graph.push(frame)
        out = self._graph.pull().to_ndarray(format="rgb24")
        return self.preprocess.resize(out)


def _parse_chain(text: str) -> list[tuple[str, str | None]]:
    """``"scale=64:64:flags=area,format=rgb24"`` -> [("scale", "64:64:flags=area"), ("format", "rgb24")]."""
    chain = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, _, args = part.partition("=")
        chain.append((name.strip(), args.strip() or None))
    if not chain:
        raise ValueError(f"empty FFmpeg filter chain {text!r}")
    return chain


# -- the decision ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResizeAgreement:
    """Top-1 agreement of the stream's FFmpeg path with the shared preprocessing on ``n`` images.

    ``shared_stream_agreement``: the same count for the stream's shared path (the frame converted
    to RGB by FFmpeg's default conversion, then the shared resize): what the YUV round trip alone
    costs, for context; the decision rests on ``agreement`` only.
    """

    agreement: float
    n: int
    agreeing: int
    allowed: bool
    threshold: float
    filter: str
    source_format: str
    ffmpeg: str
    mean_abs_pixel_diff: float
    max_abs_pixel_diff: int
    shared_stream_agreement: float
    images: str = "staging (test split)"

    def card_fields(self) -> dict[str, Any]:
        """What goes into ``ModelCard.stream_resize`` (part of the model digest): the evidence, not
        this machine's FFmpeg version or pixel statistics."""
        return {k: v for k, v in asdict(self).items() if k not in _MACHINE_FIELDS}


def even(rgb: np.ndarray) -> np.ndarray:
    """The image cropped to even width and height (4:2:0 chroma needs them), RGB channels only."""
    h, w = rgb.shape[0] - rgb.shape[0] % 2, rgb.shape[1] - rgb.shape[1] % 2
    return np.ascontiguousarray(rgb[:h, :w, :3])


def as_frame(rgb: np.ndarray, source_format: str = SOURCE_FORMAT) -> Any:
    """An RGB image (even size) as a decoder would hand it over: a ``source_format`` frame."""
    import av

    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    frame.time_base = Fraction(1, 30)
    return frame if source_format == "rgb24" else frame.reformat(format=source_format)


def resize_agreement(
    model_dir: Path | str,
    images: Sequence[np.ndarray],
    *,
    filter: str | None = None,
    source_format: str = SOURCE_FORMAT,
    threshold: float = AGREEMENT_THRESHOLD,
    min_images: int = MIN_AGREEMENT_IMAGES,
    images_label: str = "staging (test split)",
    batch_size: int = 32,
) -> ResizeAgreement:
    """Top-1 agreement between the shared preprocessing of ``images`` (RGB uint8 HWC, what the
    model was evaluated on) and the stream's FFmpeg path on the same images.

    The FFmpeg path gets each image as a ``source_format`` frame (what a camera's decoder
    delivers), runs ``filter`` (default: :func:`ffmpeg_filter` of the model card) and then the
    rest of the card's :class:`Preprocess`; both go through the model in ``model_dir``.
    """
    from edgeloop.core.model_loader import OrtSettings, open_model

    model = open_model(model_dir, OrtSettings(providers=["cpu"]))
    pre = Preprocess(model.card.preprocessing)
    ffmpeg, shared = FfmpegResize(pre, filter), SharedResize(pre)

    def top1(hwc: list[np.ndarray]) -> np.ndarray:
        (probs,) = model.session.run(
            ["probabilities"], {model.card.input_name: pre.normalize_batch(np.stack(hwc))}
        )
        return np.asarray(probs).argmax(axis=1)

    agreeing = shared_agreeing = 0
    diff_sum, diff_max, pixels = 0.0, 0, 0
    for start in range(0, len(images), batch_size):
        rgb = [even(img) for img in images[start : start + batch_size]]
        frames = [as_frame(img, source_format) for img in rgb]
        reference = [pre.resize(img) for img in rgb]
        via_ffmpeg = [ffmpeg(f) for f in frames]
        d = np.abs(np.stack(reference).astype(np.int16) - np.stack(via_ffmpeg).astype(np.int16))
        diff_sum, diff_max, pixels = diff_sum + float(d.sum()), max(diff_max, int(d.max())), pixels + d.size
        ref_top = top1(reference)
        agreeing += int((ref_top == top1(via_ffmpeg)).sum())
        shared_agreeing += int((ref_top == top1([shared(f) for f in frames])).sum())
    n = len(images)
    agreement = agreeing / n if n else 0.0
    return ResizeAgreement(
        agreement=round(agreement, 6),
        n=n,
        agreeing=agreeing,
        allowed=n >= min_images and agreement >= threshold,
        threshold=threshold,
        filter=ffmpeg.filter,
        source_format=source_format,
        ffmpeg=ffmpeg_versions(),
        mean_abs_pixel_diff=round(diff_sum / pixels, 4) if pixels else 0.0,
        max_abs_pixel_diff=diff_max,
        shared_stream_agreement=round(shared_agreeing / n, 6) if n else 0.0,
        images=images_label,
    )


def record_resize_agreement(model_dir: Path | str, images: Sequence[np.ndarray]) -> ResizeAgreement:
    """Measure :func:`resize_agreement` for the model in ``model_dir`` and write it into its card
    (``stream_resize``). The card lists no digest of itself, so the files stay verified; the
    model digest, computed from the card afterwards, covers the evidence."""
    from edgeloop.core.model_card import ModelCard

    result = resize_agreement(model_dir, images)
    card = ModelCard.load(Path(model_dir))
    card.model_copy(update={"stream_resize": result.card_fields()}).save(Path(model_dir))
    log.info(
        "stream resize: FFmpeg path agrees with the shared preprocessing on %d/%d images (%.4f): %s "
        "(FFmpeg %s; pixels differ by %.2f on average, %d at most)",
        result.agreeing,
        result.n,
        result.agreement,
        "allowed"
        if result.allowed
        else f"not allowed (needs >= {MIN_AGREEMENT_IMAGES} images and {result.threshold})",
        result.ffmpeg,
        result.mean_abs_pixel_diff,
        result.max_abs_pixel_diff,
    )
    return result


@dataclass(frozen=True)
class ResizeChoice:
    path: ResizePath
    mode: ResizeMode
    reason: str
    filter: str = ""
    evidence: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path.value,
            "mode": self.mode.value,
            "reason": self.reason,
            "filter": self.filter,
        }


def choose_resize(
    evidence: dict[str, Any] | None,
    mode: ResizeMode | str = ResizeMode.AUTO,
    config: PreprocessConfig | None = None,
) -> ResizeChoice:
    """The path the stream takes: ``evidence`` is the model card's ``stream_resize`` (None: none recorded)."""
    mode = ResizeMode(mode)
    default_filter = ffmpeg_filter(config or PreprocessConfig())
    if mode is ResizeMode.SHARED:
        return ResizeChoice(ResizePath.SHARED, mode, "--resize shared", evidence=evidence)
    if mode is ResizeMode.FFMPEG:
        why = "--resize ffmpeg"
        if evidence is not None and not evidence.get("allowed"):
            why += (
                f" (against the model card: agreement {evidence.get('agreement')} on n={evidence.get('n')})"
            )
        elif evidence is None:
            why += " (the model card records no agreement)"
        return ResizeChoice(
            ResizePath.FFMPEG, mode, why, (evidence or {}).get("filter") or default_filter, evidence
        )
    if evidence is None:
        return ResizeChoice(
            ResizePath.SHARED,
            mode,
            "the model card records no FFmpeg-resize agreement (staged before it was measured, "
            "or served over gRPC): shared preprocessing",
            evidence=None,
        )
    summary = (
        f"agreement {evidence.get('agreement')} on n={evidence.get('n')} staging images "
        f"(threshold {evidence.get('threshold', AGREEMENT_THRESHOLD)})"
    )
    if evidence.get("allowed"):
        return ResizeChoice(
            ResizePath.FFMPEG,
            mode,
            f"model card allows FFmpeg resize: {summary}",
            evidence.get("filter") or default_filter,
            evidence,
        )
    return ResizeChoice(
        ResizePath.SHARED, mode, f"model card does not allow FFmpeg resize: {summary}", evidence=evidence
    )


def frame_resizer(choice: ResizeChoice, preprocess: Preprocess) -> Callable[[Any], np.ndarray]:
    """A fresh per-reader callable for ``choice`` (the FFmpeg graph is per thread)."""
    if choice.path is ResizePath.FFMPEG:
        return FfmpegResize(preprocess, choice.filter or None)
    return SharedResize(preprocess)
