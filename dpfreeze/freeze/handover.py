"""Own the upcalls while no ovs-vswitchd does; buffer misses; give them to the new daemon.

Why wait for the old daemon to be gone: the kernel lets anyone reprogram upcall pids, and a running
daemon does not notice (research/netlink.md §2), so taking them early would silently starve it.  Liveness
of a portid is read from /proc/net/netlink, which also maps every portid to its owning process.

Why recirc(0): re-executing a buffered miss with a lone recirc(0) action makes the kernel look the packet up
again and, still missing, upcall it to whoever owns the pids *now* (the new daemon) — exactly what the
daemon would have seen.  Only misses with recirc_id 0 qualify: others were produced mid-pipeline by the old
daemon's flows.
"""

from __future__ import annotations

import logging
import os
import struct
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from dpfreeze.freeze.pin import PinSet
from dpfreeze.log import Profile, kv
from dpfreeze.ovs.portids import SocketQueue, live_portids, socket_queues, upcall_pids
from dpif.model import (
    Datapath,
    DatapathInfo,
    DpFeature,
    ExecuteRequest,
    Resync,
    Upcall,
    UpcallKind,
    UpcallReceiver,
    Vport,
)
from dpif.netlink.actions import RECIRC as ACTION_RECIRC
from dpif.netlink.flowkey import RECIRC_ID as KEY_RECIRC_ID
from dpif.netlink.wire import WireError, attr, iter_attrs, u32

LOG = logging.getLogger(__name__)

RECIRC0_ACTIONS = attr(ACTION_RECIRC, struct.pack("=I", 0))
REPLAY_CHUNK = 32  # misses re-injected at a time (an upcall of a small packet takes about 1.5 KB of queue)
REPLAY_QUEUE_BYTES = 64 << 10  # unread bytes on the new daemon's upcall sockets before the next chunk
REPLAY_DRAIN_TIMEOUT = 2.0


# --- the miss buffer -----------------------------------------------------------------------------


@dataclass
class MissBuffer:
    """Bounded FIFO of MISS upcalls (packets and bytes); overflow is counted, never silent."""

    max_packets: int = 10000
    max_bytes: int = 16 << 20
    buffered: deque[Upcall] = field(default_factory=deque)
    bytes: int = 0
    accepted: int = 0
    overflow_packets: int = 0
    overflow_bytes: int = 0

    def add(self, upcall: Upcall) -> bool:
        size = len(upcall.packet)
        if len(self.buffered) >= self.max_packets or self.bytes + size > self.max_bytes:
            self.overflow_packets += 1
            self.overflow_bytes += size
            return False
        self.buffered.append(upcall)
        self.bytes += size
        self.accepted += 1
        return True

    def drain(self) -> list[Upcall]:
        out = list(self.buffered)
        self.buffered.clear()
        self.bytes = 0
        return out


def recirc_id(key: bytes) -> int:
    try:
        for t, v in iter_attrs(key):
            if t == KEY_RECIRC_ID:
                return u32(v)
    except WireError:
        return -1
    return 0


def replay_request(upcall: Upcall) -> ExecuteRequest:
    return ExecuteRequest(
        packet=upcall.packet, key=upcall.key, actions=RECIRC0_ACTIONS, mru=upcall.mru, hash=upcall.hash
    )


@dataclass
class HandoverStats:
    mode: str = ""
    taken_over: bool = False
    misses: int = 0
    action_upcalls: int = 0
    replayed: int = 0
    replay_failed: int = 0
    not_replayable: int = 0  # recirc_id != 0
    gave_back: bool = False
    new_owner_pids: list[int] = field(default_factory=list)
    switched_to_per_vport: bool = False  # the new daemon predates per-CPU dispatch (see `new_owner`)
    replay_waits: int = 0  # polls spent waiting for the new daemon to read what was replayed
    new_owner_drops: int = 0  # upcalls the new daemon's sockets dropped during the replay (should stay 0)
    held_s: float = 0.0  # from the take-over to the end of the replay: the longest a buffered miss waited

    def as_dict(self, buffer: MissBuffer) -> dict[str, object]:
        return {
            **vars(self),
            "buffered": len(buffer.buffered),
            "buffered_bytes": buffer.bytes,
            "overflow_packets": buffer.overflow_packets,
            "overflow_bytes": buffer.overflow_bytes,
        }


class Handover:
    """Upcall takeover for one datapath, per-CPU or per-vport dispatch."""

    def __init__(
        self,
        dp: Datapath,
        pins: PinSet,
        buffer: MissBuffer | None = None,
        *,
        poll_interval: float = 0.02,
        proc: Path = Path("/proc"),
    ) -> None:
        self.dp = dp
        self.pins = pins
        self.buffer = buffer or MissBuffer()
        self.poll_interval = poll_interval
        self.proc = proc
        self.ours: tuple[int, ...] = ()
        self.stats = HandoverStats()
        # Set by whoever is about to stop the old daemon: take the upcalls now rather than after its
        # sockets die, so the misses of its exit (about 150 ms in the VM) are buffered, not lost.
        self.take_now = trio.Event()
        self.taken = trio.Event()  # set at the first take (`stats.taken_over`), for whoever waits on it
        self.watch_owner = True  # False: held ready by the crash guard, it takes when told and only then
        self.handing_over = False  # from the flow-restore-wait clear on, the new daemon's pids are final
        self.receiver: UpcallReceiver | None = None
        self.before: frozenset[int] = frozenset()  # every upcall pid at the first take: the old daemon's
        self.consumed = 0  # items of the receiver's stream handled by `receive`
        self.taken_at = 0.0  # time.monotonic() of the take-over (the start of `held_s`)
        self.profile = Profile()  # the service's, where it has one: the replay's phases

    async def current_pids(self) -> tuple[DatapathInfo, list[Vport], tuple[int, ...]]:
        info = await self.dp.info()
        vports = await self.dp.ports()
        return info, vports, upcall_pids(info, vports)

    async def pids_now(self) -> tuple[int, ...]:
        """The portids misses go to now, in one request where the dispatch is per-CPU (no vport dump)."""
        info = await self.dp.info()
        return info.per_cpu_pids if info.per_cpu_dispatch else upcall_pids(info, await self.dp.ports())

    async def owner_gone(self) -> bool:
        """No live socket other than ours holds any current upcall pid (0 counts as nobody)."""
        pids = await self.pids_now()
        live = live_portids(self.proc)
        return not any(p and p in live and p not in self.ours for p in pids)

    async def wait_owner_gone(self) -> None:
        """Until the old owner is gone, or `take_now` says it is about to go (alone, if not `watch_owner`)."""
        if not self.watch_owner:
            await self.take_now.wait()
        while not self.take_now.is_set() and not await self.owner_gone():
            with trio.move_on_after(self.poll_interval):
                await self.take_now.wait()

    async def keep(self) -> None:
        """Re-take pids that point nowhere (0 or dead) until the hand-over: a per-vport daemon resets its
        vports' pids to 0 as it exits, after an early take.  A new per-vport daemon gets its mode at once."""
        while not self.handing_over:
            await trio.sleep(self.poll_interval)
            if self.handing_over:
                return
            info, vports, pids = await self.current_pids()
            if await self.adopt_per_vport_daemon(info, vports):
                continue
            live = live_portids(self.proc)
            if any(p not in self.ours and (not p or p not in live) for p in pids):
                LOG.info(kv("handover.retake", pids=",".join(map(str, pids))))
                await self.take(self.ours)

    async def take(self, portids: Sequence[int], info: DatapathInfo | None = None) -> None:
        """Point every upcall at our sockets, per-CPU wherever the kernel has it, keeping every other feature.

        Why per-CPU even on a per-vport datapath (one left by OVS < 2.16): the next daemon, if it uses
        per-CPU dispatch, first sets the flag and only later its pids, and in between the kernel sends misses
        to whatever per-CPU pids the datapath last had (a daemon's of long ago, dead): 7 new flows were lost
        that way at the start of 3.1 after 2.15 (kernel 6.1).  Ours are alive until the hand-over."""
        self.ours = tuple(portids)
        info = info or await self.dp.info()
        n = max(len(info.per_cpu_pids), os.cpu_count() or 1)
        pids = [self.ours[i % len(self.ours)] for i in range(n)]
        if info.per_cpu_dispatch:
            self.stats.mode = "per-cpu"
            await self.dp.set_features(info.features, pids)
        else:
            try:
                await self.dp.set_features(info.features | DpFeature.DISPATCH_UPCALL_PER_CPU, pids)
                self.stats.mode = "per-cpu (the datapath was per-vport)"
            except OSError as exc:  # a kernel before 5.14: per-vport it stays
                LOG.info(kv("handover.per_cpu_refused", error=str(exc)))
                self.stats.mode = "per-vport"
                for v in await self.dp.ports():
                    await self.dp.port_set_upcall_pids(v.port_no, self.ours)
        if not self.stats.taken_over:
            self.taken_at = time.monotonic()
        self.stats.taken_over = True
        self.taken.set()
        LOG.info(kv("handover.taken", mode=self.stats.mode, pids=",".join(map(str, self.ours))))

    async def receive(self, receiver: UpcallReceiver) -> None:
        async for up in receiver:
            self.consumed += 1
            self.handle(up)

    def handle(self, up: Upcall | Resync) -> None:
        """One upcall of ours: a miss is buffered for the replay."""
        if isinstance(up, Resync):
            LOG.warning(kv("handover.upcalls_lost", reason=up.reason, dropped=up.dropped))
            self.buffer.overflow_packets += up.dropped or 0
        elif up.kind is UpcallKind.MISS:
            self.stats.misses += 1
            self.buffer.add(up)
        else:
            self.stats.action_upcalls += 1  # the flow already forwarded it: never replay

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open sockets, wait for the old owner to go, take over, then buffer until cancelled."""
        async with self.dp.upcalls(1) as receiver, trio.open_nursery() as nursery:
            self.receiver = receiver
            self.ours = tuple(receiver.portids)
            nursery.start_soon(self.receive, receiver)
            # Armed by the crash guard, the vports are read while the daemon lives: at its death the take
            # is two requests, and every round trip before it cost misses (0.5 s of them under TCG).
            vports = [] if self.watch_owner else await self.dp.ports()
            task_status.started()
            await self.wait_owner_gone()
            info = await self.dp.info()
            if self.watch_owner:
                vports = await self.dp.ports()
            self.before = frozenset([*info.per_cpu_pids, *(p for v in vports for p in v.upcall_pids)])
            await self.take(receiver.portids, info)
            await self.keep()

    async def new_owner(self) -> bool:
        """True once every current upcall pid is non-zero and none is ours: the new daemon took them.

        A daemon that predates per-CPU dispatch (OVS < 2.16: a downgrade) keeps the datapath's per-CPU flag,
        leaves the per-CPU pids alone and puts its own on every vport; the kernel would go on sending every
        miss to us, and to nobody once we go (stock loses every new flow there, for good).  That daemon's
        mode is per-vport, so the datapath is switched to it."""
        info, vports, pids = await self.current_pids()
        if await self.adopt_per_vport_daemon(info, vports):
            info, vports, pids = await self.current_pids()
        if pids and all(p and p not in self.ours for p in pids):
            self.stats.new_owner_pids = sorted(set(pids))
            return True
        return False

    async def adopt_per_vport_daemon(self, info: DatapathInfo, vports: Sequence[Vport]) -> bool:
        """Switch the datapath to per-vport dispatch if a new per-vport daemon runs (see `new_owner`), as
        soon as it has put its pids on every vport: its misses reach it from then on, not our buffer,
        where an ARP or ND request waits out its requester's 1 s retry (a downgrade took 17 s from the new
        daemon's start to its thaw under TCG)."""
        if not (info.per_cpu_dispatch and self.per_vport_daemon(vports)):
            return False
        await self.dp.set_features(info.features & ~DpFeature.DISPATCH_UPCALL_PER_CPU)
        self.stats.switched_to_per_vport = True
        LOG.warning(kv("handover.dispatch_switched", to="per-vport",
                       why="the new daemon set per-vport pids and left the per-CPU ones"))
        return True

    def per_vport_daemon(self, vports: Sequence[Vport]) -> bool:
        """Every vport upcalls to a live socket that is neither ours nor one the old daemon had."""
        live = live_portids(self.proc)
        pids = [p for v in vports for p in v.upcall_pids]
        return bool(vports) and all(p and p not in self.ours and p not in self.before and p in live
                                    for p in pids)

    def old_owner_alive(self) -> bool:
        """Whether a socket the snapshot's upcall pids name still lives: the old daemon was never restarted
        (an upgrade whose command died before the stop), so no new owner will come; `give_back` returns
        the upcalls to exactly those pids."""
        snap = self.pins.datapath
        pids = [*snap.per_cpu_pids, *(p for v in self.pins.vports for p in v.upcall_pids)]
        live = live_portids(self.proc)
        return any(p and p in live and p not in self.ours for p in pids)

    async def wait_new_owner(self) -> None:
        while not await self.new_owner():
            await trio.sleep(self.poll_interval)

    async def settle(self, timeout: float = 2.0) -> None:
        """Take in every upcall our sockets hold.  Under load the reader lags the kernel by a second or
        more, and what is still queued when the sockets close is lost without the kernel counting it: that
        was the last second of misses before the new daemon took the pids (up to 89 new flows per upgrade
        in the VM)."""
        if self.receiver is None:
            return
        await self.receiver.flush()
        with trio.move_on_after(timeout):
            while self.consumed < self.receiver.delivered:
                await trio.sleep(0)

    async def replay(self) -> None:
        """Re-inject the buffer in arrival order, batched: hundreds of misses reach the new daemon in one
        round trip instead of one each (seconds under TCG).  Called once the new daemon owns the pids, so
        after `settle` nothing more comes to us (a straggler in flight is taken by a second pass)."""
        for n in (1, 2):
            with self.profile.span(f"replay.settle.{n}"):
                await self.settle()
            with self.profile.span(f"replay.send.{n}"):
                await self._replay_buffer()
        if self.taken_at:
            self.stats.held_s = round(time.monotonic() - self.taken_at, 3)

    async def _replay_buffer(self) -> None:
        ups = self.buffer.drain()
        replayable = [up for up in ups if recirc_id(up.key) == 0]
        self.stats.not_replayable += len(ups) - len(replayable)
        drops = self._new_owner_queue().drops
        for i in range(0, len(replayable), REPLAY_CHUNK):
            await self._until_new_owner_drained()
            chunk = replayable[i:i + REPLAY_CHUNK]
            for result in await self.dp.execute_many([replay_request(up) for up in chunk]):
                if result is None:
                    self.stats.replayed += 1
                else:
                    self.stats.replay_failed += 1
                    LOG.warning(kv("handover.replay_failed", error=str(result)))
        await self._until_new_owner_drained()
        self.stats.new_owner_drops += self._new_owner_queue().drops - drops

    def _new_owner_queue(self) -> SocketQueue:
        """The new daemon's upcall sockets together: bytes unread, packets dropped."""
        queues = [q for p, q in socket_queues(self.proc).items() if p in self.stats.new_owner_pids]
        return SocketQueue(sum(q.rmem for q in queues), sum(q.drops for q in queues))

    async def _until_new_owner_drained(self) -> None:
        """Backpressure on the replay: the new daemon's upcall sockets hold at most REPLAY_QUEUE_BYTES unread.

        Why: every buffered miss goes back to the kernel at once otherwise, and the kernel queues the upcalls
        on the new daemon's sockets faster than it reads them.  A daemon in per-vport mode (one socket per
        port) overflowed with thousands of misses queued over a 90 s downgrade, and dropped 2 862 of them
        (kernel 6.1, OVS 2.15, TCG).  Bounded: after REPLAY_DRAIN_TIMEOUT the replay goes on regardless."""
        with trio.move_on_after(REPLAY_DRAIN_TIMEOUT):
            while True:
                if self._new_owner_queue().rmem <= REPLAY_QUEUE_BYTES:
                    return
                self.stats.replay_waits += 1
                await trio.sleep(self.poll_interval)

    async def give_back(self) -> None:
        """If the pids are still ours (no new daemon took them), restore the snapshot's pids."""
        if not self.stats.taken_over:
            return
        info, vports, pids = await self.current_pids()
        if not any(p in self.ours for p in pids):
            return
        snap = self.pins.datapath
        if snap.per_cpu_dispatch:
            await self.dp.set_features(info.features, snap.per_cpu_pids or [0])
        else:
            if info.per_cpu_dispatch:  # ours (see `take`): the datapath goes back to per-vport dispatch
                await self.dp.set_features(info.features & ~DpFeature.DISPATCH_UPCALL_PER_CPU)
            before = {v.port_no: v.upcall_pids for v in self.pins.vports}
            for v in vports:
                await self.dp.port_set_upcall_pids(v.port_no, before.get(v.port_no) or (0,))
        self.stats.gave_back = True
        LOG.info(kv("handover.gave_back", mode=self.stats.mode))
