"""The C add-flows encoder against the Python path it stands in for, the quiet framed batch, and
`dpctl add-flows` end to end over a fake kernel (same output and installs with and without the encoder)."""

from __future__ import annotations

import errno
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from netlinkfakes import EDGES, Client, FakeNetlinkSock

from dpfreeze.cli import dpctl
from dpfreeze.lab.bench_dpif import flow_lines
from dpif.model import Flow
from dpif.netlink import actions, flowkey, flowload, flowtext
from dpif.netlink import messages as m
from dpif.netlink.exchange import FramedBatch
from dpif.netlink.wire import (
    NLM_F_ACK,
    NLMSG_ERROR,
    NLMSG_HDR,
    KernelError,
    iter_messages,
    pack_message,
)
from dpif.transport import GenlClient

DATA = Path(__file__).parent / "data"
FAMILY, IFINDEX, SEQ = 0x1F, 7, 1000
FLAGS = m.FLOW_CREATE_QUIET
ENC = flowload.ENCODER


def test_the_extension_is_built() -> None:
    """CI builds it (setup.py build_ext); without it add-flows silently takes the slow path."""
    assert ENC is not None


def reference(line: str, seq: int = SEQ) -> bytes | None:
    """The Python path's message for one add-flows line; None where it would not send one."""
    parsed = flowtext.flow_line(line)
    if parsed is None:
        return b""
    command, flow_text, acts = parsed
    if command not in ("", "add") or acts is None:
        return None
    try:
        flow = dpctl.parse_flow_args(flow_text, acts, {})
    except dpctl.CommandError:
        return None
    return pack_message(FAMILY, FLAGS, seq, m.flow_put(IFINDEX, flow, create=True).body)


def encode(lines: list[str], start: int = 0, max_count: int = 1 << 20,
           max_bytes: int = 1 << 30) -> flowload.Encoded:
    assert ENC is not None
    return ENC.encode(lines, start, family=FAMILY, flags=FLAGS, ifindex=IFINDEX, seq=SEQ,
                      max_count=max_count, max_bytes=max_bytes)


def check_line(line: str) -> bool:
    """C and Python agree on one line (C may decline it); True when C took it."""
    e = encode([line])
    if e.stop == 0:
        reference(line)  # what Python parses now, C may take next time (the memos)
        return False
    want = reference(line)
    assert want is not None, line
    assert e.data == want, line
    assert e.n == (1 if want else 0) and e.last == (0 if want else -1)
    return True


def clear_memos() -> None:
    flowkey.parser.PARSED_ATTRS.clear()
    actions.parser.PARSED.clear()
    for memo in flowkey.parser.PARSED_VALUES.values():
        memo.clear()


def corpus() -> list[str]:
    return [line for line in (DATA / "flow-corpus.txt").read_text().splitlines() if line.strip()]


@pytest.mark.skipif(ENC is None, reason="extension not built")
def test_corpus_byte_identical() -> None:
    clear_memos()
    lines = corpus()
    assert len(lines) >= 200
    cold = sum(check_line(line) for line in lines)  # each line byte-identical; cold memos: mostly Python
    taken = sum(check_line(line) for line in lines)
    # warm: C takes the lines whose pieces Python has seen, save action lists that asked about port names
    assert cold < taken and taken >= len(lines) // 2, (cold, taken)


@pytest.mark.skipif(ENC is None, reason="extension not built")
def test_bench_lines_in_one_call_consecutive_seqs() -> None:
    clear_memos()
    lines = flow_lines(2000)
    check_line(lines[0])  # the shared attributes and actions, parsed by Python once
    e = encode(lines)
    assert (e.stop, e.n, e.full) == (2000, 2000, False)
    want = b"".join(reference(line, SEQ + i) or b"" for i, line in enumerate(lines))
    assert e.data == want
    assert e.last == len(want) - len(reference(lines[-1]) or b"")


@pytest.mark.skipif(ENC is None, reason="extension not built")
def test_stops_at_limits_and_at_lines_for_python() -> None:
    clear_memos()
    lines = flow_lines(10)
    check_line(lines[0])
    one = len(reference(lines[0]) or b"")
    assert encode(lines, max_count=3)[:3:2] == (3, 3)
    e = encode(lines, max_bytes=2 * one + 5)
    assert (e.stop, e.n, e.full, e.last) == (2, 2, True, one)
    e = encode(lines, 4, max_count=0)
    assert (e.stop, e.n, e.full) == (4, 0, True)
    mixed = [lines[1], "   \n", "", lines[2], "# a comment", lines[3], "delete in_port(1)", "x"]
    assert encode(mixed)[:3:2] == (4, 2)  # blank lines are taken (no message)
    assert encode(mixed, 4).stop == 4
    assert encode(mixed, 5)[:3:2] == (6, 1)
    assert encode(mixed, 6).stop == 6
    assert encode(mixed, 7).stop == 7
    assert encode(mixed, 99)[:3:2] == (99, 0)


@pytest.mark.skipif(ENC is None, reason="extension not built")
def test_declines_what_it_must_not_guess() -> None:
    clear_memos()
    base = "in_port(1),eth(),eth_type(0x0800),ipv4(src=10.0.0.1,frag=no) 2,3"
    check_line(base)
    assert check_line(base)
    for line in (
        "add " + base, "modify " + base, "delete " + base, base + " # c", "\t" + base,
        base.replace(",", "\t", 1),
        base.replace("ipv4(", "ipv4(proto=6,src=é"), "in_port(1) ", "in_port(1)", "ufid:1234,in_port(1) 2,3",
        "in_port(1),ufid:00000001-0000-0000-0000-000000000001 2,3", base.replace("2,3", "4,5"),
        "in_port(9) 2,3", "eth_type(0x86dd),ipv6(src=::1) 2,3", base.replace("10.0.0.1", "10.0.0.256"),
        base.replace("frag=no", "frag=nope"), base[:30] + " 2,3",
    ):
        assert encode([line]).stop == 0, line


@pytest.mark.skipif(ENC is None, reason="extension not built")
def test_port_names_are_never_taken_from_the_memo() -> None:
    clear_memos()
    dpctl.parse_flow_args("in_port(br0)", "br0", {"br0": 3})
    assert encode(["in_port(br0) 2"]).stop == 0
    assert encode(["in_port(1) br0"]).stop == 0


_HEX = "0123456789abcdefABCDEF"
_NUM = st.one_of(
    st.integers(0, 300).map(str), st.integers(0, 1 << 70).map(str), st.integers(0, 1 << 70).map(hex),
    st.integers(0, 1 << 40).map(lambda v: "0" + oct(v)[2:]), st.integers(0, 70000).map(lambda v: f"-{v}"),
    st.integers(0, 999).map(lambda v: f"+{v}"), st.sampled_from(["0x", "0X1F", "08", "-", "0xg", "00"]),
)
_IP4 = st.one_of(st.tuples(*[st.integers(0, 300)] * 4).map(lambda t: ".".join(map(str, t))),
                 st.sampled_from(["1.2.3", "1.2.3.4.5", "01.2.3.4", "1234.1.1.1", "1.2.3.4567"]))
_MAC = st.one_of(st.lists(st.text(_HEX, min_size=1, max_size=3), min_size=5, max_size=7).map(":".join))
_IP6 = st.sampled_from(["::1", "2001:db8::6", "fe80::2/ffff::", "::ffff:1.2.3.4", "1::2::3", "::/::"])
_FRAG = st.sampled_from(["no", "first", "later", "NO", "Later", "nope", "", "firstly"])


def _value(kind: str) -> st.SearchStrategy[str]:
    one = {"eth": _MAC, "ipv4": _IP4, "in6": _IP6, "frag": _FRAG}.get(kind, _NUM)
    if kind == "frag":
        return one
    return st.one_of(one, st.tuples(one, one).map("/".join))


@st.composite
def _struct_attr(draw: st.DrawFn) -> str:
    prefix, _, _, fields = draw(st.sampled_from(flowload.struct_table()))
    chosen = draw(st.lists(st.sampled_from(fields), max_size=len(fields) + 1)) if fields else []
    body = ",".join(name + draw(_value(kind)) for name, kind, _, _ in chosen)
    return prefix + body + draw(st.sampled_from([")", ",)", "", "))", ")x"]))


_OTHER_ATTR = st.sampled_from(["in_port(1)", "in_port(2)", "eth_type(0x0800)", "eth_type(0x86dd)",
                               "recirc_id(0)", "skb_mark(0x5/0xff)", "vlan(vid=5)", "ct_state(+trk)",
                               "key32(00 00/00 00)", "tunnel(tun_id=0x5,src=1.1.1.1)",
                               "encap(eth_type(0x800))", "bogus(1)", "(", ")", "ufid:x"])
_ACTIONS = st.sampled_from(["2,3", "1", "drop", "push_vlan(vid=5),2", "set(ipv4(src=1.2.3.4)),1", "x(", ""])
_SEP = st.sampled_from([",", ",", ",", ", ", ",,", "", " "])
_UFID = st.sampled_from(["", "ufid:00000001-0000-0000-0000-000000000001,",
                         "ufid:12345678-9abc-def0-1234-56789abcdef0", "ufid:1234,",
                         "ufid:00000001-0000-0000-0000-00000000000g,"])


@st.composite
def flow_line_text(draw: st.DrawFn) -> str:
    attrs = draw(st.lists(st.one_of(_struct_attr(), _OTHER_ATTR), max_size=6))
    key = draw(_UFID) + "".join(a + draw(_SEP) for a in attrs)
    space = draw(st.sampled_from([" ", "  "]))
    line = draw(st.sampled_from(["", " ", "add "])) + key + space + draw(_ACTIONS)
    if draw(st.booleans()):  # damage: cut it, or drop in a character
        at = draw(st.integers(0, len(line)))
        line = line[:at] + (draw(st.sampled_from(["", "(", ")", ",", "=", "/", "#", "\t", "\0", "é", "9"]))
                            + line[at:] if draw(st.booleans()) else "")
    return line + draw(st.sampled_from(["", "\n", " \n"]))


@pytest.mark.skipif(ENC is None, reason="extension not built")
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(flow_line_text(), min_size=1, max_size=4))
def test_generated_lines_byte_identical(lines: list[str]) -> None:
    """Whatever C takes, it takes exactly as Python reads it; it stops exactly at a line it declines."""
    for line in lines:
        reference(line)  # let Python see each once: the memos now hold what it could parse
    e = encode(lines)
    expect, seq = [], SEQ
    for line in lines[: e.stop]:
        want = reference(line, seq)
        assert want is not None, line
        expect.append(want)
        seq += bool(want)
    assert e.data == b"".join(expect)
    if e.stop < len(lines):
        assert encode(lines, e.stop).stop == e.stop
    for line in lines:
        check_line(line)


@pytest.mark.skipif(ENC is None, reason="extension not built")
@settings(max_examples=500, deadline=None)
@given(text=st.text(max_size=200), cut=st.integers(0, 200))
def test_garbage_never_crashes(text: str, cut: int) -> None:
    base = "in_port(1),eth(src=00:11:22:33:44:55/ff:ff:ff:ff:ff:ff),eth_type(0x0800),ipv4(src=1.2.3.4) 2,3"
    for line in (text, base[:cut] + text, base[:cut], text + base, "x" * 100000 + text):
        check_line(line)


# --- the quiet batch ------------------------------------------------------------------------------------


class FakeSock(FakeNetlinkSock):
    """A request socket that refuses chosen sequence numbers and acks only what asks for it."""

    never = "waiting for an ack that will never come"

    def __init__(self, refuse: dict[int, int]) -> None:
        super().__init__()
        self.refuse = refuse

    def answer(self, data: bytes) -> list[bytes]:
        out = []
        for msg in iter_messages(data):
            code = self.refuse.get(msg.seq, 0)
            if code or msg.flags & NLM_F_ACK:
                payload = struct.pack("=i", -code) + NLMSG_HDR.pack(16 + len(msg.payload), 0, 0, msg.seq, 0)
                out.append(pack_message(NLMSG_ERROR, 0x100, msg.seq, payload))
        return out


@EDGES
async def test_send_framed_files_errors_per_message(edge: type[Client]) -> None:
    client = edge()
    client.close()
    sock = FakeSock({})
    client.sock = sock  # type: ignore[assignment]
    client.exchange.families["ovs_flow"] = m.FamilyInfo("ovs_flow", FAMILY, 1, {})
    batch = FramedBatch("ovs_flow", client.reserve_seqs(100), 4)
    for i in range(10):
        batch.append(pack_message(FAMILY, FLAGS, batch.next_seq, b"\0" * (8 + 4 * i)))
    first = batch.first_seq
    sock.refuse = {first + 1: errno.EEXIST, first + 3: errno.EINVAL, first + 9: errno.EEXIST}
    errors = await client.send_framed(batch) if isinstance(client, GenlClient) else client.send_framed(batch)
    assert {i: e.code for i, e in errors.items()} == {1: errno.EEXIST, 3: errno.EINVAL, 9: errno.EEXIST}
    sent = sock.sent
    assert len(sent) == 3  # chunks of max_msgs=4
    acked = [[bool(msg.flags & NLM_F_ACK) for msg in iter_messages(s)] for s in sent]
    assert acked == [[False, False, False, True], [False, False, False, True], [False, True]]
    assert [msg.seq for s in sent for msg in iter_messages(s)] == list(range(first, first + 10))


def test_framed_batch_chunks_by_bytes() -> None:
    batch = FramedBatch("ovs_flow", 1, 1000)
    big = pack_message(FAMILY, FLAGS, 1, b"\0" * 40000)
    batch.append(big)
    batch.append(big)
    assert [c.count for c in batch.chunks] == [1, 1]
    assert batch.count == 2 and batch.next_seq == 3


# --- add-flows end to end -------------------------------------------------------------------------------


class FakeKernel:
    """Installs flows by key; a duplicate key is EEXIST, as OVS_FLOW_CMD_NEW with CREATE answers."""

    def __init__(self) -> None:
        self.flows: list[tuple[str, Any]] = []
        self.keys: set[bytes] = set()

    def put(self, flow: Flow) -> KernelError | None:
        self.flows.append(("new", flow))
        if flow.key in self.keys:
            return KernelError(errno.EEXIST)
        self.keys.add(flow.key)
        return None


class FakeDp:
    def __init__(self, kernel: FakeKernel, client: Any) -> None:
        self.kernel, self.client, self.ifindex = kernel, client, IFINDEX

    def ports(self) -> list[Any]:
        from dpif.model import Vport, VportType
        return [Vport(5, VportType.INTERNAL, "br0")]

    def flow_put_many(self, flows: list[Flow], *, create: bool) -> list[BaseException | None]:
        return [self.kernel.put(f) for f in flows]

    def flow_put(self, flow: Flow, *, create: bool) -> None:
        self.kernel.flows.append(("mod", flow))

    def flow_del(self, *, ufid: bytes | None, key: bytes | None) -> None:
        self.kernel.flows.append(("del", (ufid, key)))
        if key is not None and key not in self.kernel.keys:
            raise KernelError(errno.ENOENT)
        self.kernel.keys.discard(key or b"")


class FakeClient:
    max_batch = 64

    def __init__(self, kernel: FakeKernel) -> None:
        self.kernel = kernel
        self.seq = 0

    def reserve_seqs(self, n: int) -> int:
        self.seq += n
        return self.seq - n + 1

    def family(self, name: str) -> m.FamilyInfo:
        return m.FamilyInfo(name, FAMILY, 1, {})

    def send_framed(self, batch: FramedBatch) -> dict[int, KernelError]:
        errors = {}
        seqs = [msg.seq for c in batch.chunks for msg in iter_messages(bytes(c.data))]
        assert seqs == list(range(batch.first_seq, batch.first_seq + batch.count))
        for c in batch.chunks:
            for msg in iter_messages(bytes(c.data)):
                assert msg.type == FAMILY and msg.flags & ~NLM_F_ACK == FLAGS
                err = self.kernel.put(m.decode_flow(msg.payload)[1])
                if err is not None:
                    errors[msg.seq - batch.first_seq] = err
        return errors


def run_add_flows(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path,
                        text: str, encoder: flowload.Encoder | None) -> tuple[int, str, str, list[Any]]:
    kernel = FakeKernel()
    client = FakeClient(kernel)

    def fake_open(client: Any, name: str) -> Any:
        return FakeDp(kernel, client)

    def fake_opt(dps: Any, argv: Any, max_args: int) -> tuple[str, list[str]]:
        return "dp0", list(argv)

    monkeypatch.setattr(dpctl, "_open", fake_open)
    monkeypatch.setattr(dpctl, "_opt_dp", fake_opt)
    monkeypatch.setattr(flowload, "ENCODER", encoder)
    monkeypatch.setattr(dpctl, "ADD_BATCH", 50)
    path = tmp_path / "flows"
    path.write_text(text)
    clear_memos()
    status = dpctl._process_flows(client, ["dp0"], [str(path)], "add")  # type: ignore[arg-type]
    out = capsys.readouterr()
    return status, out.out, out.err, [(k, f if k != "new" else (f.key, f.mask, f.actions, f.ufid))
                                      for k, f in kernel.flows]


@pytest.mark.skipif(ENC is None, reason="extension not built")
def test_add_flows_same_with_and_without_the_encoder(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    lines = flow_lines(130)
    lines[7] = lines[3]  # duplicate: EEXIST
    lines[60:60] = ["# comment", "", "in_port(br0),eth() 2", "in_port(1) br0", "bad(", "in_port(1)",
                    "modify " + lines[0], "delete " + lines[1], "delete in_port(99)", "add " + lines[2],
                    "ufid:00000001-0000-0000-0000-000000000001," + lines[70], "ufid:nope,in_port(1) 2",
                    "in_port(1)\teth() 2", lines[10]]
    lines += corpus() + corpus()[:5] + ["  " + lines[20] + "  ", "x" * 70000 + " 2"]
    text = "\n".join(lines) + "\n"
    slow = run_add_flows(monkeypatch, capsys, tmp_path, text, None)
    fast = run_add_flows(monkeypatch, capsys, tmp_path, text, ENC)
    assert fast == slow
    assert slow[0] == 1 and "File exists" in slow[2] and "Failed parsing line number 65" in slow[2]


