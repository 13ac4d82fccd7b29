"""Whole flow lines against the real kernel 6.1 + ovs-dpctl 3.1 (golden data) and live in the test VM.

Golden data (tests/data/flows-6.1.*) was captured in the test VM (`vm-tests/vm.py run`) by a throwaway
blocking-socket script: `ovs-dpctl add-dp cdx0`, two veth ports (cdxa = 1, cdxb = 2), `ovs-dpctl add-flow`
of every line of tests/data/flow-corpus.txt, then
  * `ovs-dpctl dump-flows cdx0` -> flows-6.1.dpctl.txt, `ovs-dpctl -m dump-flows cdx0` -> .dpctl-m.txt
  * NETLINK_GENERIC socket: CTRL_CMD_GETFAMILY "ovs_flow", then OVS_FLOW_CMD_GET | NLM_F_DUMP (genl version 1,
    ovs_header.dp_ifindex = ifindex of cdx0), every datagram received appended to flows-6.1.dump.bin
  * `ovs-dpctl del-flows`, every corpus line re-added with OUR `parse_flow` as OVS_FLOW_CMD_NEW
    (KEY, ACTIONS, MASK, UFID when given; NLM_F_CREATE|NLM_F_ACK), dumped again -> flows-6.1.ours.dump.bin
The kernel test below repeats the same steps live with `ovs-dpctl add-flows`; regenerate the files from it.
"""

from __future__ import annotations

import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dpif.model import FlowStats
from dpif.netlink import wire
from dpif.netlink.flowtext import ParseError, format_flow, format_stats, parse_flow, parse_stats, split_flow

DATA = Path(__file__).parent / "data"
PORTS = {0: "cdx0", 1: "cdxa", 2: "cdxb"}
FLOW_KEY, FLOW_ACTIONS, FLOW_STATS, FLOW_TCP_FLAGS, FLOW_USED, FLOW_MASK, FLOW_UFID = 1, 2, 3, 4, 5, 7, 9


def dumped_flows(data: bytes) -> Iterator[dict[int, bytes]]:
    """The OVS_FLOW_ATTR_* of every flow in a captured dump (nlmsghdr, genlmsghdr, ovs_header, attrs)."""
    for m in wire.iter_messages(data):
        if m.type in (wire.NLMSG_DONE, wire.NLMSG_ERROR, wire.NLMSG_NOOP):
            continue
        yield {t: bytes(v) for t, v in wire.iter_attrs(m.payload[wire.GENL_HDR.size + wire.OVS_HDR.size :])}


def format_dumped(a: dict[int, bytes], *, verbose: bool = False, now_ms: int = 0) -> str:
    stats = FlowStats()
    if FLOW_STATS in a:
        packets, nbytes = struct.unpack("=QQ", a[FLOW_STATS])
        used = struct.unpack("=Q", a[FLOW_USED])[0] if FLOW_USED in a else 0
        stats = FlowStats(packets, nbytes, used, a[FLOW_TCP_FLAGS][0] if FLOW_TCP_FLAGS in a else 0)
    return format_flow(a[FLOW_KEY], a.get(FLOW_MASK), a.get(FLOW_ACTIONS), a.get(FLOW_UFID), stats,
                       now_ms=now_ms, verbose=verbose, port_names=PORTS if verbose else None)


def corpus() -> list[str]:
    lines = (DATA / "flow-corpus.txt").read_text().splitlines()
    return [ln for ln in lines if ln.strip() and not ln.startswith("#")]


# The kernel test comes first in this module: the VM plugin replays it without running its setup or
# teardown, so a pure test after it in the same module would find the module not torn down.


def _genl(sk: socket.socket, mtype: int, cmd: int, version: int, payload: bytes, flags: int) -> list[bytes]:
    sk.send(wire.pack_message(mtype, flags | wire.NLM_F_REQUEST, 1, wire.GENL_HDR.pack(cmd, version, 0)
                              + payload))
    out: list[bytes] = []
    while True:
        data = sk.recv(1 << 20)
        out.append(data)
        for m in wire.iter_messages(data):
            if m.type == wire.NLMSG_ERROR:
                err = wire.parse_error(m)
                if err is not None:
                    raise err
                return out
            if m.type == wire.NLMSG_DONE or not flags & wire.NLM_F_DUMP:
                return out


@pytest.mark.kernel
def test_live_kernel_dump_matches_ovs_dpctl(tmp_path: Path) -> None:
    dp = "cdxk0"
    subprocess.run(["ovs-dpctl", "del-dp", dp], capture_output=True)
    subprocess.run(["ovs-dpctl", "add-dp", dp], check=True)
    try:
        flows = tmp_path / "flows.txt"
        flows.write_text("\n".join(corpus()) + "\n")
        add = subprocess.run(["ovs-dpctl", "add-flows", dp, str(flows)], capture_output=True, text=True)
        assert add.returncode == 0, add.stderr
        text = subprocess.run(["ovs-dpctl", "dump-flows", dp], capture_output=True, text=True, check=True)
        ifindex = int(Path(f"/sys/class/net/{dp}/ifindex").read_text())
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 16) as sk:
            sk.bind((0, 0))
            reply = _genl(sk, 16, 3, 2, wire.attr(2, b"ovs_flow\0"), 0)
            msg = next(wire.iter_messages(reply[0]))
            family = struct.unpack("=H", dict(wire.iter_attrs(msg.payload[wire.GENL_HDR.size :]))[1])[0]
            dump = b"".join(_genl(sk, family, 3, 1, wire.OVS_HDR.pack(ifindex), wire.NLM_F_DUMP))
        ours = [format_dumped(a) for a in dumped_flows(dump)]
        assert len(ours) == len(corpus())
        assert ours == text.stdout.splitlines()
    finally:
        subprocess.run(["ovs-dpctl", "del-dp", dp], capture_output=True)


def test_corpus_is_big_and_parses() -> None:
    lines = corpus()
    assert len(lines) >= 200
    for line in lines:
        parse_flow(line)


@pytest.mark.parametrize(("dump", "text", "verbose"), [
    ("flows-6.1.dump.bin", "flows-6.1.dpctl.txt", False),
    ("flows-6.1.dump.bin", "flows-6.1.dpctl-m.txt", True),
])
def test_kernel_dump_formats_exactly_like_ovs_dpctl(dump: str, text: str, verbose: bool) -> None:
    ours = [format_dumped(a, verbose=verbose) for a in dumped_flows((DATA / dump).read_bytes())]
    theirs = (DATA / text).read_text().splitlines()
    assert len(ours) == len(theirs) == len(corpus())
    for mine, real in zip(ours, theirs, strict=True):
        assert mine == real


def test_flows_installed_from_our_parse_read_back_identical() -> None:
    """The kernel holds the same flows whether ovs-dpctl or parse_flow encoded them."""
    theirs = sorted(format_dumped(a) for a in dumped_flows((DATA / "flows-6.1.dump.bin").read_bytes()))
    ours = sorted(format_dumped(a) for a in dumped_flows((DATA / "flows-6.1.ours.dump.bin").read_bytes()))
    assert ours == theirs


def test_kernel_text_reparses_to_itself() -> None:
    """parse(ovs-dpctl's text) then format gives the text back: every dumped flow can be re-added from
    text, including what ovs-dpctl 3.1 cannot read back itself (key32(...) = the kernel's IPV6_EXTHDRS,
    ct_tuple6 src_port=, slow_path(a,b))."""
    for line in (DATA / "flows-6.1.dpctl.txt").read_text().splitlines():
        flow = parse_flow(line)
        assert format_flow(flow.key, flow.mask, flow.actions) == line


def test_stats_and_split() -> None:
    line = format_flow(b"", None, None, stats=FlowStats(3, 180, 1500, 0x12), now_ms=4000)
    assert line == "<empty>, packets:3, bytes:180, used:2.500s, flags:S., actions:drop"
    assert split_flow("add in_port(1),eth() 1,2") == ("in_port(1),eth()", "1,2")
    assert split_flow(line) == ("<empty>", "drop")
    with pytest.raises(ParseError):
        split_flow("in_port(1)")


def _walk_values(key: bytes, nested: bool = True) -> list[int]:
    """Offsets of every attribute payload byte of a key (headers excluded), nested ones included."""
    out: list[int] = []

    def walk(base: int, buf: bytes) -> None:
        off = 0
        while len(buf) - off >= 4:
            ln, t = struct.unpack_from("=HH", buf, off)
            if ln < 4 or ln > len(buf) - off:
                return
            if t & 0x8000 or (nested and t & 0x7FFF in (1, 16, 29)):  # encap, tunnel, nsh: nested
                walk(base + off + 4, buf[off + 4 : off + ln])
            else:
                out.extend(range(base + off + 4, base + off + ln))
            off += (ln + 3) & ~3

    walk(0, key)
    return out


@pytest.mark.parametrize("verbose", [False, True])
def test_key_plans_format_like_the_generic_walk(verbose: bool) -> None:
    """The per-(mask, layout) plans of a dump give, for every kernel flow and for variations of its values
    under the same layout (so that the plan built by the first is reused), the generic walk's text."""
    import random

    from dpif.netlink import flowkey as fk

    rnd = random.Random(7)
    for a in dumped_flows((DATA / "flows-6.1.dump.bin").read_bytes()):
        key, mask = a[FLOW_KEY], a.get(FLOW_MASK)
        offsets = _walk_values(key)
        for variant in range(6):
            # port names change between calls: a plan must not keep the names it was built with
            ports = ({1: f"p{variant}", 2: "x"} if variant % 2 else PORTS) if verbose else None
            k = bytearray(key)
            for o in rnd.sample(offsets, min(len(offsets), variant)):
                k[o] = rnd.choice((0, 1, 2, 3, 0x7F, 0xFF, rnd.randrange(256)))
            kb = bytes(k)
            planned = fk.formatter._flow_format(kb, mask, verbose, ports)
            assert planned == fk.formatter._flow_format_generic(kb, mask, verbose, ports)


@pytest.mark.parametrize("flags", [0, 0x12, 0x1FF, 0xE00, 0xFFF])
def test_stats_read_back_as_printed(flags: int) -> None:
    """parse_stats is format_stats read back: the userspace provider reads the daemon's dump with it."""
    st = FlowStats(3, 300, 4000, flags)
    assert parse_stats(format_stats(st, 5000), 5000) == st
    assert parse_stats("packets:0, bytes:0, used:never", 5000) == FlowStats()
