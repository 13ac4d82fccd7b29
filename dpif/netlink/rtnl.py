"""rtnetlink, the little that snapshots need: one netdev's link, its addresses and its routes, as records.

A pure codec: requests to bytes, reply payloads to typed records; `dpif.route` is its blocking edge.
Why not pyroute2 here: importing it cost 10 s of a freeze in a loaded qemu TCG guest, and a freeze reads
this while the upgrade waits.  Re-applying a configuration (a module reload, rare) still uses pyroute2.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from dpif.netlink.wire import (
    NLM_F_ACK,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    WireError,
    attr,
    cstr,
    iter_attrs,
    pack_message,
    u32,
)

AF_UNSPEC, AF_INET, AF_INET6 = 0, 2, 10
RTM_GETLINK, RTM_GETADDR, RTM_GETROUTE = 18, 22, 26
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBi")  # family, prefixlen, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU = 1, 3, 4
IFA_ADDRESS = 1
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_TABLE = 1, 4, 5, 6, 15


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    mac: str  # "aa:bb:cc:dd:ee:ff"; "" for a device without one
    mtu: int
    flags: int  # IFF_*


@dataclass(frozen=True)
class Addr:
    index: int
    family: int
    address: str
    prefixlen: int
    scope: int


@dataclass(frozen=True)
class RouteEntry:
    family: int
    dst: str | None  # None: a default route
    dst_len: int
    gateway: str | None
    table: int
    priority: int | None
    scope: int
    proto: int
    type: int
    oif: int | None


def _ip(raw: memoryview) -> str:
    return str(ipaddress.ip_address(bytes(raw)))


def link_request(seq: int, name: str) -> bytes:
    body = IFINFOMSG.pack(AF_UNSPEC, 0, 0, 0, 0) + attr(IFLA_IFNAME, name.encode() + b"\0")
    return pack_message(RTM_GETLINK, NLM_F_REQUEST | NLM_F_ACK, seq, body)


def addr_dump_request(seq: int) -> bytes:
    return pack_message(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq,
                        IFADDRMSG.pack(AF_UNSPEC, 0, 0, 0, 0))


def route_dump_request(seq: int, family: int) -> bytes:
    """One family's routes: AF_UNSPEC would return IPv4 routes only."""
    return pack_message(RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, seq, RTMSG.pack(family, *(0,) * 8))


def parse_link(payload: memoryview) -> Link:
    if len(payload) < IFINFOMSG.size:
        raise WireError("truncated ifinfomsg")
    _, _, index, flags, _ = IFINFOMSG.unpack_from(payload)
    name, mac, mtu = "", "", 0
    for t, v in iter_attrs(payload[IFINFOMSG.size:]):
        if t == IFLA_IFNAME:
            name = cstr(v)
        elif t == IFLA_ADDRESS:
            mac = ":".join(f"{b:02x}" for b in bytes(v))
        elif t == IFLA_MTU:
            mtu = u32(v)
    return Link(index, name, mac, mtu, flags)


def parse_addr(payload: memoryview) -> Addr | None:
    """None for an address message without an address."""
    if len(payload) < IFADDRMSG.size:
        raise WireError("truncated ifaddrmsg")
    family, prefixlen, _, scope, index = IFADDRMSG.unpack_from(payload)
    for t, v in iter_attrs(payload[IFADDRMSG.size:]):
        if t == IFA_ADDRESS:
            return Addr(index, family, _ip(v), prefixlen, scope)
    return None


def parse_route(payload: memoryview) -> RouteEntry:
    if len(payload) < RTMSG.size:
        raise WireError("truncated rtmsg")
    family, dst_len, _, _, table, proto, scope, rtype, _ = RTMSG.unpack_from(payload)
    dst = gateway = None
    priority = oif = None
    for t, v in iter_attrs(payload[RTMSG.size:]):
        if t == RTA_DST:
            dst = _ip(v)
        elif t == RTA_GATEWAY:
            gateway = _ip(v)
        elif t == RTA_PRIORITY:
            priority = u32(v)
        elif t == RTA_OIF:
            oif = u32(v)
        elif t == RTA_TABLE:
            table = u32(v)
    return RouteEntry(family, dst, dst_len, gateway, table, priority, scope, proto, rtype, oif)


__all__ = ["Addr", "Link", "RouteEntry", "addr_dump_request", "link_request", "parse_addr", "parse_link",
           "parse_route", "route_dump_request"]
