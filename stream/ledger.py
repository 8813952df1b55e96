"""What a killed stream run had in memory, counted by the next run.

A run keeps, per source, two counters where a SIGKILL cannot erase them: frames that
entered the pipeline and frames dropped with a reason. They live in a small file mapped
into memory (``<outbox>/runs/<run_id>.ledger``); a store into a shared mapping is in the
kernel's page cache at once, so it survives the process (not a power cut: it is flushed
to disk at every outbox commit). The outbox counts, in the same transaction that makes
results durable, how many results of each source it holds or dropped.

A run that stops cleanly removes its file. A file left behind belongs to a run that was
killed; the next run that opens the outbox (and can take the file's lock, so the run is
really gone) counts, per source::

    lost = frames in - frames dropped - results made durable - results dropped

These are the frames and results that were only in memory (queued, in inference, in the
publisher's queue) when the process died: reported, logged and exported as
``edgeloop_stream_frames_lost``, never silently missing.
"""

from __future__ import annotations

import fcntl
import json
import logging
import mmap
import os
import struct
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_SLOT = struct.Struct("<qq")  # frames in, frames dropped
_HEADER_BYTES = 4096


@dataclass(frozen=True)
class LostFrames:
    """The account of one source of a killed run."""

    run_id: str
    source: str
    frames_in: int
    frames_dropped: int
    results_durable: int
    results_dropped: int
    lost: int
    started_at: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class LedgerSlot:
    """One source's counters in the mapped file."""

    def __init__(self, mm: mmap.mmap, offset: int):
        self._mm, self._off = mm, offset

    def set(self, frames_in: int, dropped: int) -> None:
        _SLOT.pack_into(self._mm, self._off, frames_in, dropped)


class RunLedger:
    """The counters of the running process's run, locked for as long as it runs."""

    def __init__(self, directory: Path, run_id: str, sources: list[str]):
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = directory / f"{run_id}.ledger"
        header = json.dumps({"run_id": run_id, "sources": sources, "started_at": time.time()}).encode()
        if len(header) >= _HEADER_BYTES:
            raise ValueError("too many sources for one run ledger")
        size = _HEADER_BYTES + _SLOT.size * len(sources)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self._fh = os.fdopen(fd, "r+b")
        fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._fh.write(header.ljust(_HEADER_BYTES, b"\n") + b"\0" * (size - _HEADER_BYTES))
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._mm = mmap.mmap(self._fh.fileno(), size)
        self.slots = {s: LedgerSlot(self._mm, _HEADER_BYTES + i * _SLOT.size) for i, s in enumerate(sources)}

    def flush(self) -> None:
        self._mm.flush()

    def close(self, remove: bool) -> None:
        """Unmap; ``remove`` (a clean stop: every frame is accounted for in the summary) deletes the file."""
        self._mm.close()
        if remove:
            self.path.unlink(missing_ok=True)
        self._fh.close()


def read_abandoned(directory: Path, own: str | None = None) -> list[tuple[Path, dict[str, Any], dict]]:
    """Ledgers of runs that are gone (their lock is free): (path, header, source -> (in, dropped)).

    Each returned file is still locked by this process (held through the returned handle in the
    header under ``"_fh"``) so that two runs opening the outbox at once cannot both count it.
    """
    out = []
    for path in sorted(directory.glob("*.ledger")) if directory.is_dir() else []:
        if own is not None and path.name == f"{own}.ledger":
            continue
        fh = open(path, "r+b")  # noqa: SIM115 - kept open (and locked) until the caller is done
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a live run
            fh.close()
            continue
        data = fh.read()
        try:
            header = json.loads(data[:_HEADER_BYTES].rstrip(b"\n\0"))
            counts = {
                s: _SLOT.unpack_from(data, _HEADER_BYTES + i * _SLOT.size)
                for i, s in enumerate(header["sources"])
            }
        except (ValueError, KeyError, struct.error) as e:
            log.warning("removing an unreadable run ledger %s (%s)", path, e)
            path.unlink(missing_ok=True)
            fh.close()
            continue
        header["_fh"] = fh
        out.append((path, header, counts))
    return out
