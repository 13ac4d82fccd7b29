"""Structured, quiet-by-default logging: `event key=value ...` lines on stderr."""

from __future__ import annotations

import logging
import sys
from typing import Any

LOG = logging.getLogger("dpfreeze")


def setup_logging(verbosity: int = 0) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def kv(event: str, **fields: Any) -> str:
    """Format one structured log line: the event name, then sorted key=value pairs."""
    return " ".join([event, *(f"{k}={v!r}" if isinstance(v, str) and " " in v else f"{k}={v}"
                              for k, v in sorted(fields.items()))])
