"""Family messages <-> records, from bytes alone; and the request engine's reply matching."""

from __future__ import annotations

import struct
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpfreeze.cli.dpctl import CommandError, _opt_dp, show_text
from dpif.blocking import BlockingClient
from dpif.model import (
    DatapathInfo,
    DpStats,
    EventCmd,
    EventKind,
    ExecuteRequest,
    Flow,
    MegaflowStats,
    Meter,
    MeterBand,
    MeterBandStats,
    MeterBandType,
    MeterStats,
    Upcall,
    UpcallKind,
    Vport,
    VportType,
)
from dpif.netlink import families as fam
from dpif.netlink import messages as m
from dpif.netlink.exchange import Exchange, FamilyNotFound, Pending
from dpif.netlink.wire import (
    GENL_HDR,
    NLM_F_ACK,
    NLM_F_ACK_TLVS,
    NLM_F_CAPPED,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLMSG_DONE,
    NLMSG_ERROR,
    OVS_HDR,
    KernelError,
    Message,
    WireError,
    attr,
    iter_attrs,
    iter_messages,
    pack_message,
)
from dpif.netlink_datapath import read_upcalls
from dpif.sockets import NetlinkSocket, _proc_drops, generic_portids, hold_sockets


def attrs_of(req: m.Request) -> dict[int, bytes]:
    return {t: bytes(v) for t, v in dict(iter_attrs(req.body[GENL_HDR.size + OVS_HDR.size :])).items()}


def test_dp_set_always_carries_user_features() -> None:
    """The kernel clears every feature a SET leaves out: even 0 must be sent explicitly."""
    req = m.dp_set(5, 0)
    assert attrs_of(req)[5] == struct.pack("=I", 0)
    assert 8 not in attrs_of(req)
    req = m.dp_set(5, 0b1011, [7, 8])
    assert attrs_of(req)[5] == struct.pack("=I", 0b1011)
    assert attrs_of(req)[8] == struct.pack("=2I", 7, 8)
    assert struct.unpack_from("=i", req.body, GENL_HDR.size)[0] == 5


def test_dp_new_uses_features_version_and_requires_upcall_pid() -> None:
    req = m.dp_new("dp0")
    cmd, version, _ = GENL_HDR.unpack_from(req.body)
    assert (cmd, version) == (fam.CMD_NEW, fam.OVS_DP_VER_FEATURES)
    assert attrs_of(req)[2] == struct.pack("=I", 0)


def test_dump_requests() -> None:
    assert (m.dp_get().flags & NLM_F_DUMP) and not (m.dp_get("x").flags & NLM_F_DUMP)
    assert (m.vport_get(3).flags & NLM_F_DUMP) and not (m.vport_get(3, 1).flags & NLM_F_DUMP)
    dump = m.flow_dump(3)
    assert (dump.flags & NLM_F_DUMP) and attrs_of(dump) == {}  # never terse: no UFID_FLAGS


def test_flow_put_flags_and_attrs() -> None:
    f = Flow(key=b"K" * 8, mask=b"M" * 8, actions=b"", ufid=b"U" * 16)
    create = m.flow_put(9, f)
    assert create.flags & NLM_F_CREATE and create.flags & NLM_F_ACK
    assert attrs_of(create) == {1: b"K" * 8, 7: b"M" * 8, 2: b"", 9: b"U" * 16}
    assert not m.flow_put(9, f, create=False).flags & NLM_F_CREATE
    with pytest.raises(ValueError):
        m.flow_put(9, Flow(b"K", None, None))
    with pytest.raises(ValueError):
        m.flow_del(9)
    assert attrs_of(m.flow_flush(9)) == {}


def test_vport_new_always_has_upcall_pid() -> None:
    req = m.vport_new(4, "p1", VportType.INTERNAL, port_no=7, upcall_pids=())
    a = attrs_of(req)
    assert a[5] == struct.pack("=I", 0) and a[1] == struct.pack("=I", 7) and a[3] == b"p1\0"


def body(cmd: int, dp_ifindex: int, payload: bytes, version: int = 1) -> bytes:
    return GENL_HDR.pack(cmd, version, 0) + OVS_HDR.pack(dp_ifindex) + payload


def test_decode_datapath() -> None:
    payload = (
        attr(1, b"ovs-system\0")
        + attr(3, struct.pack("=4Q", 1, 2, 3, 4))
        + attr(4, struct.pack("=QIIQQ", 5, 6, 0, 7, 0))
        + attr(5, struct.pack("=I", 9))
        + attr(7, struct.pack("=I", 256))
        + attr(8, struct.pack("=2I", 11, 12))
    )
    info = m.decode_datapath(body(fam.CMD_GET, 33, payload, 2))
    assert info == DatapathInfo(
        "ovs-system", 33, 9, DpStats(1, 2, 3, 4), MegaflowStats(5, 6, 7), 256, (11, 12)
    )
    assert info.per_cpu_dispatch


def test_decode_vport() -> None:
    payload = attr(1, struct.pack("=I", 2)) + attr(2, struct.pack("=I", 1)) + attr(3, b"veth0\0")
    payload += attr(5, struct.pack("=I", 77)) + attr(8, struct.pack("=I", 12))
    v = m.decode_vport(body(fam.CMD_GET, 33, payload))
    assert v == Vport(2, VportType.NETDEV, "veth0", 33, (77,), 12)


def test_decode_flow_keeps_raw_attributes() -> None:
    key = attr(3, struct.pack("=I", 1))
    payload = attr(1, key) + attr(7, key) + attr(2, b"") + attr(9, b"u" * 16)
    payload += attr(3, struct.pack("=QQ", 10, 1000)) + attr(5, struct.pack("=Q", 1234)) + attr(4, b"\x12")
    dp_ifindex, flow = m.decode_flow(body(fam.CMD_NEW, 5, payload))
    assert dp_ifindex == 5
    assert (flow.key, flow.mask, flow.actions, flow.ufid) == (key, key, b"", b"u" * 16)
    assert (flow.stats.packets, flow.stats.bytes, flow.stats.used_ms, flow.stats.tcp_flags) == (
        10,
        1000,
        1234,
        0x12,
    )
    # Actions left out by the kernel stay distinguishable from "drop" (empty actions).
    assert m.decode_flow(body(fam.CMD_NEW, 5, attr(1, key)))[1].actions is None


def test_decode_upcall_and_execute() -> None:
    payload = (
        attr(1, b"\xaa" * 60)
        + attr(2, b"KEY!")
        + attr(11, struct.pack("=Q", 1 << 32 | 5))
        + attr(9, struct.pack("=H", 1500))
    )
    up = m.decode_upcall(body(fam.PACKET_CMD_MISS, 8, payload), received_ns=42)
    assert (up.kind, up.dp_ifindex, up.key, up.hash, up.mru, up.received_ns) == (
        UpcallKind.MISS,
        8,
        b"KEY!",
        1 << 32 | 5,
        1500,
        42,
    )
    req = m.execute(8, ExecuteRequest(up.packet, up.key, b"", mru=up.mru, hash=up.hash, upcall_pid=99))
    a = attrs_of(req)
    assert a[1] == up.packet and a[2] == b"KEY!" and a[3] == b"" and a[12] == struct.pack("=I", 99)
    with pytest.raises(Exception, match="not an upcall"):
        m.decode_upcall(body(fam.PACKET_CMD_EXECUTE, 8, payload))


def test_decode_event_carries_sender() -> None:
    payload = body(fam.CMD_DEL, 5, attr(9, b"u" * 16))
    msg = Message(0x20, 0, 17, 4242, memoryview(payload))
    ev = m.decode_event("ovs_flow", msg)
    assert (ev.kind, ev.cmd, ev.dp_ifindex, ev.sender_portid, ev.seq) == (
        EventKind.FLOW,
        EventCmd.DEL,
        5,
        4242,
        17,
    )
    assert isinstance(ev.record, Flow) and ev.record.ufid == b"u" * 16 and ev.record.key == b""


def test_decode_family() -> None:
    groups = attr(7, attr(1, attr(1, b"ovs_flow\0") + attr(2, struct.pack("=I", 30))))
    payload = GENL_HDR.pack(1, 2, 0) + attr(1, struct.pack("=H", 29)) + attr(2, b"ovs_flow\0") + groups
    info = m.decode_family(payload)
    assert (info.name, info.id, dict(info.groups)) == ("ovs_flow", 29, {"ovs_flow": 30})


# --- ovs_meter: requests are read back with the table decoder, replies are built the way meter.c builds them


def test_meter_set_carries_id_unit_and_every_band() -> None:
    meter = Meter(7, kbps=True, bands=(MeterBand(MeterBandType.DROP, rate=1000, burst=100),))
    req = m.meter_set(33, meter)
    assert (req.family, GENL_HDR.unpack_from(req.body)[:2]) == ("ovs_meter", (fam.METER_CMD_SET, 1))
    assert struct.unpack_from("=i", req.body, GENL_HDR.size)[0] == 33  # meters belong to a datapath
    attrs = fam.decode_attrs(fam.METER_ATTRS, req.body[GENL_HDR.size + OVS_HDR.size :])
    assert attrs == {"id": 7, "kbps": True, "bands": [{"type": 1, "rate": 1000, "burst": 100}]}
    # Packets per second: no KBPS flag.  No bands: BANDS is still sent (the kernel refuses a SET without).
    pps = attrs_of(m.meter_set(33, Meter(7, kbps=False, bands=())))
    assert 2 not in pps and pps[4] == b""


def test_meter_get_asks_by_id() -> None:
    req = m.meter_get(33, 7)
    assert GENL_HDR.unpack_from(req.body)[0] == fam.METER_CMD_GET and not (req.flags & NLM_F_DUMP)
    assert attrs_of(req) == {1: struct.pack("=I", 7)}


def kernel_meter_reply(s: MeterStats) -> bytes:
    """ovs_meter_cmd_reply_stats: ID, STATS, USED, then BANDS whose items are type 0, without NLA_F_NESTED."""
    bands = b"".join(attr(0, attr(4, struct.pack("=QQ", b.packets, b.bytes))) for b in s.bands)
    payload = attr(1, struct.pack("=I", s.id)) + attr(3, struct.pack("=QQ", s.packets, s.bytes))
    payload += attr(5, struct.pack("=Q", s.used_ms)) + attr(4, bands)
    return body(fam.METER_CMD_GET, 33, payload)


_U64 = st.integers(0, 2**64 - 1)


@settings(max_examples=200, deadline=None)
@given(
    st.builds(
        MeterStats,
        st.integers(0, 2**32 - 1),
        _U64,
        _U64,
        _U64,
        st.lists(st.builds(MeterBandStats, _U64, _U64), max_size=3).map(tuple),
    )
)
def test_meter_stats_decode_what_the_kernel_writes(stats: MeterStats) -> None:
    assert m.decode_meter_stats(kernel_meter_reply(stats)) == stats


def test_meter_set_reply_for_a_new_meter_has_only_the_id() -> None:
    assert m.decode_meter_stats(body(fam.METER_CMD_SET, 33, attr(1, struct.pack("=I", 7)))) == MeterStats(7)


@pytest.mark.parametrize(
    "payload",
    [
        attr(3, struct.pack("=QQ", 1, 2)),  # no meter id
        attr(1, struct.pack("=I", 7)) + attr(3, b"\0" * 8),  # stats too short
        attr(1, struct.pack("=I", 7)) + attr(4, attr(0, attr(4, b"\0" * 16))[:-4]),  # band cut short
        attr(1, struct.pack("=H", 7)),  # id of 2 bytes
    ],
)
def test_malformed_meter_reply_raises_wire_error(payload: bytes) -> None:
    with pytest.raises(WireError):
        m.decode_meter_stats(body(fam.METER_CMD_GET, 33, payload))


def ack(seq: int, err: int = 0, ext_msg: bytes = b"") -> bytes:
    inner = pack_message(0x20, 5, seq, b"")[:16]
    flags = NLM_F_CAPPED | (NLM_F_ACK_TLVS if ext_msg else 0)
    return pack_message(
        NLMSG_ERROR, flags, seq, struct.pack("=i", err) + inner + (attr(1, ext_msg) if ext_msg else b"")
    )


def test_replies_matched_by_sequence_number() -> None:
    """Acks arrive in any order, stale replies and notifications are ignored, errors carry extack text."""
    exchange = Exchange(1)
    pending = {10: Pending(), 11: Pending(), 12: Pending()}
    reply = pack_message(0x20, 0, 12, body(3, 1, b""))
    stream = ack(11, -22, b"Flow key attr not present\0") + reply + ack(99) + ack(12) + ack(10)
    done = exchange.file(stream, pending)
    assert done == 3
    err = pending[11].error
    assert isinstance(err, KernelError) and err.code == 22 and err.message == "Flow key attr not present"
    assert pending[10].error is None and pending[10].replies == []
    assert len(pending[12].replies) == 1 and pending[12].error is None
    dump = {13: Pending()}
    done_msg = pack_message(NLMSG_DONE, 2, 13, struct.pack("=i", 0))
    assert exchange.file_message(next(iter_messages(done_msg)), dump) == 1 and dump[13].error is None


def test_show_text_like_ovs_dpctl() -> None:
    info = DatapathInfo("dp0", 5, 0, DpStats(3, 1, 0, 2), MegaflowStats(4, 1, 2), 256)
    ports = [Vport(1, VportType.NETDEV, "veth0"), Vport(0, VportType.INTERNAL, "dp0")]
    assert show_text(info, ports) == (
        "system@dp0:\n"
        "  lookups: hit:3 missed:1 lost:0\n"
        "  flows: 2\n"
        "  masks: hit:4 total:1 hit/pkt:1.00\n"
        "  cache: hit:2 hit-rate:50.00%\n"
        "  caches:\n"
        "    masks-cache: size:256\n"
        "  port 0: dp0 (internal)\n"
        "  port 1: veth0\n"
    )
    # A zero cache-hit count is how old kernels say "not counted": ovs-dpctl leaves the line out.
    quiet = DatapathInfo("dp0", 5, 0, DpStats(), MegaflowStats(0, 0, 0), None)
    assert show_text(quiet, []) == (
        "system@dp0:\n  lookups: hit:0 missed:0 lost:0\n  flows: 0\n  masks: hit:0 total:0 hit/pkt:0.00\n"
    )


def test_datapath_argument_is_taken_as_ovs_dpctl_takes_it() -> None:
    """lib/dpctl.c opt_dpif_open: an optional leading existing datapath, else the only one there is."""
    assert _opt_dp(["dp0"], [], 2) == ("dp0", [])
    assert _opt_dp(["dp0", "dp1"], ["system@dp1", "f"], 3) == ("dp1", ["f"])
    assert _opt_dp(["dp0"], ["in_port(1)"], 3) == ("dp0", ["in_port(1)"])
    for dps, argv, max_args, error in ((["dp0"], ["nope"], 2, "datapath not found"),
                                       ([], [], 2, "no datapaths exist"),
                                       (["dp0", "dp1"], [], 2, "multiple datapaths, specify one"),
                                       (["dp0"], ["netdev@dp0"], 2, "datapath not found")):
        with pytest.raises(CommandError) as exc:
            _opt_dp(dps, argv, max_args)
        assert str(exc.value) == error


@settings(max_examples=300, deadline=None)
@given(
    key=st.binary(max_size=40),
    mask=st.none() | st.binary(max_size=40),
    actions=st.binary(max_size=40),
    ufid=st.none() | st.binary(min_size=1, max_size=16),
    create=st.booleans(),
)
def test_flow_put_fast_path_equals_table_encoding(
    key: bytes, mask: bytes | None, actions: bytes, ufid: bytes | None, create: bool
) -> None:
    fast = m.flow_put(7, Flow(key, mask, actions, ufid), create=create)
    generic = m.request(
        fam.OVS_FLOW,
        fam.CMD_NEW,
        {"key": key, "mask": mask, "actions": actions, "ufid": ufid},
        dp_ifindex=7,
        flags=NLM_F_CREATE if create else 0,
    )
    assert fast == generic


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_flow_fast_decoder_agrees_with_table_decoder(data: st.DataObject) -> None:
    u64 = st.integers(0, 2**64 - 1)
    values = data.draw(
        st.fixed_dictionaries(
            {},
            optional={
                **{k: st.binary(max_size=24) for k in ("key", "mask", "actions", "ufid")},
                "stats": st.fixed_dictionaries({"packets": u64, "bytes": u64}),
                "used": u64,
                "tcp-flags": st.integers(0, 255),
                "ufid-flags": st.integers(0, 7),
                "probe": st.just(True),
            },
        )
    )
    payload = body(fam.CMD_NEW, 3, fam.encode_attrs(fam.FLOW_ATTRS, values))
    generic = m.decode_body(fam.OVS_FLOW, payload).attrs
    _, flow = m.decode_flow(payload)
    assert flow.key == generic.get("key", b"")
    assert (flow.mask, flow.actions, flow.ufid) == (
        generic.get("mask"),
        generic.get("actions"),
        generic.get("ufid"),
    )
    stats = generic.get("stats") or {"packets": 0, "bytes": 0}
    assert (flow.stats.packets, flow.stats.bytes) == (stats["packets"], stats["bytes"])
    assert (flow.stats.used_ms, flow.stats.tcp_flags) == (generic.get("used", 0), generic.get("tcp-flags", 0))


def test_drop_counter_is_found_for_our_socket() -> None:
    """Overrun detection reads sk_drops in /proc/net/netlink: our row must be found (0, not None)."""
    sock = NetlinkSocket(listener=True)
    try:
        assert _proc_drops(sock.inode) == 0
        assert _proc_drops(0) is None
        assert sock.new_drops() == 0
    finally:
        sock.close()


def test_a_held_socket_outlives_its_process_and_keeps_what_comes_after() -> None:
    """The crash guard's hold, against the host's real netlink: a copy of a process's upcall socket (by
    pidfd_getfd) keeps it bound after a kill -9, and an upcall sent to its portid then is read, decoded,
    where without the copy the kernel would have refused it (no such portid)."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import socket, time; s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW,"
         " 16); s.bind((0, 0)); print(s.getsockname()[0], flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        portid = int(child.stdout.readline())
        assert hold_sockets(child.pid, {portid + 1}) == []  # another portid: nothing of it is held
        (held,) = hold_sockets(child.pid, {portid})
    finally:
        child.kill()
        child.wait()
    sender = NetlinkSocket()
    try:
        assert held.portid == portid and portid in generic_portids()  # bound still, the process gone
        payload = attr(1, b"\xaa" * 60) + attr(2, b"KEY!")
        sender.sock.sendto(pack_message(fam.GENL_ID_CTRL + 20, 0, 0, body(fam.PACKET_CMD_MISS, 8, payload)),
                           (portid, 0))
        (up,) = read_upcalls(held)
        assert isinstance(up, Upcall) and (up.kind, up.key) == (UpcallKind.MISS, b"KEY!")
        assert read_upcalls(held) == []  # without blocking
    finally:
        sender.close()
        held.close()
    assert portid not in generic_portids()


def test_blocking_client_resolves_families_through_nlctrl() -> None:
    """The blocking edge against the host's real nlctrl (present on every Linux): a known family
    resolves and is cached, an unknown one is FamilyNotFound, a one-line OSError."""
    with BlockingClient(timeout=2) as client:
        info = client.family("nlctrl")
        assert info.id == fam.GENL_ID_CTRL and client.exchange.families["nlctrl"] is info
        with pytest.raises(FamilyNotFound) as exc:
            client.family("dpfz_nofamily")
        assert "dpfz_nofamily" in str(exc.value) and "\n" not in str(exc.value)
        assert [info] == [m.decode_family(p) for p in client.dump(m.get_family("nlctrl"))
                          if m.decode_family(p).name == "nlctrl"]


def test_a_kernel_error_propagates_through_generator_context_managers() -> None:
    """contextlib writes the traceback of what it re-raises (open_datapath is such a manager)."""

    @contextmanager
    def managed() -> Iterator[None]:
        yield

    with pytest.raises(KernelError) as exc, managed():
        raise KernelError(17, "exists")
    assert exc.value.errno == 17 and str(exc.value) == "EEXIST: File exists (exists)"
