"""The dump-flows C loop (dpif/netlink/_dump.c via dumptext) against the Python codec it must equal.

Golden data: the kernel 6.1 dump of tests/data/flow-corpus.txt and ovs-dpctl's text of it (see
test_flowtext).  Every line the C loop writes is compared with flowtext.format_flow's for the same flow;
hypothesis varies stats, clocks, key values under the corpus's masks, and garbage.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from netlinkfakes import EDGES, Client, FakeNetlinkSock

from dpif.model import Flow, FlowStats
from dpif.netlink import dumptext, wire
from dpif.netlink import flowkey as fk
from dpif.netlink import messages as m
from dpif.netlink.dumptext import DumpText
from dpif.netlink.flowtext import format_flow
from dpif.netlink.messages import decode_flow_row
from dpif.netlink.wire import KernelError
from dpif.transport import GenlClient

DATA = Path(__file__).parent / "data"
GOLDEN = (DATA / "flows-6.1.dump.bin").read_bytes()
KEY, ACTIONS, STATS, TCP_FLAGS, USED, MASK, UFID = 1, 2, 3, 4, 5, 7, 9


def test_the_extension_is_built() -> None:
    """CI builds it (bootstrap installs a compiler): without it every flow takes the Python path."""
    assert dumptext._dump is not None
    assert wire.data_run_end is not wire._data_run_end


def runs(data: bytes, seq: int) -> Iterator[bytes]:
    """The data-message runs of a captured dump, as GenlClient.dump_runs yields them (one per datagram
    here: the capture is the datagrams back to back, so split at the control messages)."""
    off = 0
    while off + 16 <= len(data):
        stop = wire.data_run_end(data, off, seq)
        if stop > off:
            yield data[off:stop]
        if stop + 16 > len(data):
            return
        off = stop + ((struct.unpack_from("=I", data, stop)[0] + 3) & ~3)


def golden_seq() -> int:
    return struct.unpack_from("=I", GOLDEN, 8)[0]


def dump_text(text: DumpText, data: bytes, seq: int) -> tuple[list[str], int]:
    """dpctl's dump-flows loop without the kernel: (lines, how many the Python path wrote)."""
    out: list[str] = []
    python = 0
    for run in runs(data, seq):
        for item in text.walk(memoryview(run)):
            if isinstance(item, str):
                out.extend(item.splitlines())
            else:
                out.append(text.line(*decode_flow_row(item)[1:]))
                python += 1
    return out, python


def python_text(data: bytes, seq: int, **kw: object) -> list[str]:
    lines = []
    for run in runs(data, seq):
        for msg in wire.iter_messages(run):
            _, key, mask, actions, ufid, stats = decode_flow_row(msg.payload)
            lines.append(format_flow(key, mask, actions, ufid, stats, **kw))  # type: ignore[arg-type]
    return lines


PORTS = {0: "cdx0", 1: "cdxa", 2: "cdxb"}


@pytest.mark.parametrize(("golden", "verbose", "ports"),
                         [("flows-6.1.dpctl.txt", False, None), ("flows-6.1.dpctl-m.txt", True, PORTS)])
def test_golden_dump_equals_ovs_dpctl_and_the_c_loop_does_the_work(
    golden: str, verbose: bool, ports: dict[int, str] | None
) -> None:
    expected = (DATA / golden).read_text().splitlines()
    text = DumpText(verbose=verbose, port_names=ports, now_ms=0)
    first, python_first = dump_text(text, GOLDEN, golden_seq())
    assert first == expected
    again, python_again = dump_text(text, GOLDEN, golden_seq())
    assert again == expected
    # once plans and memos (port-name texts included) are learned, only keys without a plan (the generic
    # walk's) are left to Python
    generic = sum(fk.key_plan(bytes(k), m, verbose, ports) is None
                  for k, m in ((r[1], r[2]) for r in map(decode_flow_row, payloads(GOLDEN))))
    assert python_again == generic < len(expected) // 4 < python_first


def payloads(data: bytes) -> Iterator[memoryview]:
    for run in runs(data, golden_seq()):
        for msg in wire.iter_messages(run):
            yield msg.payload


@pytest.mark.parametrize("ports", [None, {0: "cdx0", 1: "p1", 2: "p2"}])
def test_verbose_lines_equal_the_python_codec(ports: dict[int, str] | None) -> None:
    text = DumpText(verbose=True, port_names=ports, now_ms=123456)
    dump_text(text, GOLDEN, golden_seq())
    lines, _ = dump_text(text, GOLDEN, golden_seq())
    assert lines == python_text(GOLDEN, golden_seq(), verbose=True, now_ms=123456, port_names=ports)


def message(attrs: dict[int, bytes], seq: int = 7) -> bytes:
    body = wire.GENL_HDR.pack(1, 1, 0) + wire.OVS_HDR.pack(5) + b"".join(
        wire.attr(t, v) for t, v in attrs.items())
    return wire.pack_message(0x20, 2, seq, body)


GOLDEN_ATTRS = [{t: bytes(v) for t, v in wire.iter_attrs(p[8:])} for p in payloads(GOLDEN)]


@settings(max_examples=300, deadline=None)
@given(
    which=st.integers(0, len(GOLDEN_ATTRS) - 1),
    packets=st.integers(0, 2**64 - 1),
    nbytes=st.integers(0, 2**64 - 1),
    used=st.integers(0, 2**40),
    now=st.integers(0, 2**40),
    flags=st.integers(0, 255),
    ufid=st.binary(min_size=0, max_size=20),
    noise=st.binary(min_size=1, max_size=64),
    verbose=st.booleans(),
)
def test_any_stats_clock_and_key_values_equal_the_python_codec(
    which: int, packets: int, nbytes: int, used: int, now: int, flags: int, ufid: bytes, noise: bytes,
    verbose: bool
) -> None:
    a = dict(GOLDEN_ATTRS[which])
    key = bytearray(a[KEY])
    # new values in the key's attribute payloads, headers kept: the same plan must render other values
    off = 0
    while off + 4 <= len(key):
        ln = struct.unpack_from("=H", key, off)[0]
        for i in range(off + 4, off + ln):
            key[i] ^= noise[i % len(noise)]
        off += (ln + 3) & ~3
    a[KEY] = bytes(key)
    a[STATS] = struct.pack("=QQ", packets, nbytes)
    a[USED] = struct.pack("=Q", used)
    a[TCP_FLAGS] = bytes([flags])
    if ufid:
        a[UFID] = ufid
    else:
        a.pop(UFID, None)
    data = message(dict(GOLDEN_ATTRS[which])) + message(a)  # the first teaches the plan
    text = DumpText(verbose=verbose, port_names=None, now_ms=now)
    lines, _ = dump_text(text, data, 7)
    assert lines == python_text(data, 7, verbose=verbose, now_ms=now)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400), cut=st.integers(0, 2000), seq=st.integers(0, 9))
def test_garbage_and_truncation_never_crash_the_c_loop(data: bytes, cut: int, seq: int) -> None:
    blob = GOLDEN[:cut] + data
    assert wire.data_run_end(blob, 0, seq) == wire._data_run_end(blob, 0, seq)
    text = DumpText(verbose=False, port_names=None, now_ms=0)
    dump_text(text, GOLDEN[: 1 << 14], golden_seq())  # plans learned
    off = 0
    while off < len(blob):
        _, stop = text.lines(blob, off)
        assert off <= stop <= len(blob)
        if stop == off:
            break
        off = stop


@pytest.mark.parametrize("start", [0, 16, 17, 10**9])
def test_run_end_agrees_with_python_anywhere(start: int) -> None:
    assert wire.data_run_end(GOLDEN, start, golden_seq()) == wire._data_run_end(GOLDEN, start, golden_seq())


# --- records: the snapshot's walk -----------------------------------------------------------------------


def walk_records(data: bytes, seq: int) -> tuple[list[Any], int]:
    """records() over a captured dump, each payload it leaves decoded by the Python path: (rows, how many
    it left)."""
    out: list[Any] = []
    left = 0
    for run in runs(data, seq):
        for item in dumptext.records(memoryview(run)):
            if isinstance(item, Flow):
                out.append(item)
            else:
                out.append(Flow(*decode_flow_row(item)[1:]))
                left += 1
    return out, left


def test_records_equal_the_python_decoder_and_the_c_loop_does_them_all() -> None:
    flows, left = walk_records(GOLDEN, golden_seq())
    expected = [Flow(*decode_flow_row(p)[1:]) for p in payloads(GOLDEN)]
    assert flows == expected and left == 0
    assert all(type(f) is Flow and type(f.stats) is FlowStats for f in flows)


@settings(max_examples=300, deadline=None)
@given(
    which=st.integers(0, len(GOLDEN_ATTRS) - 1),
    stats=st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1),
                    st.integers(0, 255)),
    drop=st.sets(st.sampled_from([KEY, MASK, ACTIONS, UFID, STATS, USED, TCP_FLAGS])),
    bad=st.sampled_from([None, STATS, USED, TCP_FLAGS]),
)
def test_records_of_any_stats_and_any_missing_attribute_equal_the_python_decoder(
    which: int, stats: tuple[int, int, int, int], drop: set[int], bad: int | None
) -> None:
    a = dict(GOLDEN_ATTRS[which])
    a[STATS] = struct.pack("=QQ", *stats[:2])
    a[USED] = struct.pack("=Q", stats[2])
    a[TCP_FLAGS] = bytes([stats[3]])
    for t in drop:
        a.pop(t, None)
    if bad is not None:
        a[bad] = b"\x01\x02\x03"  # a length the Python decoder refuses
    data = message(dict(GOLDEN_ATTRS[which])) + message(a) + message(dict(GOLDEN_ATTRS[which]))
    items = [item for run in runs(data, 7) for item in dumptext.records(memoryview(run))]
    assert len(items) == 3
    for item, msg in zip(items, wire.iter_messages(data), strict=True):
        try:
            row: Any = Flow(*decode_flow_row(msg.payload)[1:])
        except wire.WireError:
            row = None
        if isinstance(item, Flow):  # the C loop built it: as the Python decoder does
            assert item == row and item.actions is not None
        else:  # left to the caller: its actions are missing, or the Python decoder refuses it
            assert bytes(item) == bytes(msg.payload) and (row is None or row.actions is None)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400), cut=st.integers(0, 2000))
def test_garbage_and_truncation_never_crash_the_records_walk(data: bytes, cut: int) -> None:
    blob = memoryview(GOLDEN[:cut] + data)
    off = 0
    while off < len(blob):
        _, stop = dumptext._dump.flow_records(blob, off, Flow, FlowStats, FlowStats())
        assert off <= stop <= len(blob)
        if stop == off:
            break
        off = stop


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=40), *[st.none() | st.binary(max_size=40)] * 3), max_size=6))
def test_flows_json_in_c_equals_the_python_lines(fields: list[tuple[bytes, Any, Any, Any]]) -> None:
    flows = [Flow(*f) for f in fields] + walk_records(GOLDEN, golden_seq())[0][:50]
    masks = {m: n for n, m in enumerate(dict.fromkeys(f.mask for f in flows if f.mask is not None))}
    python = ",\n".join(dumptext.flow_json(f, masks) for f in flows).encode()
    assert dumptext.flows_json(flows, masks) == python
    assert json.loads(b"[" + dumptext.flows_json(flows, masks) + b"]") == [
        {"actions": _hex(f.actions), "key": f.key.hex(), "mask": None if f.mask is None else masks[f.mask],
         "ufid": _hex(f.ufid)} for f in flows]
    if flows and flows[-1].mask is not None:  # a mask missing from the table is refused, not written
        with pytest.raises(KeyError):
            dumptext.flows_json(flows, {})


def _hex(b: bytes | None) -> str | None:
    return None if b is None else b.hex()


def test_stateless_in_c_equals_the_python_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    flows = walk_records(GOLDEN, golden_seq())[0] * 2
    flows += [Flow(b"k", None, None, None, FlowStats(1, 2, 3, 4)), Flow(b"k2", b"m", b"", b"u")]
    c_masks: dict[bytes, bytes] = {}
    c_actions: dict[bytes, bytes] = {}
    c_records, c_used = dumptext.stateless(flows, c_masks, c_actions, 5)
    with pytest.raises(TypeError):
        dumptext._dump.stateless([("not", "a", "flow")], Flow, FlowStats(), {}, {}, 1)
    monkeypatch.setattr(dumptext, "_dump", None)
    masks: dict[bytes, bytes] = {}
    actions: dict[bytes, bytes] = {}
    records, used = dumptext.stateless(flows, masks, actions, 5)
    assert c_records == records and c_used == used == [f.stats.used_ms for f in flows]
    assert c_masks == masks and c_actions == actions and len(actions) == 5
    assert all(r.stats == FlowStats() for r in records)
    # one copy of each mask; actions interned only while the dict was short of the limit
    for r in c_records:
        assert r.mask is None or r.mask is c_masks[r.mask]
    assert sum(r.actions is c_actions.get(r.actions) for r in c_records if r.actions is not None) > 5


# --- dump_runs of both edges over a fake dump socket ---------------------------------------------------


class FakeDumpSock(FakeNetlinkSock):
    """Answers the dump request with datagrams built for its sequence number."""

    never = "the dump never ends"

    def __init__(self, build: Callable[[int], list[bytes]]) -> None:
        super().__init__()
        self.build = build

    def answer(self, data: bytes) -> list[bytes]:
        return self.build(struct.unpack_from("=I", data, 8)[0])


def flow(seq: int, n: int) -> bytes:
    return message({KEY: struct.pack("=HHI", 8, 3, n)}, seq)


def control(mtype: int, seq: int, code: int = 0) -> bytes:
    tail = bytes(16) if mtype == wire.NLMSG_ERROR else b""  # an error echoes the request's header
    return wire.pack_message(mtype, 2, seq, struct.pack("=i", code) + tail)


def fake_client(edge: type[Client], sock: FakeNetlinkSock) -> Client:
    """A client of that edge whose next dump goes to `sock`."""
    client = edge()
    client.close()
    if isinstance(client, GenlClient):
        client._dump_socks = [sock]  # type: ignore[list-item]
    else:
        client._dump_sock = sock  # type: ignore[assignment]
    client.exchange.families["ovs_flow"] = m.FamilyInfo("ovs_flow", 0x20, 1, {})
    return client


def pooled(client: Client) -> list[Any]:
    """The dump sockets the client keeps for the next dump."""
    if isinstance(client, GenlClient):
        return list(client._dump_socks)
    return [client._dump_sock] if client._dump_sock is not None else []


async def dumped(client: Client, payloads: bool = False) -> list[bytes]:
    """The runs (or with `payloads`, the message payloads) of a flow dump, on either edge."""
    req = m.flow_dump(5)
    if isinstance(client, GenlClient):
        return [bytes(r) async for r in (client.dump(req) if payloads else client.dump_runs(req))]
    return [bytes(r) for r in (client.dump(req) if payloads else client.dump_runs(req))]


async def flow_numbers(client: Client) -> list[list[int]]:
    return [[struct.unpack_from("=I", msg.payload, 16)[0] for msg in wire.iter_messages(run)]
            for run in await dumped(client)]


@EDGES
async def test_dump_runs_split_at_control_and_foreign_messages_and_end_at_done(edge: type[Client]) -> None:
    def build(seq: int) -> list[bytes]:
        return [flow(seq, 1) + flow(seq, 2) + control(wire.NLMSG_NOOP, seq) + flow(seq, 3) + flow(seq + 1, 99)
                + flow(seq, 4),
                flow(seq, 5) + control(wire.NLMSG_DONE, seq) + flow(seq, 98)]
    sock = FakeDumpSock(build)
    client = fake_client(edge, sock)
    assert await flow_numbers(client) == [[1, 2], [3], [4], [5]]
    assert pooled(client) == [sock] and not sock.closed  # a finished dump's socket is reused


@EDGES
@pytest.mark.parametrize("end", [wire.NLMSG_ERROR, wire.NLMSG_DONE])
async def test_dump_runs_raise_the_kernel_error_and_drop_the_socket(edge: type[Client], end: int) -> None:
    def build(seq: int) -> list[bytes]:
        return [flow(seq, 1) + control(end, seq, -22) + flow(seq, 2)]
    sock = FakeDumpSock(build)
    client = fake_client(edge, sock)
    with pytest.raises(KernelError) as err:
        await flow_numbers(client)
    assert err.value.code == 22
    assert pooled(client) == [] and sock.closed  # its unread rest must not reach the next dump


@EDGES
async def test_dump_yields_each_payload_of_the_runs(edge: type[Client]) -> None:
    def build(seq: int) -> list[bytes]:
        return [flow(seq, 1) + control(wire.NLMSG_NOOP, seq) + flow(seq, 2) + flow(seq, 3),
                flow(seq, 4) + control(wire.NLMSG_DONE, seq)]
    client = fake_client(edge, FakeDumpSock(build))
    payloads = await dumped(client, payloads=True)
    assert [struct.unpack_from("=I", p, 16)[0] for p in payloads] == [1, 2, 3, 4]
    assert payloads[0] == bytes(next(wire.iter_messages(flow(0, 1))).payload)


class SilentSock(FakeNetlinkSock):
    """A dump socket that never answers, on a real descriptor: the edges really wait on it."""

    def __init__(self) -> None:
        super().__init__()
        self.pair = socket.socketpair()

    def answer(self, data: bytes) -> list[bytes]:
        return []

    @property
    def sock(self) -> Any:
        return self.pair[0]

    def close(self) -> None:
        super().close()
        for end in self.pair:
            end.close()


@EDGES
async def test_a_stalled_dump_times_out_and_drops_the_socket(edge: type[Client]) -> None:
    """No datagram and no end: the wait has a deadline, and the socket is not reused."""
    sock = SilentSock()
    client = fake_client(edge, sock)
    client.timeout = 0.2
    with pytest.raises(TimeoutError):
        await flow_numbers(client)
    assert pooled(client) == [] and sock.closed
