"""Family messages <-> dpif.model records.  Sans-IO: bytes in, records out, and back.

A request is a `Request` (family *name*, command, flags, body): the transport resolves the family name
to its current numeric id at send time, which is what lets requests survive a module reload.
A body is everything after the nlmsghdr: genlmsghdr, the ovs_header (dp_ifindex) and the attributes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from dpif.model import (
    DatapathInfo,
    DpStats,
    Event,
    EventCmd,
    EventKind,
    ExecuteRequest,
    Flow,
    FlowStats,
    MegaflowStats,
    Meter,
    MeterBandStats,
    MeterStats,
    Upcall,
    UpcallKind,
    Vport,
    VportStats,
    VportType,
)
from dpif.netlink import families as fam
from dpif.netlink.wire import (
    GENL_HDR,
    NLA_TYPE_MASK,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_ECHO,
    NLM_F_REQUEST,
    OVS_HDR,
    Message,
    WireError,
    attr,
)


class Request(NamedTuple):
    """A request before its family id and sequence number are known (a tuple: batches build 100k)."""

    family: str
    cmd: int
    flags: int
    body: bytes


@dataclass(frozen=True)
class Body:
    """A decoded genl body: command, version, dp_ifindex (0 without an ovs_header) and attributes."""

    cmd: int
    version: int
    dp_ifindex: int
    attrs: dict[str, Any]


@dataclass(frozen=True)
class FamilyInfo:
    """What nlctrl says about a family: its current id and multicast groups."""

    name: str
    id: int
    version: int
    groups: Mapping[str, int]


def _body(family: fam.Family, cmd: int, dp_ifindex: int, attrs: Mapping[str, Any]) -> bytes:
    hdr = GENL_HDR.pack(cmd, family.version, 0)
    if family.has_ovs_header:
        hdr += OVS_HDR.pack(dp_ifindex)
    return hdr + fam.encode_attrs(family.attrs, attrs)


def request(
    family: fam.Family, cmd: int, attrs: Mapping[str, Any], *, dp_ifindex: int = 0, flags: int = 0
) -> Request:
    return Request(family.name, cmd, NLM_F_REQUEST | NLM_F_ACK | flags, _body(family, cmd, dp_ifindex, attrs))


def decode_body(family: fam.Family, payload: bytes | memoryview) -> Body:
    need = GENL_HDR.size + (OVS_HDR.size if family.has_ovs_header else 0)
    if len(payload) < need:
        raise WireError(f"{family.name}: {len(payload)}-byte message is shorter than its {need}-byte header")
    cmd, version, _ = GENL_HDR.unpack_from(payload)
    dp_ifindex = OVS_HDR.unpack_from(payload, GENL_HDR.size)[0] if family.has_ovs_header else 0
    return Body(cmd, version, dp_ifindex, fam.decode_attrs(family.attrs, memoryview(payload)[need:]))


# --- nlctrl ---------------------------------------------------------------------------------------------


def get_family(name: str) -> Request:
    return request(fam.NLCTRL, fam.CTRL_CMD_GETFAMILY, {"family-name": name})


def decode_family(payload: bytes | memoryview) -> FamilyInfo:
    a = decode_body(fam.NLCTRL, payload).attrs
    if "family-id" not in a or "family-name" not in a:
        raise WireError("nlctrl reply without family id or name")
    groups = {g["name"]: g["id"] for g in a.get("mcast-groups", ()) if "name" in g and "id" in g}
    return FamilyInfo(a["family-name"], a["family-id"], a.get("version", 0), groups)


# --- ovs_datapath ---------------------------------------------------------------------------------------


def dp_get(name: str | None = None, *, dp_ifindex: int = 0) -> Request:
    """GET one datapath by name or ifindex; with neither, a dump of all datapaths."""
    if name is None and not dp_ifindex:
        return request(fam.OVS_DATAPATH, fam.CMD_GET, {}, flags=NLM_F_DUMP)
    return request(fam.OVS_DATAPATH, fam.CMD_GET, {"name": name}, dp_ifindex=dp_ifindex)


def dp_new(name: str, *, upcall_pid: int = 0, features: int = 0, ifindex: int | None = None) -> Request:
    attrs = {"name": name, "upcall-pid": upcall_pid, "user-features": features, "ifindex": ifindex}
    return request(fam.OVS_DATAPATH, fam.CMD_NEW, attrs, flags=NLM_F_ECHO)


def dp_set(dp_ifindex: int, features: int, per_cpu_pids: Sequence[int] | None = None) -> Request:
    """SET always carries USER_FEATURES: the kernel clears every feature a SET leaves out."""
    attrs: dict[str, Any] = {"user-features": features}
    if per_cpu_pids:
        attrs["per-cpu-pids"] = tuple(per_cpu_pids)
    return request(fam.OVS_DATAPATH, fam.CMD_SET, attrs, dp_ifindex=dp_ifindex, flags=NLM_F_ECHO)


def dp_del(name: str | None = None, *, dp_ifindex: int = 0) -> Request:
    return request(fam.OVS_DATAPATH, fam.CMD_DEL, {"name": name}, dp_ifindex=dp_ifindex)


def decode_datapath(payload: bytes | memoryview) -> DatapathInfo:
    b = decode_body(fam.OVS_DATAPATH, payload)
    a = b.attrs
    if "name" not in a:
        raise WireError("ovs_datapath message without a name")
    s = a.get("stats")
    m = a.get("megaflow-stats")
    return DatapathInfo(
        name=a["name"],
        ifindex=b.dp_ifindex,
        features=a.get("user-features", 0),
        stats=DpStats(s["hit"], s["missed"], s["lost"], s["flows"]) if s else DpStats(),
        megaflow_stats=MegaflowStats(m["mask-hit"], m["masks"], m["cache-hit"]) if m else None,
        masks_cache_size=a.get("masks-cache-size"),
        per_cpu_pids=a.get("per-cpu-pids", ()),
    )


# --- ovs_vport ------------------------------------------------------------------------------------------


def vport_get(dp_ifindex: int, port_no: int | None = None, *, name: str | None = None) -> Request:
    if port_no is None and name is None:
        return request(fam.OVS_VPORT, fam.CMD_GET, {}, dp_ifindex=dp_ifindex, flags=NLM_F_DUMP)
    return request(fam.OVS_VPORT, fam.CMD_GET, {"port-no": port_no, "name": name}, dp_ifindex=dp_ifindex)


def vport_new(
    dp_ifindex: int,
    name: str,
    type: VportType,
    *,
    port_no: int | None = None,
    upcall_pids: Sequence[int] = (0,),
    options: bytes = b"",
    ifindex: int | None = None,
) -> Request:
    attrs = {
        "name": name,
        "type": int(type),
        "port-no": port_no,
        "upcall-pid": tuple(upcall_pids) or (0,),  # the kernel requires the attribute
        "options": options or None,
        "ifindex": ifindex,
    }
    return request(fam.OVS_VPORT, fam.CMD_NEW, attrs, dp_ifindex=dp_ifindex, flags=NLM_F_ECHO)


def vport_set_upcall_pids(dp_ifindex: int, port_no: int, upcall_pids: Sequence[int]) -> Request:
    attrs = {"port-no": port_no, "upcall-pid": tuple(upcall_pids) or (0,)}
    return request(fam.OVS_VPORT, fam.CMD_SET, attrs, dp_ifindex=dp_ifindex, flags=NLM_F_ECHO)


def vport_del(dp_ifindex: int, port_no: int) -> Request:
    return request(fam.OVS_VPORT, fam.CMD_DEL, {"port-no": port_no}, dp_ifindex=dp_ifindex)


def decode_vport(payload: bytes | memoryview) -> Vport:
    b = decode_body(fam.OVS_VPORT, payload)
    a = b.attrs
    if "port-no" not in a or "name" not in a:
        raise WireError("ovs_vport message without port number or name")
    s = a.get("stats")
    u = a.get("upcall-stats") or {}
    try:
        vtype = VportType(a.get("type", 0))
    except ValueError as exc:
        raise WireError(f"unknown vport type {a.get('type')}") from exc
    return Vport(
        port_no=a["port-no"],
        type=vtype,
        name=a["name"],
        dp_ifindex=b.dp_ifindex,
        upcall_pids=a.get("upcall-pid", ()),
        ifindex=a.get("ifindex"),
        netnsid=a.get("netnsid"),
        options=a.get("options", b""),
        stats=VportStats(**s) if s else None,
        upcall_success=u.get("success"),
        upcall_fail=u.get("fail"),
    )


# --- ovs_flow -------------------------------------------------------------------------------------------


def flow_dump(dp_ifindex: int) -> Request:
    """A full dump: no UFID_FLAGS, so every flow comes with key, mask and actions (unless they didn't fit)."""
    return request(fam.OVS_FLOW, fam.CMD_GET, {}, dp_ifindex=dp_ifindex, flags=NLM_F_DUMP)


def flow_get(dp_ifindex: int, *, ufid: bytes | None = None, key: bytes | None = None) -> Request:
    _need_id(ufid, key)
    return request(fam.OVS_FLOW, fam.CMD_GET, {"ufid": ufid, "key": key}, dp_ifindex=dp_ifindex)


def flow_put(dp_ifindex: int, flow: Flow, *, create: bool = True) -> Request:
    """NEW with CREATE fails on a duplicate (EEXIST); without it an existing flow's actions are replaced.

    Never terse: the multicast copy other listeners (a pinner, ovs-vswitchd) see is shaped by our flags.
    Built directly (same bytes as `request(...)` with the table's encoders): installs are batched by 100k.
    """
    if flow.actions is None:
        raise ValueError("a flow without actions cannot be installed")
    parts = [_FLOW_NEW_HDR, OVS_HDR.pack(dp_ifindex), attr(_F_KEY, flow.key)]
    if flow.mask is not None:
        parts.append(attr(_F_MASK, flow.mask))
    parts.append(attr(_F_ACTIONS, flow.actions))
    if flow.ufid is not None:
        parts.append(attr(_F_UFID, flow.ufid))
    flags = _PUT_CREATE if create else _PUT_UPDATE
    return Request("ovs_flow", fam.CMD_NEW, flags, b"".join(parts))


def _num(aset: fam.AttrSet, name: str) -> int:
    return aset.by_name[name][0]


_F_KEY, _F_MASK, _F_ACTIONS, _F_UFID = (_num(fam.FLOW_ATTRS, n) for n in ("key", "mask", "actions", "ufid"))
_F_STATS, _F_USED, _F_TCP_FLAGS = (_num(fam.FLOW_ATTRS, n) for n in ("stats", "used", "tcp-flags"))
_FLOW_NEW_HDR = GENL_HDR.pack(fam.CMD_NEW, fam.OVS_FLOW.version, 0)
_PUT_CREATE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE
_PUT_UPDATE = NLM_F_REQUEST | NLM_F_ACK
FLOW_CREATE_QUIET = _PUT_CREATE & ~NLM_F_ACK  # framed add-flows batches: one ack per chunk, not per flow


def flow_del(dp_ifindex: int, *, ufid: bytes | None = None, key: bytes | None = None) -> Request:
    """Delete one flow; the reply (echoed) carries its final stats."""
    _need_id(ufid, key)
    return request(
        fam.OVS_FLOW, fam.CMD_DEL, {"ufid": ufid, "key": key}, dp_ifindex=dp_ifindex, flags=NLM_F_ECHO
    )


def flow_flush(dp_ifindex: int) -> Request:
    """DEL with neither key nor UFID: the kernel flushes the table, silently (no notifications)."""
    return request(fam.OVS_FLOW, fam.CMD_DEL, {}, dp_ifindex=dp_ifindex)


def _need_id(ufid: bytes | None, key: bytes | None) -> None:
    if ufid is None and key is None:
        raise ValueError("a flow is identified by its UFID or its key")


def decode_flow(payload: bytes | memoryview) -> tuple[int, Flow]:
    """(dp_ifindex, flow).  A missing KEY is allowed (terse notifications carry only the UFID)."""
    row = decode_flow_row(payload)
    return row[0], Flow(row[1], row[2], row[3], row[4], row[5])


FlowRow = tuple[int, bytes, "bytes | None", "bytes | None", "bytes | None", FlowStats]


def decode_flow_row(payload: bytes | memoryview) -> FlowRow:
    """decode_flow's fields as a plain tuple (dp_ifindex, key, mask, actions, ufid, stats), for callers
    that only read them (dump-flows text): no record built per flow.

    The dump hot path: one pass over the attributes with the table's numbers, no intermediate dict
    (tests check it against the generic table decoder).
    """
    buf = bytes(payload)  # one copy; attribute payloads are then plain slices of it
    end = len(buf)
    if end < _FLOW_HDR_LEN:
        raise WireError(f"ovs_flow: {end}-byte message is shorter than its {_FLOW_HDR_LEN}-byte header")
    dp_ifindex = _S32.unpack_from(buf, _GENL_LEN)[0]
    key = b""
    mask = actions = ufid = None
    packets = nbytes = used = tcp_flags = 0
    off = _FLOW_HDR_LEN
    nla = _NLA.unpack_from
    while off < end:
        if end - off < 4:
            raise WireError(f"truncated attribute header at offset {off}")
        length, atype = nla(buf, off)
        if length < 4 or off + length > end:
            raise WireError(f"attribute length {length} at offset {off} exceeds {end - off} bytes")
        t = atype & NLA_TYPE_MASK
        start, stop, off = off + 4, off + length, off + ((length + 3) & ~3)
        if t == _F_KEY:
            key = buf[start:stop]
        elif t == _F_MASK:
            mask = buf[start:stop]
        elif t == _F_ACTIONS:
            actions = buf[start:stop]
        elif t == _F_UFID:
            ufid = buf[start:stop]
        elif t == _F_STATS:
            if length - 4 < 16:
                raise WireError(f"stats: expected 16 bytes, got {length - 4}")
            packets, nbytes = _QQ.unpack_from(buf, start)
        elif t == _F_USED:
            if length != 12:
                raise WireError(f"used: expected 8 bytes, got {length - 4}")
            used = _Q.unpack_from(buf, start)[0]
        elif t == _F_TCP_FLAGS:
            if length != 5:
                raise WireError(f"tcp-flags: expected 1 byte, got {length - 4}")
            tcp_flags = buf[start]
    stats = (
        FlowStats(packets, nbytes, used, tcp_flags) if packets or nbytes or used or tcp_flags else _NO_STATS
    )
    return dp_ifindex, key, mask, actions, ufid, stats


_GENL_LEN = GENL_HDR.size
_FLOW_HDR_LEN = GENL_HDR.size + OVS_HDR.size
_S32, _QQ, _Q, _NLA = struct.Struct("=i"), struct.Struct("=QQ"), struct.Struct("=Q"), struct.Struct("=HH")
_NO_STATS = FlowStats()


# --- ovs_meter ------------------------------------------------------------------------------------------


def meter_set(dp_ifindex: int, meter: Meter) -> Request:
    """The kernel needs ID and BANDS (an empty list is allowed), and TYPE, RATE > 0, BURST in every band;
    KBPS absent means packets per second."""
    bands = [{"type": int(b.type), "rate": b.rate, "burst": b.burst} for b in meter.bands]
    attrs = {"id": meter.id, "kbps": meter.kbps, "bands": bands}
    return request(fam.OVS_METER, fam.METER_CMD_SET, attrs, dp_ifindex=dp_ifindex)


def meter_get(dp_ifindex: int, meter_id: int) -> Request:
    return request(fam.OVS_METER, fam.METER_CMD_GET, {"id": meter_id}, dp_ifindex=dp_ifindex)


def decode_meter_stats(payload: bytes | memoryview) -> MeterStats:
    """A GET (or SET/DEL) reply: ID, STATS, USED and a STATS per band, nothing else."""
    a = decode_body(fam.OVS_METER, payload).attrs
    if "id" not in a:
        raise WireError("ovs_meter message without a meter id")
    s = a.get("stats") or {}
    bands = tuple(MeterBandStats(**b.get("stats", {})) for b in a.get("bands", ()))
    return MeterStats(a["id"], s.get("packets", 0), s.get("bytes", 0), a.get("used", 0), bands)


# --- ovs_packet -----------------------------------------------------------------------------------------


def execute(dp_ifindex: int, req: ExecuteRequest) -> Request:
    attrs = {
        "packet": req.packet,
        "key": req.key,
        "actions": req.actions,
        "mru": req.mru,
        "hash": req.hash,
        "upcall-pid": req.upcall_pid,
    }
    return request(fam.OVS_PACKET, fam.PACKET_CMD_EXECUTE, attrs, dp_ifindex=dp_ifindex)


def decode_upcall(payload: bytes | memoryview, received_ns: int = 0) -> Upcall:
    b = decode_body(fam.OVS_PACKET, payload)
    a = b.attrs
    try:
        kind = UpcallKind(b.cmd)
    except ValueError as exc:
        raise WireError(f"ovs_packet command {b.cmd} is not an upcall") from exc
    if "packet" not in a or "key" not in a:
        raise WireError("upcall without packet or key")
    return Upcall(
        kind=kind,
        dp_ifindex=b.dp_ifindex,
        packet=a["packet"],
        key=a["key"],
        userdata=a.get("userdata"),
        actions=a.get("actions"),
        egress_tun_key=a.get("egress-tun-key"),
        mru=a.get("mru"),
        hash=a.get("hash"),
        orig_len=a.get("len"),
        received_ns=received_ns,
    )


# --- notifications --------------------------------------------------------------------------------------


def _decode_flow_record(payload: bytes | memoryview) -> Flow:
    return decode_flow(payload)[1]


_EVENT_DECODERS: dict[str, tuple[EventKind, Callable[[memoryview], DatapathInfo | Vport | Flow]]] = {
    "ovs_datapath": (EventKind.DATAPATH, decode_datapath),
    "ovs_vport": (EventKind.VPORT, decode_vport),
    "ovs_flow": (EventKind.FLOW, _decode_flow_record),
}


def decode_event(family_name: str, msg: Message) -> Event:
    """A multicast message of one of the three OVS groups as a typed event."""
    kind, decode = _EVENT_DECODERS[family_name]
    family = fam.FAMILIES[family_name]
    head = decode_body(family, msg.payload[: GENL_HDR.size + OVS_HDR.size])
    try:
        cmd = EventCmd(head.cmd)
    except ValueError as exc:
        raise WireError(f"{family_name}: unexpected notification command {head.cmd}") from exc
    return Event(kind, cmd, head.dp_ifindex, decode(msg.payload), sender_portid=msg.pid, seq=msg.seq)
