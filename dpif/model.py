"""The datapath interface: typed records and the provider protocol.

Policy code (dpfreeze) holds a `Datapath` and never asks which provider it is: the netlink provider
speaks generic netlink to openvswitch.ko, the netdev provider speaks unixctl to ovs-vswitchd.

Flow keys, masks and actions are carried as *raw netlink attribute payloads* (the bytes of the
OVS_FLOW_ATTR_KEY / MASK / ACTIONS nests, without their own attribute header): that is what lets a
snapshot re-install a flow verbatim.  `dpif.netlink.flowkey` / `dpif.netlink.actions` decode them to
typed values and to the ovs-dpctl text syntax.
"""

from __future__ import annotations

import enum
import errno
import time
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import NamedTuple, Protocol


class VportType(enum.IntEnum):
    UNSPEC = 0
    NETDEV = 1
    INTERNAL = 2
    GRE = 3
    VXLAN = 4
    GENEVE = 5


class DpFeature(enum.IntFlag):
    UNALIGNED = 1 << 0
    VPORT_PIDS = 1 << 1
    TC_RECIRC_SHARING = 1 << 2
    DISPATCH_UPCALL_PER_CPU = 1 << 3


@dataclass(frozen=True)
class DpStats:
    hit: int = 0
    missed: int = 0
    lost: int = 0
    flows: int = 0


@dataclass(frozen=True)
class MegaflowStats:
    mask_hit: int = 0
    masks: int = 0
    cache_hit: int = 0


@dataclass(frozen=True)
class DatapathInfo:
    """One datapath as the kernel reports it (OVS_DP_CMD_GET)."""

    name: str
    ifindex: int
    features: int = 0
    stats: DpStats = DpStats()
    megaflow_stats: MegaflowStats | None = None
    masks_cache_size: int | None = None
    per_cpu_pids: tuple[int, ...] = ()

    @property
    def per_cpu_dispatch(self) -> bool:
        return bool(self.features & DpFeature.DISPATCH_UPCALL_PER_CPU)


@dataclass(frozen=True)
class VportStats:
    rx_packets: int = 0
    tx_packets: int = 0
    rx_bytes: int = 0
    tx_bytes: int = 0
    rx_errors: int = 0
    tx_errors: int = 0
    rx_dropped: int = 0
    tx_dropped: int = 0


@dataclass(frozen=True)
class Vport:
    """One datapath port (OVS_VPORT_CMD_GET)."""

    port_no: int
    type: VportType
    name: str
    dp_ifindex: int = 0
    upcall_pids: tuple[int, ...] = ()
    ifindex: int | None = None
    netnsid: int | None = None
    options: bytes = b""  # raw OVS_VPORT_ATTR_OPTIONS payload (legacy tunnel vports)
    stats: VportStats | None = None
    upcall_success: int | None = None
    upcall_fail: int | None = None


def monotonic_ms() -> int:
    """The clock `used_ms` is on: CLOCK_MONOTONIC in milliseconds (the kernel's, and OVS's time_msec())."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1_000_000


class FlowStats(NamedTuple):
    packets: int = 0
    bytes: int = 0
    used_ms: int = 0  # kernel monotonic milliseconds; 0 = never used
    tcp_flags: int = 0


class Flow(NamedTuple):
    """One datapath flow, key/mask/actions as raw attribute payloads (re-installable verbatim).

    `actions is None` means the kernel left them out of a dump; `mask is None` means exact match.  A named
    tuple: a freeze holds every flow of the datapath, and the dump decoder builds them in C (`_dump.c`)
    as tuples; a frozen dataclass's __init__ alone was 1.6 us a flow natively, a third of a snapshot.
    """

    key: bytes
    mask: bytes | None
    actions: bytes | None
    ufid: bytes | None = None
    stats: FlowStats = FlowStats()


class MeterBandType(enum.IntEnum):
    DROP = 1  # the only band type openvswitch.ko implements


@dataclass(frozen=True)
class MeterBand:
    """Packets beyond `rate` (kbit/s or packets/s, as the meter says) once a `burst`-sized bucket is empty
    get the band's treatment."""

    type: MeterBandType
    rate: int
    burst: int


@dataclass(frozen=True)
class Meter:
    """A kernel meter's configuration, as OVS_METER_CMD_SET takes it (a SET replaces the whole meter)."""

    id: int
    kbps: bool
    bands: tuple[MeterBand, ...]


@dataclass(frozen=True)
class MeterBandStats:
    packets: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class MeterStats:
    """What OVS_METER_CMD_GET returns: counters, one per band.  Never the configuration: the kernel writes
    no unit, rate or burst back (meter.c), so a meter cannot be read back to be re-created."""

    id: int
    packets: int = 0
    bytes: int = 0
    used_ms: int = 0  # kernel monotonic milliseconds of the last packet (or of the SET)
    bands: tuple[MeterBandStats, ...] = ()  # per band: what exceeded it


class Unsupported(OSError):
    """The provider cannot do this at all (lib/dpif.h providers answer EOPNOTSUPP); says what."""

    def __init__(self, what: str) -> None:
        super().__init__(errno.EOPNOTSUPP, f"not supported: {what}")

    def __str__(self) -> str:
        return str(self.strerror)


class NoSuchDatapath(OSError):
    """The kernel has no datapath of that name."""

    def __init__(self, name: str) -> None:
        super().__init__(errno.ENODEV, f"datapath {name!r} does not exist")

    def __str__(self) -> str:
        return str(self.strerror)


class MetersUnsupported(OSError):
    """The datapath's meters cannot be reached: the kernel has no ovs_meter family (openvswitch.ko older
    than Linux 4.15), or the datapath lives in ovs-vswitchd."""

    def __init__(self, why: str = "the kernel has no ovs_meter family (meters need Linux 4.15)") -> None:
        super().__init__(errno.EOPNOTSUPP, why)

    def __str__(self) -> str:
        return str(self.strerror)


class UpcallKind(enum.IntEnum):
    MISS = 1
    ACTION = 2


@dataclass(frozen=True)
class Upcall:
    """A packet the kernel sent up (OVS_PACKET_CMD_MISS / ACTION)."""

    kind: UpcallKind
    dp_ifindex: int
    packet: bytes
    key: bytes
    userdata: bytes | None = None
    actions: bytes | None = None
    egress_tun_key: bytes | None = None
    mru: int | None = None
    hash: int | None = None
    orig_len: int | None = None
    received_ns: int = 0  # time.monotonic_ns() when read from the socket


class EventKind(enum.Enum):
    DATAPATH = "datapath"
    VPORT = "vport"
    FLOW = "flow"


class EventCmd(enum.IntEnum):
    NEW = 1
    DEL = 2
    SET = 4


@dataclass(frozen=True)
class Event:
    """A multicast notification.  `sender_portid` is the requester's portid (0 for the kernel itself)."""

    kind: EventKind
    cmd: EventCmd
    dp_ifindex: int
    record: DatapathInfo | Vport | Flow
    sender_portid: int = 0
    seq: int = 0


@dataclass(frozen=True)
class Resync:
    """Notifications were lost (socket overrun): the consumer must re-read the datapath."""

    reason: str
    dropped: int | None = None


@dataclass(frozen=True)
class ExecuteRequest:
    """A packet to run through the datapath (OVS_PACKET_CMD_EXECUTE)."""

    packet: bytes
    key: bytes
    actions: bytes
    mru: int | None = None
    hash: int | None = None
    upcall_pid: int | None = None


class Datapath(Protocol):
    """One OVS datapath, whichever provider implements it (cf. OVS lib/dpif.h).

    `lives_in_daemon` is lib/dpif-provider.h's `cleanup_required`: the datapath is ovs-vswitchd's own
    (userspace) and ends with it, so nothing can be kept across a restart, only restored into the new
    daemon; and it has no notifications, upcall sockets or packet execution reachable from outside."""

    name: str
    lives_in_daemon: bool

    async def info(self) -> DatapathInfo: ...

    async def set_features(self, features: int, per_cpu_pids: Sequence[int] | None = None) -> DatapathInfo:
        """OVS_DP_CMD_SET that keeps every feature it is given (the kernel clears absent ones)."""
        ...

    async def ports(self) -> list[Vport]: ...

    async def port_add(
        self,
        name: str,
        type: VportType,
        port_no: int | None = None,
        upcall_pids: Sequence[int] = (0,),
        options: bytes = b"",
        ifindex: int | None = None,
    ) -> Vport: ...

    async def port_set_upcall_pids(self, port_no: int, upcall_pids: Sequence[int]) -> Vport: ...

    async def port_del(self, port_no: int) -> None: ...

    def flows(self) -> AsyncIterator[Flow]:
        """Full (never terse) dump; flows whose actions the kernel left out are re-fetched by UFID."""
        ...

    def flow_batches(self) -> AsyncIterator[list[Flow]]:
        """The same dump in batches, for readers of every flow (a snapshot of 200 000): the per-flow step
        of an async iteration was a visible part of their time."""
        ...

    async def flow_get(self, *, ufid: bytes | None = None, key: bytes | None = None) -> Flow: ...

    async def flow_put(self, flow: Flow, *, create: bool = True) -> None: ...

    async def flow_put_many(
        self, flows: Sequence[Flow], *, create: bool = True
    ) -> list[BaseException | None]:
        """Batched puts; one result per flow (None = ok)."""
        ...

    async def flow_del(self, *, ufid: bytes | None = None, key: bytes | None = None) -> Flow | None: ...

    async def flow_flush(self) -> None: ...

    async def execute(self, request: ExecuteRequest) -> None: ...

    async def execute_many(self, requests: Sequence[ExecuteRequest]) -> list[BaseException | None]:
        """Many packets at once (batched like flow_put_many): one result per request, None = done."""
        ...

    async def meter_get(self, meter_id: int) -> MeterStats:
        """Counters only (see MeterStats); KernelError ENOENT if there is no such meter, MetersUnsupported
        if the kernel has no meters at all."""
        ...

    async def meter_set(self, meter: Meter) -> None:
        """Create or replace the meter (MetersUnsupported if the kernel has no meters)."""
        ...

    def events(self) -> AbstractAsyncContextManager[AsyncIterator[Event | Resync]]:
        """Subscribe (before any dump you want to reconcile with) to datapath/vport/flow notifications."""
        ...

    def upcalls(self, n_sockets: int = 1) -> AbstractAsyncContextManager[UpcallReceiver]:
        """Open upcall sockets; the receiver tells their portids so they can be programmed as upcall pids."""
        ...

    def hold_upcalls(self, pid: int, portids: Collection[int]) -> AbstractAsyncContextManager[HeldUpcalls]:
        """Keep the sockets of process `pid` bound to `portids` (its upcall pids) open past its death,
        unread: what the kernel sends them once it is dead queues there instead of being dropped."""
        ...

    async def aclose(self) -> None: ...


class HeldUpcalls(Protocol):
    portids: frozenset[int]

    def read(self) -> list[Upcall | Resync]:
        """What the held sockets queued, without blocking.  Only once their owner is dead and the upcall
        pids are elsewhere: read while it lives, it would steal its upcalls."""
        ...


class UpcallReceiver(Protocol):
    portids: tuple[int, ...]
    delivered: int  # upcalls (and Resyncs) put into the stream so far

    def __aiter__(self) -> AsyncIterator[Upcall | Resync]: ...

    async def flush(self) -> None:
        """Move what the sockets hold right now into the stream (`delivered` counts it): upcalls still
        queued in a socket when it is closed are lost without the kernel counting them."""
        ...
