"""The userspace provider: `dpif.model.Datapath` for a `netdev@` datapath, through ovs-vswitchd's unixctl.

The userspace datapath lives inside ovs-vswitchd: its flows, ports and upcalls exist only while that
process runs, and the only way in is the daemon's `dpctl/*` commands (text, as ovs-appctl prints it).
So this provider reads and writes flows in the ovs-dpctl syntax (`dpif.netlink.flowtext` turns it into
the same raw attribute payloads the kernel provider carries), and says `lives_in_daemon`: there are no
notifications, no upcall sockets, no packet execution and no meters to reach from outside (those raise
`Unsupported`, as lib/dpif.h providers answer EOPNOTSUPP).

The daemon's control socket is looked up on every call (`locate`), so one handle follows the datapath
across a restart: what a restore into the new daemon needs.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from dpif.model import (
    DatapathInfo,
    DpStats,
    Event,
    ExecuteRequest,
    Flow,
    HeldUpcalls,
    MegaflowStats,
    Meter,
    MeterStats,
    MetersUnsupported,
    Resync,
    Unsupported,
    UpcallReceiver,
    Vport,
    VportType,
    monotonic_ms,
)
from dpif.netlink import actions as act
from dpif.netlink import flowkey, flowtext
from dpif.unixctl import UnixctlError, call, connect

PREFIX = "netdev@"
# `ovs-appctl dpctl/show` type names -> vport types (a userspace "internal" port is a tap device)
TYPE_OF = {"tap": VportType.INTERNAL, "internal": VportType.INTERNAL, "gre": VportType.GRE,
           "vxlan": VportType.VXLAN, "geneve": VportType.GENEVE}
_PORT_RE = re.compile(r"\s+port (\d+): (\S+)(?: \(([^:)]+)(?::[^)]*)?\))?$")
PUT_BATCH = 1024  # requests in flight per connection


def is_netdev_name(name: str) -> bool:
    return name.startswith(PREFIX)


@dataclass(frozen=True)
class Show:
    """One datapath's block of `dpctl/show`."""

    info: DatapathInfo
    ports: tuple[Vport, ...]


def parse_show(text: str) -> dict[str, Show]:
    """`dpctl/show` (all datapaths of the daemon) -> {"netdev@NAME": Show}."""
    out: dict[str, Show] = {}
    name = ""
    stats: dict[str, int] = {}
    masks: MegaflowStats | None = None
    ports: list[Vport] = []

    def close() -> None:
        if name:
            dp_stats = DpStats(stats.get("hit", 0), stats.get("missed", 0), stats.get("lost", 0),
                               stats.get("flows", 0))
            info = DatapathInfo(name, 0, stats=dp_stats, megaflow_stats=masks)
            out[name] = Show(info, tuple(ports))

    for line in text.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            close()
            name, stats, masks, ports = line[:-1], {}, None, []
        elif (m := _PORT_RE.match(line)) is not None:
            tname = m.group(3) or "system"
            ports.append(Vport(int(m.group(1)), TYPE_OF.get(tname, VportType.NETDEV), m.group(2)))
        elif line.startswith("  lookups:"):
            stats.update((k, int(v)) for k, v in re.findall(r"(\w+):(\d+)", line))
        elif line.startswith("  flows:"):
            stats["flows"] = int(line.split(":", 1)[1])
        elif line.startswith("  masks:"):
            f = dict(re.findall(r"(\w+):(\d+)", line))
            masks = MegaflowStats(int(f.get("hit", 0)), int(f.get("total", 0)))
    close()
    return out


def parse_dump(text: str, now_ms: int) -> list[Flow]:
    """`dpctl/dump-flows -m --no-names` -> flows, once each (a flow put on every PMD is dumped by each)."""
    seen: set[bytes] = set()
    out: list[Flow] = []
    for line in text.splitlines():
        if not line.startswith(("ufid:", "recirc_id", "skb_priority")) or ", actions:" not in line:
            continue  # "flow-dump from pmd on cpu core: N" and the like
        line = line.split(", dp-extra-info:", 1)[0]
        parsed = flowtext.parse_flow(line)
        ident = parsed.ufid or b"key:" + parsed.key
        if ident in seen:
            continue
        seen.add(ident)
        stats = flowtext.parse_stats(line, now_ms)
        out.append(Flow(parsed.key, parsed.mask, parsed.actions, parsed.ufid, stats))
    return out


def flow_args(flow: Flow) -> list[str]:
    """A flow as `dpctl/add-flow` takes it: ["ufid:U,KEY", "ACTIONS"] (ports as numbers).

    The key is written verbose, every attribute with its mask: the short form leaves out wildcarded
    attributes the datapath requires (an ARP flow without its all-wildcard `arp()` is refused, EINVAL)."""
    key = flowkey.format_key(flow.key, flow.mask, verbose=True)
    if flow.ufid is not None:
        key = f"{flowkey.ufid_text(flow.ufid)},{key}"
    return [key, act.format_actions(flow.actions)]


class NetdevDatapath:
    """A userspace datapath, e.g. "netdev@ovs-netdev", reached through `locate()`'s control socket."""

    lives_in_daemon = True

    def __init__(self, name: str, locate: Callable[[], Path], *, timeout: float = 30.0) -> None:
        if not is_netdev_name(name):
            raise ValueError(f"not a userspace datapath name: {name!r}")
        self.name = name
        self.locate = locate
        self.timeout = timeout

    async def _call(self, method: str, *params: str) -> str:
        return await call(self.locate(), method, *params, timeout=self.timeout)

    async def _show(self) -> Show:
        shown = parse_show(await self._call("dpctl/show", self.name)).get(self.name)
        if shown is None:
            raise NoSuchNetdevDatapath(self.name)
        return shown

    async def info(self) -> DatapathInfo:
        return (await self._show()).info

    async def set_features(self, features: int, per_cpu_pids: Sequence[int] | None = None) -> DatapathInfo:
        raise Unsupported("upcall dispatch of a userspace datapath")

    async def ports(self) -> list[Vport]:
        return list((await self._show()).ports)

    async def port_add(self, name: str, type: VportType, port_no: int | None = None,
                       upcall_pids: Sequence[int] = (0,), options: bytes = b"",
                       ifindex: int | None = None) -> Vport:
        raise Unsupported("adding ports to a userspace datapath (ovs-vswitchd adds its bridges' ports)")

    async def port_set_upcall_pids(self, port_no: int, upcall_pids: Sequence[int]) -> Vport:
        raise Unsupported("upcall pids of a userspace datapath")

    async def port_del(self, port_no: int) -> None:
        raise Unsupported("deleting ports of a userspace datapath")

    async def flows(self) -> AsyncIterator[Flow]:
        async for batch in self.flow_batches():
            for flow in batch:
                yield flow

    async def flow_batches(self) -> AsyncIterator[list[Flow]]:
        """One batch: the daemon answers the whole dump at once."""
        text = await self._call("dpctl/dump-flows", "-m", "--no-names", self.name)
        yield list(parse_dump(text, monotonic_ms()))

    async def flow_get(self, *, ufid: bytes | None = None, key: bytes | None = None) -> Flow:
        async for flow in self.flows():
            if (ufid is not None and flow.ufid == ufid) or (ufid is None and flow.key == key):
                return flow
        raise FileNotFoundError(2, "no such flow")

    async def flow_put(self, flow: Flow, *, create: bool = True) -> None:
        result = (await self.flow_put_many([flow], create=create))[0]
        if result is not None:
            raise result

    async def flow_put_many(
        self, flows: Sequence[Flow], *, create: bool = True
    ) -> list[BaseException | None]:
        """Pipelined `dpctl/add-flow` (or mod-flow): one connection, replies read as they come."""
        method = "dpctl/add-flow" if create else "dpctl/mod-flow"
        results: list[BaseException | None] = []
        client = await connect(self.locate())
        try:
            for i in range(0, len(flows), PUT_BATCH):
                calls = [(method, [self.name, *flow_args(f)]) for f in flows[i : i + PUT_BATCH]]
                replies = await client.call_many(calls, timeout=self.timeout)
                results += [r if isinstance(r, UnixctlError) else None for r in replies]
        finally:
            await client.aclose()
        return results

    async def flow_del(self, *, ufid: bytes | None = None, key: bytes | None = None) -> Flow | None:
        try:
            flow = await self.flow_get(ufid=ufid, key=key)
        except FileNotFoundError:
            return None
        target = flowkey.ufid_text(flow.ufid) if flow.ufid is not None else flowkey.format_key(flow.key)
        await self._call("dpctl/del-flow", self.name, target)
        return flow

    async def flow_flush(self) -> None:
        await self._call("dpctl/del-flows", self.name)

    async def execute(self, request: ExecuteRequest) -> None:
        raise Unsupported("executing packets on a userspace datapath")

    async def execute_many(self, requests: Sequence[ExecuteRequest]) -> list[BaseException | None]:
        raise Unsupported("executing packets on a userspace datapath")

    async def meter_get(self, meter_id: int) -> MeterStats:
        raise MetersUnsupported("userspace datapath meters are not reachable through dpctl")

    async def meter_set(self, meter: Meter) -> None:
        raise MetersUnsupported("userspace datapath meters are not reachable through dpctl")

    def events(self) -> AbstractAsyncContextManager[AsyncIterator[Event | Resync]]:
        raise Unsupported("notifications of a userspace datapath")

    def upcalls(self, n_sockets: int = 1) -> AbstractAsyncContextManager[UpcallReceiver]:
        raise Unsupported("upcalls of a userspace datapath (they never leave ovs-vswitchd)")

    def hold_upcalls(self, pid: int, portids: Collection[int]) -> AbstractAsyncContextManager[HeldUpcalls]:
        raise Unsupported("upcalls of a userspace datapath (they never leave ovs-vswitchd)")

    async def aclose(self) -> None:
        """Nothing held between calls."""


class NoSuchNetdevDatapath(FileNotFoundError):
    def __init__(self, name: str) -> None:
        super().__init__(2, f"ovs-vswitchd has no datapath {name!r}")

    def __str__(self) -> str:
        return str(self.strerror)


async def list_netdev_datapaths(locate: Callable[[], Path]) -> list[str]:
    """The daemon's userspace datapaths ("netdev@NAME"), as `dpctl/dump-dps` lists them."""
    text = await call(locate(), "dpctl/dump-dps")
    return [line.strip() for line in text.splitlines() if is_netdev_name(line.strip())]


@asynccontextmanager
async def open_netdev_datapath(name: str, locate: Callable[[], Path]) -> AsyncIterator[NetdevDatapath]:
    """The named userspace datapath (NoSuchNetdevDatapath if the daemon has none by that name)."""
    dp = NetdevDatapath(name, locate)
    await dp.info()
    yield dp
