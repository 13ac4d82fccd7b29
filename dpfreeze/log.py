"""Structured, quiet-by-default logging: `event key=value ...` lines on stderr; the profile of long work."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
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


def peak_rss_kb(pid: int | str = "self", proc: Path = Path("/proc")) -> int | None:
    """The process's peak resident memory (VmHWM), in KiB; None if there is no such process."""
    try:
        with (proc / str(pid) / "status").open("rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


@dataclass
class Profile:
    """Where a long operation's time went: named spans on CLOCK_MONOTONIC, which every process of the host
    shares, so the service's spans and the upgrade command's line up.  Spans may overlap (work done side
    by side).  Why: the upgrade window is measured phase by phase before it is cut (docs/benchmarks.md)."""

    spans: list[dict[str, Any]] = field(default_factory=list)

    @contextmanager
    def span(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.add(name, start)

    def add(self, name: str, start: float, end: float | None = None) -> None:
        """A span; with this process's peak memory so far (VmHWM, MB) at its end, which says which phase
        set the peak (at 200 000 flows the service's was the snapshot's, not the pins')."""
        end = time.monotonic() if end is None else end
        self.spans.append({"phase": name, "start": round(start, 4), "seconds": round(end - start, 4),
                           "peak_mb": round((peak_rss_kb() or 0) / 1024, 1)})

    def peaks(self) -> dict[str, float]:
        """The peak memory (MB) at the end of each phase's last span."""
        return {s["phase"]: s["peak_mb"] for s in sorted(self.spans, key=lambda s: s["start"] + s["seconds"])}

    def totals(self) -> dict[str, float]:
        """Seconds per phase, repeated spans summed: one log line a person can read."""
        out: dict[str, float] = {}
        for s in self.spans:
            out[s["phase"]] = round(out.get(s["phase"], 0.0) + s["seconds"], 3)
        return out

    def relative(self, origin: float) -> list[dict[str, Any]]:
        """The spans in start order, each `at` seconds after `origin` (e.g. the command's own start)."""
        return [{"phase": s["phase"], "at": round(s["start"] - origin, 3), "seconds": round(s["seconds"], 3)}
                for s in sorted(self.spans, key=lambda s: s["start"])]
