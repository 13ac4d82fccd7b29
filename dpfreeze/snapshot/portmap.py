"""Carry a snapshot's flows onto a datapath that numbers its ports differently.

A userspace datapath is re-created by every ovs-vswitchd that starts, and it numbers the bridge ports in
whatever order it adds them (a kernel datapath keeps its vports, and their numbers, across restarts).  A
flow says `in_port(2)` and `actions:3`: restored verbatim, it would forward between the wrong ports.  So
the flows are carried by port *name*: every port number in the key and the actions (nested action lists
included) is rewritten from the old datapath's numbering to the new one's.  Where port numbers sit is
data (`PORT_FIELDS`, `NESTED_ACTIONS`), as in the attribute tables; the text syntax cannot be used for
this, since a port name that ends a nested action list (`clone(...,p1)`) does not parse back, in OVS either.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from dpif.model import Flow, Vport
from dpif.netlink import actions as act
from dpif.netlink import flowkey as fk
from dpif.netlink.wire import NLA_HDR, WireError, align4, iter_raw_attrs

U32 = struct.Struct("=I")
# action -> byte offsets of the port numbers in its payload (odp_port_t, host order)
PORT_FIELDS = {act.OUTPUT: (0,), act.TUNNEL_POP: (0,), act.TUNNEL_PUSH: (0, 4)}  # push: tnl_port, out_port
# action -> {sub-attribute: what it holds}: "actions" (a nested action list) or "port" (a u32 port)
NESTED_ACTIONS = {
    act.CLONE: None,  # the payload itself is an action list
    act.SAMPLE: {act.SAMPLE_ACTIONS: "actions"},
    act.CHECK_PKT_LEN: {act.CPL_IF_GREATER: "actions", act.CPL_IF_LESS_EQUAL: "actions"},
    act.DEC_TTL: {act.DEC_TTL_ACTION: "actions"},
    act.USERSPACE: {act.US_EGRESS_TUN_PORT: "port", act.US_ACTIONS: "actions"},
}


class UnmappedPort(ValueError):
    """The flow uses a port the new datapath does not have (yet)."""


@dataclass(frozen=True)
class PortMap:
    old: dict[int, str]  # port number -> name, where the flows come from
    new: dict[str, int]  # name -> port number, where they go

    @classmethod
    def between(cls, old: Iterable[Vport], new: Iterable[Vport]) -> PortMap:
        return cls({v.port_no: v.name for v in old}, {v.name: v.port_no for v in new})

    @property
    def identity(self) -> bool:
        """Every old port has its old number in the new datapath: nothing to rewrite."""
        return all(self.new.get(name) == no for no, name in self.old.items())

    def renamed(self) -> list[str]:
        """`name: old -> new` for each port whose number changed (for the report)."""
        return [f"{name}: {no} -> {self.new[name]}" for no, name in sorted(self.old.items())
                if name in self.new and self.new[name] != no]

    def missing(self) -> list[str]:
        return sorted(name for name in self.old.values() if name not in self.new)

    def carry(self, flow: Flow) -> Flow:
        """The flow with its port numbers rewritten; UnmappedPort if it needs a port that is gone (or one
        the old datapath did not have: carried blindly, that number might name a real port here)."""
        if self.identity:
            return flow
        try:
            key = _walk(flow.key, lambda t, p: _port_at(p, (0,), self.port) if t == fk.IN_PORT else None)
            actions = None if flow.actions is None else self._actions(flow.actions)
        except WireError as exc:
            raise UnmappedPort(f"undecodable flow: {exc}") from None
        return flow._replace(key=key, actions=actions)

    def port(self, old: int) -> int:
        name = self.old.get(old)
        if name is None:
            raise UnmappedPort(f"port {old}: the snapshot's datapath had no port by that number")
        new = self.new.get(name)
        if new is None:
            raise UnmappedPort(f"port {name} (was {old}) is not in the datapath")
        return new

    def _actions(self, buf: bytes | memoryview) -> bytes:
        def one(t: int, payload: memoryview) -> bytes | None:
            if t in PORT_FIELDS:
                return _port_at(payload, PORT_FIELDS[t], self.port)
            if t not in NESTED_ACTIONS:
                return None
            subs = NESTED_ACTIONS[t]
            if subs is None:
                return self._actions(payload)
            return _walk(payload, lambda st, sp: (self._actions(sp) if subs.get(st) == "actions" else
                                                  _port_at(sp, (0,), self.port) if subs.get(st) == "port"
                                                  else None))
        return _walk(buf, one)


def _port_at(payload: memoryview | bytes, offsets: tuple[int, ...], port: Callable[[int], int]) -> bytes:
    out = bytearray(payload)
    for off in offsets:
        if off + 4 > len(out):
            raise WireError(f"port field at {off} beyond a {len(out)}-byte attribute")
        U32.pack_into(out, off, port(U32.unpack_from(out, off)[0]))
    return bytes(out)


def _walk(buf: bytes | memoryview, rewrite: Callable[[int, memoryview], bytes | None]) -> bytes:
    """Rebuild a run of attributes, each kept byte for byte (header flags and padding too) unless
    `rewrite` returns a new payload for it."""
    mv = memoryview(buf)
    out: list[bytes] = []
    off = 0
    for t, raw in iter_raw_attrs(mv):
        new = rewrite(t, raw[NLA_HDR.size :])
        if new is None:
            out.append(bytes(mv[off : off + align4(len(raw))]))
        else:
            n = NLA_HDR.size + len(new)
            out.append(NLA_HDR.pack(n, NLA_HDR.unpack_from(raw)[1]) + new + b"\0" * (align4(n) - n))
        off += align4(len(raw))
    return b"".join(out)
