"""The continuity report: per-class counts, gaps and latency, aligned with the upgrade's event timeline.

Pure: built from the agents' raw logs (see `agent.Sender.result` / `agent.Receiver.result`) and the
orchestrator's event marks, all on one CLOCK_REALTIME.  The JSON form is versioned and described by
dpfreeze/data/probe-report.schema.json (docs/probes.md explains each field); add fields, never change one.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from dpfreeze.probe.frames import ProbeClass

SCHEMA_ID = "dpfreeze/probe-report"
SCHEMA_VERSION = 1
NS_PER_MS = 1_000_000
RESOLUTION_TIMEOUT_MS = 1000.0
BUCKET_MS = 500.0  # the time series' step: fine enough for a restart's seconds, short for a long run


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p99_ms: float
    max_ms: float


@dataclass(frozen=True)
class LossInterval:
    """A run of consecutive lost packets: from the first one's send time to one interval after the last."""

    start_ms: float
    end_ms: float
    lost: int


@dataclass(frozen=True)
class Bucket:
    """What was sent in one BUCKET_MS step of the run (by send time): how much was lost, and the longest
    delay of what arrived (a new flow queued while no daemon handled upcalls shows here, not as a loss)."""

    t_ms: float
    sent: int
    lost: int
    max_delay_ms: float | None


@dataclass(frozen=True)
class Window:
    """What was sent during the disruption (from its first event mark to its last): how much was lost, and
    how late what arrived was.  The delay of new flows held while no daemon handles misses is this
    class's `latency` here, where the whole run's percentiles would drown it in on-time packets."""

    start_ms: float
    end_ms: float
    sent: int
    lost: int
    latency: Latency | None


@dataclass(frozen=True)
class TcpDetails:
    connected: bool
    survived: bool
    retransmissions: int | None
    error: str | None


@dataclass(frozen=True)
class ClassReport:
    name: str
    interval_ms: float
    sent: int
    received: int
    lost: int
    duplicated: int
    reordered: int
    largest_gap_ms: float
    latency: Latency | None
    loss_intervals: list[LossInterval] = field(default_factory=list)
    tcp: TcpDetails | None = None
    buckets: list[Bucket] = field(default_factory=list)
    window: Window | None = None  # None: no events, or nothing of this class was sent between them


@dataclass(frozen=True)
class Event:
    name: str
    t_ms: float


@dataclass(frozen=True)
class Report:
    schema: str
    version: int
    created: str
    t0_unix_ns: int
    duration_ms: float
    classes: list[ClassReport]
    events: list[Event]
    params: dict[str, Any]

    def cls(self, name: str) -> ClassReport:
        for c in self.classes:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def latency(samples_ns: Sequence[int]) -> Latency | None:
    """Nearest-rank percentiles (no interpolation: every figure is a latency that really happened)."""
    if not samples_ns:
        return None
    s = sorted(samples_ns)

    def rank(p: float) -> float:
        return s[max(0, math.ceil(p * len(s)) - 1)] / NS_PER_MS

    return Latency(rank(0.50), rank(0.99), s[-1] / NS_PER_MS)


def loss_runs(sent_ns: Sequence[int], delivered: Sequence[bool], interval_ms: float,
              t0_ns: int) -> list[LossInterval]:
    """Runs of consecutive undelivered packets, in send order, on the sender's clock."""
    runs: list[LossInterval] = []
    first = -1
    for i, ok in enumerate([*delivered, True]):
        if not ok and first < 0:
            first = i
        elif ok and first >= 0:
            start = (sent_ns[first] - t0_ns) / NS_PER_MS
            end = (sent_ns[i - 1] - t0_ns) / NS_PER_MS + interval_ms
            runs.append(LossInterval(round(start, 3), round(end, 3), i - first))
            first = -1
    return runs


def buckets(sent_ns: Sequence[int], delay_ns: Sequence[int | None], t0_ns: int,
            step_ms: float = BUCKET_MS) -> list[Bucket]:
    """The per-step series of packets sent at `sent_ns`, each delivered after `delay_ns` or lost (None)."""
    rows: dict[int, list[int | None]] = {}
    for s, d in zip(sent_ns, delay_ns, strict=True):
        rows.setdefault(int((s - t0_ns) / NS_PER_MS // step_ms), []).append(d)
    out = []
    for k in sorted(rows):
        got = [d for d in rows[k] if d is not None]
        out.append(Bucket(k * step_ms, len(rows[k]), len(rows[k]) - len(got),
                          round(max(got) / NS_PER_MS, 3) if got else None))
    return out


def window_of(sent_ns: Sequence[int], delay_ns: Sequence[int | None], t0_ns: int,
              span_ns: tuple[int, int] | None) -> Window | None:
    """The packets sent within `span_ns` (the disruption), each delivered after `delay_ns` or lost."""
    if span_ns is None:
        return None
    inside = [d for s, d in zip(sent_ns, delay_ns, strict=True) if span_ns[0] <= s <= span_ns[1]]
    if not inside:
        return None
    got = [d for d in inside if d is not None]
    return Window(round((span_ns[0] - t0_ns) / NS_PER_MS, 3), round((span_ns[1] - t0_ns) / NS_PER_MS, 3),
                  len(inside), len(inside) - len(got), latency(got))


def _gap(runs: Iterable[LossInterval]) -> float:
    return round(max((r.end_ms - r.start_ms for r in runs), default=0.0), 3)


def datagram_class(name: str, sent: Sequence[tuple[int, int, int]],
                   received: Sequence[tuple[int, int, int, int]], interval_ms: float,
                   t0_ns: int, span_ns: tuple[int, int] | None = None) -> ClassReport:
    """sent: (flow, seq, sent_ns) in send order; received: (flow, seq, sent_ns, recv_ns) in arrival order."""
    known = {(f, q) for f, q, _ in sent}
    seen: dict[tuple[int, int], int] = {}  # -> delay
    top: dict[int, int] = {}
    dup = reord = 0
    for f, q, s, r in received:
        if (f, q) not in known:
            continue
        if (f, q) in seen:
            dup += 1
            continue
        seen[(f, q)] = r - s
        if q < top.get(f, -1):
            reord += 1
        else:
            top[f] = q
    sent_ns = [s for _, _, s in sent]
    runs = loss_runs(sent_ns, [(f, q) in seen for f, q, _ in sent], interval_ms, t0_ns)
    delays = [seen.get((f, q)) for f, q, _ in sent]
    return ClassReport(name, interval_ms, len(sent), len(seen), len(sent) - len(seen), dup, reord,
                       _gap(runs), latency(list(seen.values())), runs,
                       buckets=buckets(sent_ns, delays, t0_ns),
                       window=window_of(sent_ns, delays, t0_ns, span_ns))


def resolution_class(name: str, requests: Sequence[int], replies: Sequence[int], interval_ms: float,
                     t0_ns: int, timeout_ms: float = RESOLUTION_TIMEOUT_MS,
                     span_ns: tuple[int, int] | None = None) -> ClassReport:
    """ARP/ND attempts.  Replies carry nothing that names their request, so a reply answers the latest
    unanswered request sent up to `timeout_ms` before it: exact while replies come within one interval and
    after an outage; when replies are slower than the interval, some early requests of that slow stretch
    read as lost.  A reply with no such request is a duplicate."""
    delay: list[int | None] = [None] * len(requests)
    dup = 0
    for r in sorted(replies):
        k = bisect.bisect_right(requests, r) - 1
        while k >= 0 and delay[k] is not None and r - requests[k] <= timeout_ms * NS_PER_MS:
            k -= 1
        if k < 0 or delay[k] is not None or r - requests[k] > timeout_ms * NS_PER_MS:
            dup += 1
            continue
        delay[k] = r - requests[k]
    answered = [d is not None for d in delay]
    runs = loss_runs(requests, answered, interval_ms, t0_ns)
    got = sum(answered)
    return ClassReport(name, interval_ms, len(requests), got, len(requests) - got, dup, 0, _gap(runs),
                       latency([d for d in delay if d is not None]), runs,
                       buckets=buckets(requests, delay, t0_ns),
                       window=window_of(requests, delay, t0_ns, span_ns))


def tcp_class(sender: dict[str, Any], received: Sequence[tuple[int, int, int]], interval_ms: float,
              t0_ns: int, span_ns: tuple[int, int] | None = None) -> ClassReport:
    """TCP cannot lose or reorder what it delivers: its gap is the longest stall beyond one interval."""
    sent = [(0, q, s) for q, s in sender["sent"]]
    rep = datagram_class("tcp", sent, [(0, q, s, r) for q, s, r in received], interval_ms, t0_ns, span_ns)
    recv = sorted(r for _, _, r in received)
    stall = max((b - a for a, b in itertools.pairwise(recv)), default=0) / NS_PER_MS - interval_ms
    survived = bool(sender["connected"]) and sender["error"] is None
    details = TcpDetails(bool(sender["connected"]), survived, sender["retransmissions"], sender["error"])
    gap = round(max(stall, rep.largest_gap_ms, 0.0), 3)
    return ClassReport("tcp", interval_ms, rep.sent, rep.received, rep.lost, rep.duplicated, rep.reordered,
                       gap, rep.latency, rep.loss_intervals, details, rep.buckets, rep.window)


def build_report(sender: dict[str, Any], receiver: dict[str, Any], events: Sequence[tuple[str, int]],
                 t0_ns: int, end_ns: int, params: dict[str, Any] | None = None) -> Report:
    """Combine both agents' logs and the event marks into the report."""
    probes = receiver["probes"]
    rows = [tuple(probes[i:i + 5]) for i in range(0, len(probes), 5)]
    span = (min(t for _, t in events), max(t for _, t in events)) if events else None
    classes: list[ClassReport] = []
    if sender["established"]:
        est = sender["established"]
        sent = [(est[i], est[i + 1], est[i + 2]) for i in range(0, len(est), 3)]
        got = [(f, q, s, r) for c, f, q, s, r in rows if c == ProbeClass.ESTABLISHED]
        classes.append(datagram_class("established", sent, got, 1000.0 / sender["rate"], t0_ns, span))
    if sender["newflow"]:
        new = sender["newflow"]
        sent = [(new[i] & 0xFFFF, new[i], new[i + 1]) for i in range(0, len(new), 2)]
        got = [(f, q, s, r) for c, f, q, s, r in rows if c == ProbeClass.NEWFLOW]
        classes.append(datagram_class("newflow", sent, got, float(sender["newflow_ms"]), t0_ns, span))
    if sender.get("tcp"):
        tcp_rx = [(q, s, r) for q, s, r in receiver["tcp"]]
        classes.append(tcp_class(sender["tcp"], tcp_rx, float(sender["tcp_ms"]), t0_ns, span))
    for name in ("arp", "nd"):
        log = sender.get(name)
        if log:
            classes.append(resolution_class(name, log["requests"], log["replies"],
                                            float(sender[f"{name}_ms"]), t0_ns, span_ns=span))
    return Report(SCHEMA_ID, SCHEMA_VERSION, datetime.now(UTC).isoformat(timespec="seconds"), t0_ns,
                  round((end_ns - t0_ns) / NS_PER_MS, 3), classes,
                  [Event(n, round((t - t0_ns) / NS_PER_MS, 3)) for n, t in events], dict(params or {}))


def load_schema() -> dict[str, Any]:
    text = resources.files("dpfreeze").joinpath("data/probe-report.schema.json").read_text()
    return dict(json.loads(text))


def _window(d: dict[str, Any] | None) -> Window | None:
    if not d:
        return None
    return Window(**{**d, "latency": Latency(**d["latency"]) if d["latency"] else None})


def report_from_json(text: str) -> Report:
    """Read a report back (for `dpfreeze probe show`)."""
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("schema") != SCHEMA_ID or data.get("version") != SCHEMA_VERSION:
        raise ValueError(f"not a {SCHEMA_ID} version {SCHEMA_VERSION} document")

    def cls(d: dict[str, Any]) -> ClassReport:
        return ClassReport(**{**d, "latency": Latency(**d["latency"]) if d["latency"] else None,
                              "loss_intervals": [LossInterval(**x) for x in d["loss_intervals"]],
                              "tcp": TcpDetails(**d["tcp"]) if d["tcp"] else None,
                              "buckets": [Bucket(**b) for b in d.get("buckets", [])],
                              "window": _window(d.get("window"))})

    return Report(**{**data, "classes": [cls(c) for c in data["classes"]],
                     "events": [Event(**e) for e in data["events"]]})
