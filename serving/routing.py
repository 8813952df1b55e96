"""Canary and shadow traffic for one served model, decided in the server itself.

* **canary** ``ALIAS=PERCENT``: that share of the requests that name no version is answered by
  the alias instead of the champion. With a client key (header ``x-edgeloop-client``, gRPC
  metadata of the same name) the choice is sticky: the key's hash decides, so one camera always
  sees the same model. Without a key, a smooth weighted round robin sends exactly PERCENT of
  them (no randomness: the share holds over any window, and tests cannot flake).
* **shadow** ``ALIAS``: each request the champion answers is also run on the alias in the
  background; the alias's output goes to the payload log only, the response never waits for it.

Requests that name a version or an alias are never rerouted. Both settings change at run time
(admin ``PUT /edgeloop/admin/models/{name}/traffic``); a change applies to the next request.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from edgeloop.serving.errors import InvalidInputError

CLIENT_KEY_HEADER = "x-edgeloop-client"
_BUCKETS = 10_000


@dataclass(frozen=True)
class Canary:
    alias: str
    percent: float

    def __post_init__(self) -> None:
        if not self.alias:
            raise InvalidInputError("a canary needs an alias: ALIAS=PERCENT, e.g. candidate=10")
        if not 0.0 <= self.percent <= 100.0:
            raise InvalidInputError(f"canary percent must be within 0-100, got {self.percent}")

    @classmethod
    def parse(cls, text: str) -> Canary:
        """``ALIAS=PERCENT`` (``candidate=10`` or ``candidate=10%``)."""
        alias, sep, pct = text.partition("=")
        try:
            percent = float(pct.strip().rstrip("%")) if sep else float("nan")
        except ValueError:
            percent = float("nan")
        if percent != percent:  # NaN: missing or not a number
            raise InvalidInputError(f"--canary {text!r}: use ALIAS=PERCENT, e.g. candidate=10")
        return cls(alias.strip(), percent)


def key_bucket(key: str) -> int:
    """A client key's bucket in [0, 10000): stable across processes and restarts."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % _BUCKETS


class TrafficPolicy:
    """The canary and shadow of one model; read on the event loop, replaced whole by the admin API."""

    def __init__(self, canary: Canary | None = None, shadow: str | None = None):
        self.canary = canary
        self.shadow = shadow or None
        self._credit = 0.0

    def set(self, canary: Canary | None, shadow: str | None) -> None:
        if canary != self.canary:
            self._credit = 0.0
        self.canary = canary
        self.shadow = shadow or None

    def to_canary(self, client_key: str | None) -> bool:
        """Whether an unversioned request goes to the canary."""
        c = self.canary
        if c is None or c.percent <= 0:
            return False
        if client_key:
            return key_bucket(client_key) < c.percent * (_BUCKETS / 100.0)
        self._credit += c.percent / 100.0
        if self._credit >= 1.0 - 1e-9:
            self._credit -= 1.0
            return True
        return False

    def describe(self) -> dict[str, object]:
        return {
            "canary": None
            if self.canary is None
            else {"alias": self.canary.alias, "percent": self.canary.percent},
            "shadow": self.shadow,
            "client_key_header": CLIENT_KEY_HEADER,
        }
