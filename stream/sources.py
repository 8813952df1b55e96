"""Frame sources: video files, network streams (RTSP, HTTP) through PyAV, and image directories.

A source is written ``[NAME=]URI``; NAME becomes the camera in the MQTT topic.
Each source runs in its own reader thread (:class:`SourceReader`) that opens,
decodes (``decode_threads`` threads, on NVDEC or VA-API when present), skips frames
to the target fps before any pixel conversion (counted per reason), resizes (in
FFmpeg where the model card allows it, else with the shared
:class:`~edgeloop.core.preprocessing.Preprocess`; see :mod:`edgeloop.stream.resize`)
and enqueues. When a network source
fails or ends it is reopened with exponential backoff; a file that cannot be
read (missing, corrupt, unsupported codec) fails with one clear error. Either
way the other sources carry on.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from edgeloop.core.errors import EdgeloopError
from edgeloop.stream.queues import Frame, FrameQueue
from edgeloop.stream.stats import DropReason, SkipReason, SourceState, SourceStats

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
NETWORK_SCHEMES = {"rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt"}
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
DEFAULT_IMAGE_FPS = 10.0


class SourceKind(str, Enum):
    FILE = "file"  # a local video file: read once (or looped), paced to its timestamps
    NETWORK = "network"  # rtsp://, http(s)://, ...: live, reconnected when it fails or ends
    IMAGES = "images"  # a directory of images, read in name order


class SourceError(EdgeloopError):
    """A source could not be opened or read. ``kind`` is a short code; ``permanent`` means retrying is pointless."""

    def __init__(self, source: str, kind: str, message: str, permanent: bool):
        super().__init__(f"source {source}: {message}")
        self.source, self.kind, self.permanent, self.detail = source, kind, permanent, message


@dataclass(frozen=True)
class SourceSpec:
    name: str
    uri: str
    kind: SourceKind

    @classmethod
    def parse(cls, text: str) -> SourceSpec:
        """``[NAME=]URI`` -> spec. NAME defaults to the file stem or the stream's host and path."""
        name: str | None = None
        uri = text
        head, sep, tail = text.partition("=")
        if sep and _NAME_RE.match(head) and tail:
            name, uri = head, tail
        scheme = urlparse(uri).scheme.lower()
        if scheme in NETWORK_SCHEMES:
            kind = SourceKind.NETWORK
        elif scheme in ("", "file"):
            path = Path(uri[len("file://") :] if scheme == "file" else uri)
            uri = str(path)
            kind = SourceKind.IMAGES if path.is_dir() else SourceKind.FILE
        else:
            raise EdgeloopError(
                f"source {text!r}: unsupported scheme {scheme!r}; use a file path, a directory of images, "
                f"or one of {', '.join(sorted(NETWORK_SCHEMES))}"
            )
        return cls(name=topic_safe(name or default_name(uri, kind)), uri=uri, kind=kind)


def default_name(uri: str, kind: SourceKind) -> str:
    if kind == SourceKind.NETWORK:
        u = urlparse(uri)
        host = u.hostname or "stream"
        if u.port:
            host = f"{host}-{u.port}"
        return f"{host}{u.path}".strip("/")
    return Path(uri).stem or Path(uri).name or "source"


def topic_safe(name: str) -> str:
    """A camera name usable as one MQTT topic level (no '/', '+', '#')."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "source"


def unique_names(specs: list[SourceSpec]) -> list[SourceSpec]:
    seen: dict[str, int] = {}
    out = []
    for s in specs:
        n = seen.get(s.name, 0)
        seen[s.name] = n + 1
        out.append(s if n == 0 else SourceSpec(f"{s.name}-{n + 1}", s.uri, s.kind))
    return out


@dataclass
class ReaderConfig:
    fps: float | None = None  # sample to this rate per source; None = every frame
    realtime: bool = True  # pace files and image directories to their timestamps, like a camera
    loop: bool = False  # restart files and image directories at their end
    open_timeout_s: float = 10.0
    read_timeout_s: float = 10.0
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 30.0
    max_retries: int = 0  # network sources: give up after this many failed reconnects in a row; 0 = never
    decode_threads: int = 1  # per decoder; many streams scale better with one thread each
    hwaccel: str = "auto"  # auto | none | cuda | vaapi: hardware decode where FFmpeg and the device have it
    keyframes_only: bool = False  # decode key frames only (for --fps at or below the key-frame rate)
    image_fps: float = DEFAULT_IMAGE_FPS  # frame rate of an image directory when --fps is not given


HWACCELS = ("cuda", "vaapi")  # NVDEC, VA-API


def hardware_decoders() -> list[str]:
    """The hardware decoders both FFmpeg (as built into PyAV: the ``ffmpeg -hwaccels`` list) and this
    machine's devices offer, best first: ``cuda`` (NVDEC, /dev/nvidiactl) and ``vaapi`` (/dev/dri)."""
    try:
        from av.codec.hwaccel import hwdevices_available

        built = set(hwdevices_available())
    except ImportError:  # PyAV older than 14
        return []
    present = {
        "cuda": Path("/dev/nvidiactl").exists(),
        "vaapi": any(Path("/dev/dri").glob("renderD*")) if Path("/dev/dri").is_dir() else False,
    }
    return [h for h in HWACCELS if h in built and present[h]]


def choose_hwaccel(requested: str) -> tuple[str | None, str]:
    """(hardware decoder to ask FFmpeg for or None, why). ``requested``: auto, none, cuda or vaapi."""
    if requested == "none":
        return None, "software decode (--hwaccel none)"
    found = hardware_decoders()
    if requested == "auto":
        if found:
            return found[0], f"{found[0]}: found by FFmpeg and on this machine"
        return None, "software decode: no NVDEC or VA-API device here"
    if requested in found:
        return requested, f"{requested} (--hwaccel {requested})"
    return None, f"software decode: --hwaccel {requested} asked for, but FFmpeg or the device lacks it"


def backoff_delay(attempt: int, initial: float, maximum: float, rng: random.Random) -> float:
    """Exponential backoff with +-20% jitter: initial, 2x, 4x ... capped at maximum."""
    base = min(maximum, initial * (2 ** max(0, attempt - 1)))
    return base * rng.uniform(0.8, 1.2)


class FpsSampler:
    """Keeps frames so that the kept rate is at most ``fps``, by presentation time."""

    def __init__(self, fps: float | None):
        self.period = 1.0 / fps if fps else None
        self._next: float | None = None

    def keep(self, t: float) -> bool:
        if self.period is None:
            return True
        if self._next is None or t >= self._next - 1e-6:
            # next slot after this frame; resync after a jump (seek, reconnect, gap)
            nxt = (self._next if self._next is not None else t) + self.period
            self._next = nxt if nxt > t else t + self.period
            return True
        return False


class Pacer:
    """Sleeps so that media time advances no faster than wall time (a file behaves like a camera)."""

    def __init__(self, stop: threading.Event):
        self._stop = stop
        self._origin: tuple[float, float] | None = None  # (monotonic, media time)

    def wait(self, media_t: float | None) -> None:
        if media_t is None:
            return
        now = time.monotonic()
        if self._origin is None:
            self._origin = (now, media_t)
            return
        due = self._origin[0] + (media_t - self._origin[1])
        if due > now:
            self._stop.wait(due - now)
        elif now - due > 1.0:  # far behind (slow decode, pause): re-anchor rather than burst
            self._origin = (now, media_t)


class SourceReader(threading.Thread):
    """Reads one source into its queue until it ends, fails permanently, or ``stop`` is set."""

    def __init__(
        self,
        spec: SourceSpec,
        queue: FrameQueue,
        stats: SourceStats,
        resize: Callable[[Any], np.ndarray],
        config: ReaderConfig,
        stop: threading.Event,
        frame_resize: Callable[[Any], np.ndarray] | None = None,
    ):
        """``resize``: RGB image (PIL) -> model input, for image directories and by default for video
        frames too; ``frame_resize``: decoded ``av.VideoFrame`` -> model input (the resize path
        chosen by :func:`edgeloop.stream.resize.choose_resize`), this reader's own instance."""
        super().__init__(name=f"source-{spec.name}", daemon=True)
        self.spec, self.queue, self.stats, self.resize, self.config = spec, queue, stats, resize, config
        self.frame_resize = frame_resize or (lambda frame: resize(frame.to_image()))
        self._stop_event = stop
        self._next_index = 0
        self._rng = random.Random(hash(spec.name))
        self.error: SourceError | None = None  # the error that ended the source, if any
        self._hw: tuple[str | None, str] = (None, "")

    # -- the life of a source -------------------------------------------------------
    def run(self) -> None:
        attempt = 0
        try:
            while not self._stop_event.is_set():
                before = self._next_index
                try:
                    self._read_once()
                    ended: SourceError | None = None
                except SourceError as e:
                    ended = e
                except Exception as e:  # a bug or an unforeseen library error: keep the others going
                    log.exception("source %s: unexpected error", self.spec.name)
                    ended = SourceError(
                        self.spec.name,
                        "internal",
                        f"unexpected {type(e).__name__}: {e}",
                        permanent=self.spec.kind != SourceKind.NETWORK,
                    )
                if self._stop_event.is_set():
                    break
                if ended is None:
                    if self.spec.kind != SourceKind.NETWORK:
                        if self.config.loop and self._next_index > before:
                            continue
                        self.stats.set_state(SourceState.FINISHED)
                        return
                    ended = SourceError(
                        self.spec.name, "ended", "the stream ended; reconnecting", permanent=False
                    )
                self.stats.on_error(ended.kind, ended.detail)
                if ended.permanent or self.spec.kind != SourceKind.NETWORK:
                    log.error("%s", ended)
                    self.error = ended
                    self.stats.set_state(SourceState.FAILED)
                    return
                attempt = 1 if self._next_index > before else attempt + 1
                if self.config.max_retries and attempt > self.config.max_retries:
                    self.error = SourceError(
                        self.spec.name,
                        ended.kind,
                        f"gave up after {self.config.max_retries} failed reconnects: {ended.detail}",
                        permanent=True,
                    )
                    log.error("%s", self.error)
                    self.stats.on_error("gave_up", self.error.detail)
                    self.stats.set_state(SourceState.FAILED)
                    return
                delay = backoff_delay(
                    attempt, self.config.reconnect_initial_s, self.config.reconnect_max_s, self._rng
                )
                log.warning("%s (reconnect %d in %.1f s)", ended, attempt, delay)
                self.stats.set_state(SourceState.RECONNECTING)
                if self._stop_event.wait(delay):
                    break
                self.stats.on_reconnect()
            self.stats.set_state(SourceState.STOPPED)
        finally:
            with self.queue._cond:
                self.queue.closed = True
                self.queue._cond.notify_all()

    def _read_once(self) -> None:
        if self.spec.kind == SourceKind.IMAGES:
            self._read_images()
        else:
            self._read_video()

    def _emit(
        self,
        image: np.ndarray,
        index: int,
        captured_at: float,
        t_capture: float,
        media_time: float | None,
        decode_s: float,
        resize_s: float | None = None,
        source_size: tuple[int, int] | None = None,
    ) -> None:
        self.stats.on_decoded(True, decode_s, resize_s)
        self.queue.put(
            Frame(self.spec.name, index, image, captured_at, t_capture, media_time, source_size=source_size),
            self._stop_event,
        )

    # -- video through PyAV ---------------------------------------------------------------
    def _open(self) -> Any:
        import av

        cfg = self.config
        options: dict[str, str] = {}
        if self.spec.uri.startswith(("rtsp://", "rtsps://")):
            options["rtsp_transport"] = "tcp"
        timeout = (cfg.open_timeout_s, cfg.read_timeout_s)
        hw, why = choose_hwaccel(cfg.hwaccel)
        if hw is not None:
            from av.codec.hwaccel import HWAccel

            try:
                container = av.open(
                    self.spec.uri,
                    options=options,
                    timeout=timeout,
                    hwaccel=HWAccel(device_type=hw, allow_software_fallback=True),
                )
                self._hw = (hw, why)
                return container
            except Exception as e:  # the device could not be opened: software decode, said so
                log.warning(
                    "source %s: opening with %s decode failed (%s); trying software decode",
                    self.spec.name,
                    hw,
                    e,
                )
                why = f"software decode: {hw} failed to open ({type(e).__name__})"
        self._hw = (None, why)
        try:
            return av.open(self.spec.uri, options=options, timeout=timeout)
        except Exception as e:
            raise classify_error(self.spec, e, opening=True) from e

    def _describe_decoder(self, stream: Any) -> None:
        cfg, (hw, why) = self.config, self._hw
        ctx = stream.codec_context
        on_hw = bool(hw) and bool(getattr(ctx, "is_hwaccel", False))
        info = {
            "codec": ctx.name,
            "hwaccel": hw if on_hw else "none",
            "hwaccel_reason": why
            if (on_hw or hw is None)
            else f"software decode: {hw} not usable for {ctx.name}",
            "threads": cfg.decode_threads,
            "keyframes_only": cfg.keyframes_only,
            "resize": getattr(self.frame_resize, "path", "shared"),
        }
        info["resize"] = getattr(info["resize"], "value", info["resize"])
        if self.stats.decoder != info:
            log.info("source %s: decoder %s", self.spec.name, info)
        self.stats.decoder = info

    def _read_video(self) -> None:
        import av

        container = self._open()
        try:
            if not container.streams.video:
                raise SourceError(
                    self.spec.name, "no_video", f"{self.spec.uri} has no video stream", permanent=True
                )
            stream = container.streams.video[0]
            if stream.codec_context is None:
                tag = _codec_tag(stream)
                raise SourceError(
                    self.spec.name,
                    "unsupported_codec",
                    f"{self.spec.uri}: no decoder for its video codec{tag}; re-encode it as H.264 "
                    "(e.g. ffmpeg -i IN -c:v libx264 OUT.mp4)",
                    permanent=True,
                )
            stream.thread_count = self.config.decode_threads
            if self.config.decode_threads > 1:
                stream.thread_type = (
                    "AUTO"  # frame and slice threads (frame threads add a frame of delay each)
                )
            keyframes_only = self.config.keyframes_only
            if keyframes_only:
                stream.codec_context.skip_frame = "NONKEY"
            self._describe_decoder(stream)
            self.stats.set_state(SourceState.UP)
            sampler = FpsSampler(self.config.fps)
            pacer = (
                Pacer(self._stop_event)
                if self.config.realtime and self.spec.kind == SourceKind.FILE
                else None
            )
            rate = float(stream.average_rate or stream.guessed_rate or 30)
            corrupt_in_a_row = 0
            for packet in container.demux(stream):
                if self._stop_event.is_set():
                    return
                if pacer is not None and packet.dts is not None and packet.time_base is not None:
                    pacer.wait(float(packet.dts * packet.time_base))
                if keyframes_only and not packet.is_keyframe and packet.size:
                    # never decoded: counted as skipped by policy, like the fps sampler's frames
                    self._next_index += 1
                    self.stats.on_skipped(SkipReason.NOT_KEYFRAME)
                    continue
                captured_at, t0 = time.time(), time.monotonic()
                try:
                    frames = packet.decode()
                except av.error.EOFError:
                    return
                except av.error.FFmpegError as e:  # a corrupt packet: count it, go on with the next
                    corrupt_in_a_row += 1
                    self.stats.on_dropped(DropReason.DECODE_ERROR)
                    self.stats.on_error("decode_error", f"{self.spec.uri}: {e}")
                    if corrupt_in_a_row >= 50:
                        raise SourceError(
                            self.spec.name,
                            "corrupt",
                            f"{self.spec.uri}: 50 undecodable packets in a row ({e})",
                            permanent=self.spec.kind == SourceKind.FILE,
                        ) from e
                    continue
                corrupt_in_a_row = 0
                decode_s = time.monotonic() - t0
                self.stats.on_decode_time(decode_s)
                decode_share = decode_s / max(len(frames), 1)
                for frame in frames:
                    index = self._next_index
                    self._next_index += 1
                    media_t = frame.time if frame.time is not None else index / rate
                    if not sampler.keep(media_t):  # before any conversion: the frame is only decoded
                        self.stats.on_decoded(False)
                        continue
                    t1 = time.monotonic()
                    image = self.frame_resize(frame)
                    resize_s = time.monotonic() - t1
                    self._emit(
                        image,
                        index,
                        captured_at,
                        t0,
                        frame.time,
                        decode_share + resize_s,
                        resize_s,
                        (frame.width, frame.height),
                    )
        except SourceError:
            raise
        except Exception as e:
            raise classify_error(self.spec, e, opening=False) from e
        finally:
            container.close()

    # -- a directory of images ----------------------------------------------------------------
    def _read_images(self) -> None:
        from PIL import Image

        files = list(_image_files(Path(self.spec.uri)))
        if not files:
            raise SourceError(
                self.spec.name,
                "empty",
                f"directory {self.spec.uri} holds no images " f"({', '.join(sorted(IMAGE_SUFFIXES))})",
                permanent=True,
            )
        self.stats.set_state(SourceState.UP)
        fps = self.config.fps or self.config.image_fps
        pacer = Pacer(self._stop_event) if self.config.realtime else None
        for i, path in enumerate(files):
            if self._stop_event.is_set():
                return
            media_t = i / fps
            if pacer is not None:
                pacer.wait(media_t)
            captured_at, t0 = time.time(), time.monotonic()
            index = self._next_index
            self._next_index += 1
            try:
                with Image.open(path) as img:
                    source_size = img.size
                    image = self.resize(img.convert("RGB"))
            except Exception as e:  # PIL raises many kinds for a bad file
                self.stats.on_decoded(True)
                self.stats.on_dropped(DropReason.DECODE_ERROR)
                self.stats.on_error("decode_error", f"{path}: {type(e).__name__}: {e}")
                log.warning("source %s: cannot read image %s (%s); skipped", self.spec.name, path, e)
                continue
            self._emit(image, index, captured_at, t0, media_t, time.monotonic() - t0, None, source_size)


def _image_files(directory: Path) -> Iterator[Path]:
    return iter(sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))


def _codec_tag(stream: Any) -> str:
    try:
        tag = stream.codec_tag
    except Exception:
        return ""
    return f" (codec tag {tag!r})" if tag else ""


def classify_error(spec: SourceSpec, exc: BaseException, opening: bool) -> SourceError:
    """Map a PyAV/OS error to a SourceError a user can act on."""
    import av

    network = spec.kind == SourceKind.NETWORK
    what = spec.uri
    if isinstance(exc, FileNotFoundError) and not network:
        return SourceError(spec.name, "not_found", f"{what} does not exist", permanent=True)
    if isinstance(exc, av.error.DecoderNotFoundError):
        return SourceError(
            spec.name,
            "unsupported_codec",
            f"{what}: no decoder for its codec; re-encode as H.264",
            permanent=True,
        )
    if isinstance(
        exc, av.error.HTTPNotFoundError | av.error.HTTPForbiddenError | av.error.HTTPUnauthorizedError
    ):
        return SourceError(
            spec.name, "unreachable", f"{what}: HTTP {type(exc).__name__} ({exc})", permanent=False
        )
    if isinstance(exc, ConnectionError | TimeoutError | av.error.TimeoutError | av.error.ExitError) or (
        network and isinstance(exc, OSError | av.error.FFmpegError)
    ):
        verb = "cannot connect to" if opening else "lost"
        return SourceError(
            spec.name,
            "unreachable" if opening else "stream_error",
            f"{verb} {what}: {type(exc).__name__}: {exc}",
            permanent=False,
        )
    if isinstance(exc, av.error.InvalidDataError):
        return SourceError(
            spec.name,
            "corrupt",
            f"{what} is not a readable video (corrupt or not a video file)",
            permanent=not network,
        )
    if isinstance(exc, av.error.FFmpegError | OSError):
        return SourceError(
            spec.name, "read_error", f"{what}: {type(exc).__name__}: {exc}", permanent=not network
        )
    return SourceError(
        spec.name, "internal", f"{what}: unexpected {type(exc).__name__}: {exc}", permanent=not network
    )
