"""The Linux side of internal ports: MAC, MTU, up/down, addresses and routes (rtnetlink).

An internal vport's netdev is destroyed with its datapath (module reload, `del-dp`) and re-created with a
random MAC, MTU 1500, no address and no route; the kernel keeps none of that in the OVS families, so a
snapshot records it here and `apply` puts it back, as ovs-save's save-interfaces does for `ovs-ctl`.

Only state an operator configured is kept: link-local addresses and kernel-made (proto kernel) routes come
back by themselves once the link is up and addressed.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyroute2 import IPRoute

from dpfreeze.errors import DpfreezeError
from dpif import route
from dpif.netlink import rtnl

RT_SCOPE_LINK = 253
RTPROT_KERNEL = 2
RT_TABLE_LOCAL = 255
RTN_UNICAST = 1
IFF_UP = 0x1

class NetdevError(DpfreezeError):
    """A netdev could not be read or re-configured; the message names the device."""

@dataclass(frozen=True)
class Address:
    family: int  # socket.AF_INET / AF_INET6
    address: str
    prefixlen: int

    def __str__(self) -> str:
        return f"{self.address}/{self.prefixlen}"

@dataclass(frozen=True)
class Route:
    family: int
    dst: str | None  # None = default route
    dst_len: int
    gateway: str | None = None
    table: int = 254
    priority: int | None = None
    scope: int = 0
    proto: int = 3  # RTPROT_BOOT, what `ip route add` uses

    def __str__(self) -> str:
        dst = f"{self.dst}/{self.dst_len}" if self.dst else "default"
        via = f" via {self.gateway}" if self.gateway else ""
        metric = f" metric {self.priority}" if self.priority is not None else ""
        table = f" table {self.table}" if self.table != 254 else ""
        return f"{dst}{via}{metric}{table}"

@dataclass(frozen=True)
class NetdevConfig:
    """What `apply` re-creates on a netdev of this name."""

    name: str
    mac: str
    mtu: int
    up: bool
    addresses: tuple[Address, ...] = ()
    routes: tuple[Route, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "mac": self.mac,
            "mtu": self.mtu,
            "up": self.up,
            "addresses": [[a.family, a.address, a.prefixlen] for a in self.addresses],
            "routes": [
                {"family": r.family, "dst": r.dst, "dst_len": r.dst_len, "gateway": r.gateway,
                 "table": r.table, "priority": r.priority, "scope": r.scope, "proto": r.proto}
                for r in self.routes
            ],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> NetdevConfig:
        return cls(
            name=str(d["name"]),
            mac=str(d["mac"]),
            mtu=int(d["mtu"]),
            up=bool(d["up"]),
            addresses=tuple(Address(int(f), str(a), int(p)) for f, a, p in d["addresses"]),
            routes=tuple(
                Route(int(r["family"]), r["dst"], int(r["dst_len"]), r["gateway"], int(r["table"]),
                      None if r["priority"] is None else int(r["priority"]), int(r["scope"]),
                      int(r["proto"]))
                for r in d["routes"]
            ),
        )

    def describe(self) -> str:
        state = "up" if self.up else "down"
        addrs = " ".join(map(str, self.addresses)) or "-"
        routes = "; ".join(map(str, self.routes)) or "-"
        return f"{self.name}: {self.mac} mtu {self.mtu} {state} addr {addrs} routes {routes}"

def _index(ipr: IPRoute, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise NetdevError(f"netdev {name!r} does not exist")
    return int(found[0])

def save(names: Iterable[str], netns: str | None = None) -> list[NetdevConfig]:
    """Read the configuration of each named netdev (blocking: call through trio.to_thread).  Over our own
    rtnetlink codec, not pyroute2: a freeze waits on this, and pyroute2's import alone cost it seconds."""
    return [_read_rtnl(n, netns) for n in names]


def _read_rtnl(name: str, netns: str | None) -> NetdevConfig:
    try:
        (payload,) = route.exchange(rtnl.link_request(1, name), netns=netns)
        link = rtnl.parse_link(payload)
        addrs = [a for p in route.exchange(rtnl.addr_dump_request(2), netns=netns)
                 if (a := rtnl.parse_addr(p))]
        routes = [rtnl.parse_route(p) for family in (socket.AF_INET, socket.AF_INET6)
                  for p in route.exchange(rtnl.route_dump_request(3, family), netns=netns)]
    except route.KernelError as exc:
        if exc.errno == errno.ENODEV:
            raise NetdevError(f"netdev {name!r} does not exist") from None
        raise NetdevError(f"netdev {name!r}: {exc}") from exc
    except (OSError, ValueError) as exc:  # a ValueError is a malformed reply
        raise NetdevError(f"netdev {name!r}: {exc}") from exc
    addresses = tuple(Address(a.family, a.address, a.prefixlen) for a in addrs
                      if a.index == link.index and a.scope != RT_SCOPE_LINK)
    kept = tuple(Route(r.family, r.dst, r.dst_len, r.gateway, r.table, r.priority, r.scope, r.proto)
                 for r in routes
                 if r.oif == link.index and r.proto != RTPROT_KERNEL and r.type == RTN_UNICAST
                 and r.table != RT_TABLE_LOCAL)
    return NetdevConfig(name, link.mac, link.mtu, bool(link.flags & IFF_UP), addresses, kept)


def apply(configs: Sequence[NetdevConfig], netns: str | None = None) -> list[str]:
    """Re-apply MAC, MTU, state, then missing addresses and routes; returns what was changed.

    Idempotent: applying a config twice changes nothing the second time.  Blocking.
    """
    from pyroute2.netlink.exceptions import NetlinkError

    done: list[str] = []
    with _ipr(netns) as ipr:
        for cfg in configs:
            try:
                done += _apply_one(ipr, cfg, netns)
            except NetlinkError as exc:
                raise NetdevError(f"netdev {cfg.name}: {exc}") from exc
    return done

def _apply_one(ipr: IPRoute, cfg: NetdevConfig, netns: str | None) -> list[str]:
    current = _read_rtnl(cfg.name, netns)
    index = _index(ipr, cfg.name)
    done: list[str] = []
    if current.mac.lower() != cfg.mac.lower():
        ipr.link("set", index=index, address=cfg.mac)
        done.append(f"{cfg.name}: mac {cfg.mac}")
    if current.mtu != cfg.mtu:
        ipr.link("set", index=index, mtu=cfg.mtu)
        done.append(f"{cfg.name}: mtu {cfg.mtu}")
    if current.up != cfg.up:
        ipr.link("set", index=index, state="up" if cfg.up else "down")
        done.append(f"{cfg.name}: {'up' if cfg.up else 'down'}")
    for a in cfg.addresses:
        if a not in current.addresses:
            ipr.addr("add", index=index, address=a.address, prefixlen=a.prefixlen, family=a.family)
            done.append(f"{cfg.name}: addr {a}")
    present = {_route_id(r) for r in current.routes}
    for r in cfg.routes:
        if _route_id(r) in present:
            continue
        spec: dict[str, Any] = {"oif": index, "family": r.family, "table": r.table, "proto": r.proto,
                                "scope": r.scope, "dst_len": r.dst_len}
        if r.dst:
            spec["dst"] = r.dst
        if r.gateway:
            spec["gateway"] = r.gateway
        if r.priority is not None:
            spec["priority"] = r.priority
        ipr.route("add", **spec)
        done.append(f"{cfg.name}: route {r}")
    return done

def _route_id(r: Route) -> tuple[object, ...]:
    return (r.family, r.dst, r.dst_len, r.gateway, r.table, r.priority)

def _ipr(netns: str | None) -> IPRoute:
    """pyroute2 is imported here, when a netdev is read or written: importing it costs 2.2 s under qemu
    TCG, which every command importing the snapshot would pay, `preflight` too (ExecStartPre, no daemon)."""
    from pyroute2 import IPRoute

    return IPRoute(netns=netns) if netns else IPRoute()

__all__ = ["Address", "NetdevConfig", "NetdevError", "Route", "apply", "save"]
