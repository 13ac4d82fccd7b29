"""Family messages <-> dpif.model records.  Sans-IO: bytes in, records out, and back.

A request is a `Request` (family *name*, command, flags, body): the transport resolves the family name
to its current numeric id at send time, which is what lets requests survive a module reload.
A body is everything after the nlmsghdr: genlmsghdr, the ovs_header (dp_ifindex) and the attributes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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
    Upcall,
    UpcallKind,
    Vport,
    VportStats,
    VportType,
)
from dpif.netlink import families as fam
from dpif.netlink.wire import (
    GENL_HDR,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_ECHO,
    NLM_F_REQUEST,
    OVS_HDR,
    Message,
    WireError,
)


@dataclass(frozen=True)
class Request:
    family: str
    cmd: int
    flags: int
    body: bytes

    @property
    def is_dump(self) -> bool:
        return bool(self.flags & NLM_F_DUMP)


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
    """
    if flow.actions is None:
        raise ValueError("a flow without actions cannot be installed")
    attrs = {"key": flow.key, "mask": flow.mask, "actions": flow.actions, "ufid": flow.ufid}
    flags = NLM_F_CREATE if create else 0
    return request(fam.OVS_FLOW, fam.CMD_NEW, attrs, dp_ifindex=dp_ifindex, flags=flags)


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
    b = decode_body(fam.OVS_FLOW, payload)
    a = b.attrs
    s = a.get("stats")
    stats = FlowStats(
        packets=s["packets"] if s else 0,
        bytes=s["bytes"] if s else 0,
        used_ms=a.get("used", 0),
        tcp_flags=a.get("tcp-flags", 0),
    )
    return b.dp_ifindex, Flow(a.get("key", b""), a.get("mask"), a.get("actions"), a.get("ufid"), stats)


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
