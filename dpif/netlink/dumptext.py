"""dump-flows text, and `Flow` records, for a whole dump at C speed, with the Python codec as the reference
and the fallback.

A 100k-flow dump is 100k messages: per flow, the Python codec costs ~10 us natively and 20-30 times that
under emulation, against a few us for ovs-dpctl's C.  `_dump.c` runs the Python codec's own decisions in a
C loop: `flowkey.key_plan` already reduces a key's text under one (mask, layout) to constant text and the
shown attributes' values, and struct attributes to members at fixed offsets; those plans are compiled here
into plain tuples.  The C loop formats flow after flow and hands back any flow it cannot do exactly (no
plan yet, an attribute or action list whose text is not memoized, actions the dump left out, anything
malformed); `line()` formats that one in Python (filling the plans and memos the C loop reads) and the C
loop resumes after it.  Without the extension `lines()` does nothing and every flow goes through `line()`.

`records()` is the same walk for a snapshot: 100 000 flows decoded and built as records in Python took
0.55 s natively, most of a freeze's dump under emulation; `flows_json()` writes them back out as hex.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping, Sequence
from types import ModuleType

from dpif.model import Flow, FlowStats
from dpif.netlink import actions as act
from dpif.netlink import families as fam
from dpif.netlink import flowkey as fk
from dpif.netlink import flowtext
from dpif.netlink.wire import message_at


def _load() -> ModuleType | None:
    """The extension with the tables it formats by, or None where it is not built."""
    try:
        from dpif.netlink import _dump
    except ImportError:  # pragma: no cover - CI builds the extension
        return None
    n = fam.FLOW_ATTRS.by_name
    _dump.setup(tuple(n[a][0] for a in ("key", "mask", "actions", "ufid", "stats", "used", "tcp-flags")),
                tuple((bit, letter.encode()) for bit, letter in flowtext.TCP_LETTERS),
                tuple(name.encode() for name in fk.FRAG_NAMES))
    return _dump


_dump = _load()

# The member value kinds the C loop renders (flowkey._member_fn's, by their text form).
KIND_CODES = {"frag": 0, "eth": 1, "in6": 2, "ipv4": 3, "u8u": 4, "be16": 4,
              "u8x": 5, "be16x": 5, "be32x": 5, "label": 5}

# (checks, slots, suffix): `checks` packs (offset, expected u32) pairs for the top-level attribute
# headers; each slot is (prefix, start, end, members or None, tail, memo or None).
Members = tuple[tuple[bytes, int, int, int], ...]
Slot = tuple[bytes, int, int, "Members | None", bytes, "dict[bytes, str] | None"]
CPlan = tuple[bytes, tuple[Slot, ...], bytes]


def compile_plan(plan: fk.KeyPlan, port_memo: dict[bytes, str]) -> CPlan:
    """A key plan as the C loop reads it: text as UTF-8, struct renderers as member tuples, and
    `port_memo` for the one attribute whose text the plan does not memoize (in_port with port names)."""
    checks = b"".join(struct.pack("=II", o, v) for o, v in zip(plan.offsets, plan.expect, strict=True))
    slots: list[Slot] = []
    for prefix, start, end, render, memo in plan.shown:
        if isinstance(render, fk.StructRender):
            members = tuple((text.encode(), KIND_CODES[f.kind], f.offset, f.size) for text, f in render.parts)
            slots.append((prefix.encode(), start, end, members, render.tail.encode(), None))
        else:
            slots.append((prefix.encode(), start, end, None, b"", port_memo if memo is None else memo))
    return checks, tuple(slots), plan.suffix.encode()


_NO_STATS = FlowStats()


def records(run: memoryview) -> Iterator[Flow | memoryview]:
    """A run of flow messages as records (C), interleaved with the payload of each message the C loop
    left to the caller (its actions left out of the dump, or malformed: `decode_flow_row` says how)."""
    off, end = 0, len(run)
    while off < end:
        if _dump is not None:
            flows, off = _dump.flow_records(run, off, Flow, FlowStats, _NO_STATS)
            yield from flows
        if off < end:
            payload, off = message_at(run, off)
            yield payload


def stateless(flows: list[Flow], masks: dict[bytes, bytes], actions: dict[bytes, bytes],
              limit: int) -> tuple[list[Flow], list[int]]:
    """The flows as a snapshot keeps them, and their used times: no stats (a FlowStats each is 150 bytes
    at 200 000 flows), masks interned in `masks` (megaflows share a few), actions in `actions` while it
    has fewer than `limit` (many flows share theirs; all-different ones then cost no dict of their own).
    In C: per flow in Python this was most of a snapshot's time after the dump."""
    if _dump is not None:
        done: tuple[list[Flow], list[int]] = _dump.stateless(flows, Flow, _NO_STATS, masks, actions, limit)
        return done
    records = []
    for f in flows:
        a = f.actions
        if a is not None:
            a = actions.setdefault(a, a) if len(actions) < limit else actions.get(a, a)
        records.append(Flow(f.key, None if f.mask is None else masks.setdefault(f.mask, f.mask), a, f.ufid))
    return records, [f.stats.used_ms for f in flows]


def flow_json(f: Flow, masks: Mapping[bytes, int]) -> str:
    """A flow's raw fields as one JSON object (keys sorted): hex strings, None as null, the mask as its
    number in `masks`.  A snapshot file's line, written directly: hex needs no escaping, and the json
    module's encoder scanned every character."""
    mask = "null" if f.mask is None else masks[f.mask]
    return (f'{{"actions": {_json_hex(f.actions)}, "key": "{f.key.hex()}", "mask": {mask}, '
            f'"ufid": {_json_hex(f.ufid)}}}')


def _json_hex(b: bytes | None) -> str:
    return "null" if b is None else f'"{b.hex()}"'


def flows_json(flows: Sequence[Flow], masks: Mapping[bytes, int]) -> bytes:
    """`flow_json` of each flow, joined by ",\n" (C: 100 000 flows' lines were 0.24 s natively)."""
    if _dump is not None:
        lines: bytes = _dump.json_lines(flows, masks)
        return lines
    return ",\n".join(flow_json(f, masks) for f in flows).encode()


class DumpText:
    """The lines of one dump, for one (verbose, port names) setting and one clock reading."""

    def __init__(self, *, verbose: bool, port_names: Mapping[int, str] | None, now_ms: int) -> None:
        self.verbose = verbose
        self.ports = port_names
        self.now_ms = now_ms
        self._plans: dict[tuple[bytes | None, int], CPlan] = {}
        self._sources: dict[tuple[bytes | None, int], fk.KeyPlan] = {}
        # texts that depend on the port names, which are fixed for this dump
        self._actions: dict[bytes, str] = act.TEXT_MEMO if not port_names else {}
        self._in_ports: dict[bytes, str] = {}

    def walk(self, run: memoryview) -> Iterator[str | memoryview]:
        """A run of flow messages as the C loop's text, interleaved with the payload of each flow it left
        to the caller (to complete if need be, and hand to `line()`)."""
        off, end = 0, len(run)
        while off < end:
            text, off = self.lines(run, off)
            if text:
                yield text
            if off < end:
                payload, off = message_at(run, off)
                yield payload

    def lines(self, run: bytes | memoryview, off: int) -> tuple[str, int]:
        """Lines of the run's flow messages from `off` (C), up to the run's end or the first message that
        `line()` must take, at the returned offset."""
        if _dump is None:
            return "", off
        text, end = _dump.format_flows(run, off, self._plans, self._actions, self.verbose, self.now_ms)
        return text, end

    def line(self, key: bytes, mask: bytes | None, actions: bytes | None, ufid: bytes | None,
             stats: FlowStats) -> str:
        """One flow's line (Python, the reference), then what the C loop needs for the next such flow:
        its key's plan, and with port names its action and in_port texts."""
        text = flowtext.format_flow(key, mask, actions, ufid, stats, now_ms=self.now_ms,
                                    verbose=self.verbose, port_names=self.ports)
        if _dump is None or not key:
            return text
        plan = fk.key_plan(key, mask, self.verbose, self.ports)
        if plan is None:
            return text
        pk = (mask, len(key))
        if self._sources.get(pk) is not plan:
            self._sources[pk] = plan
            self._plans[pk] = compile_plan(plan, self._in_ports)
        if self.ports:
            if actions:
                self._actions[bytes(actions)] = act.format_actions(actions, self.ports)
            for _, start, end, render, memo in plan.shown:
                if memo is None:
                    self._in_ports[key[start:end]] = render(key[start:end], self.ports)
        return text
