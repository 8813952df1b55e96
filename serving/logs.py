"""Structured (JSON lines) logging for the server: lifecycle events, not one line per request."""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def configure(level: str | int = "INFO", json_logs: bool = True) -> None:
    """One stderr handler for edgeloop, kserve and uvicorn; per-request loggers silenced."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if json_logs else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    for name in ("kserve", "uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers = [handler]  # kserve configures its own logging only when its logger has no handler
        lg.propagate = False
        lg.setLevel(level)
    # per-request noise: kserve's latency trace lines and uvicorn's access log
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").disabled = True
    # kserve 0.21's V1 route uses ORJSONResponse, which FastAPI now warns about on every call
    warnings.filterwarnings("ignore", message=".*ORJSONResponse is deprecated.*")
