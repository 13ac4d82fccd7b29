"""Pin the datapath to its snapshot: whatever anyone deletes comes back, whatever appears is a suspect.

Why two detectors: ovs-vswitchd deletes flows one by one (DEL notifications, terse: only the UFID, hence
the UFID -> full flow map), but a flush (OVS_FLOW_CMD_DEL without key) sends no notification at all, so
the datapath's flow count is polled as well.  Why suspects: a dying or half-started daemon can install
wildcarded drop flows that black-hole new traffic (research/restart-measurements.md); while frozen, a flow
that appears and is still there after a grace period is reported and, when drop-only, removed.  The grace
lets a starting daemon's feature probes (flows it adds and deletes itself at once) come and go unreported
and untouched: removing one under it would make the daemon believe the datapath lacks the feature.

Why the old daemon is partly obeyed: between the freeze and its stop the old ovs-vswitchd still runs its
revalidators.  The idle flows it expires leave the pin set instead of coming back, and the forwarding
flows it adds for new connections join it, so that what is pinned stays what the daemon wanted.  Its
requests are recognised by the sender portid of the notification.  A flow that was still carrying traffic
is re-installed even when the old daemon deleted it: that is a teardown (a purge at exit, `exit
--cleanup`, OVS before 2.14), or a revalidation whose stale result its next pass corrects anyway.  And
once the daemon is about to be stopped (`stop_following`) nothing it does is followed.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import logging
import re
import struct
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

import trio

from dpfreeze.log import kv
from dpfreeze.ovs.portids import process_portids
from dpif.model import Datapath, DatapathInfo, Event, EventCmd, EventKind, Flow, Resync, Vport, VportType
from dpif.netlink.actions import RECIRC as ACTION_RECIRC
from dpif.netlink.flowkey import RECIRC_ID as KEY_RECIRC_ID
from dpif.netlink.wire import WireError, iter_attrs, u32

LOG = logging.getLogger(__name__)

SUSPECT_GRACE = 0.5  # seconds a flow nobody pinned may live before it is a suspect
IDLE_MS = 1000  # an old daemon's delete is followed only for a flow idle at least this long


@dataclass(frozen=True)
class PinSet:
    """What a freeze guards: the snapshot's datapath, vports and flows (the most recently used first), and
    what the snapshot could not read (its gaps: "openflow: ..." means no OpenFlow state to restore)."""

    datapath: DatapathInfo
    vports: tuple[Vport, ...]
    flows: tuple[Flow, ...]
    gaps: tuple[str, ...] = ()


@dataclass
class PinStats:
    reinstalled: int = 0
    reinstall_failed: int = 0
    vports_recreated: int = 0
    vport_failures: int = 0
    flushes_detected: int = 0
    deletes_accepted: int = 0  # by the old daemon, before it exited
    flows_adopted: int = 0  # added by the old daemon, before it exited
    suspects_removed: int = 0
    resyncs: int = 0
    suspects: dict[str, str] = field(default_factory=dict)  # flow id -> why (kept while the flow lives)

    def as_dict(self) -> dict[str, object]:
        return dict(vars(self))


def flow_id(flow: Flow) -> bytes:
    """How a flow is identified by the kernel: its UFID, else its key.  The two never meet: a UFID is at
    most 16 bytes, and every key the kernel reports is longer (it always includes priority, in_port,
    skb_mark, recirc_id, dp_hash and the conntrack fields).  No copy: at 200 000 flows without UFIDs, a
    prefixed key each was 36 MB of the service's peak."""
    return flow.ufid if flow.ufid is not None else flow.key


def flow_name(flow: Flow) -> str:
    """A short printable id: the UFID in hex, else a digest of the key."""
    if flow.ufid is not None:
        return flow.ufid.hex()
    return "key-sha1:" + hashlib.sha1(flow.key).hexdigest()[:16]


# Where a flow may recirculate: a non-zero recirc_id attribute (every OVS key has one, mostly 0) or a
# recirc action, as bytes; a search at C speed leaves only those to parse (at 200 000 flows, parsing each
# took the hand-over 40 s under TCG).  A match inside some other attribute is ruled out by the parse.
_MAY_RECIRCULATE = re.compile(
    re.escape(struct.pack("=HH", 8, KEY_RECIRC_ID)) + b"(?!\x00\x00\x00\x00)", re.DOTALL)
_RECIRC_ACTION = struct.pack("=HH", 8, ACTION_RECIRC)


def uses_recirculation(flow: Flow) -> bool:
    """True if the new daemon will delete this flow on its first dump (recirc_id != 0 or a recirc action)."""
    if not _MAY_RECIRCULATE.search(flow.key) and _RECIRC_ACTION not in (flow.actions or b""):
        return False
    try:
        for t, v in iter_attrs(flow.key):
            if t == KEY_RECIRC_ID and u32(v) != 0:
                return True
        return any(t == ACTION_RECIRC for t, _ in iter_attrs(flow.actions or b""))
    except WireError:
        return False


def is_drop_only(flow: Flow) -> bool:
    return flow.actions is not None and len(flow.actions) == 0


# A new daemon starts at a flow limit of min(other_config:flow-limit, 10 000): above it, its revalidators
# expire flows after 100 ms idle, above twice it they delete every flow at once (research/ovs-restart.md
# §1.4).  The flush repair re-installs no more than that: 200 000 re-installed flows took the thaw past
# its wait in the VM, only to be deleted by the new daemon's first dump.
HANDOVER_REPAIR_LIMIT = 10_000


def startup_flow_limit(configured: str | None) -> int:
    """The new daemon's first flow limit, from other_config:flow-limit as OVSDB holds it (None: unset)."""
    return min(int(configured), HANDOVER_REPAIR_LIMIT) if configured and configured.isdigit() \
        else HANDOVER_REPAIR_LIMIT


SENTINELS = 3  # pins looked up each poll of the hand-over: all gone is a flush, one gone is a delete


class Pinner:
    """Re-installs deleted snapshot flows and vports until cancelled.

    `frozen` selects the suspect policy (True: no one may legitimately add flows); `flush_seen` is set each
    time a flow-count drop was repaired, which the hand-over uses to detect the new daemon's flush.
    """

    def __init__(
        self, dp: Datapath, pins: PinSet, *, poll_interval: float = 0.02, remove_drop_suspects: bool = True
    ) -> None:
        self.dp = dp
        self.flows = {flow_id(f): f for f in pins.flows if f.actions is not None}
        self.vports = {v.port_no: v for v in pins.vports if v.port_no != 0}
        self.poll_interval = poll_interval
        self.remove_drop_suspects = remove_drop_suspects
        self.frozen = True
        self.repair_limit = HANDOVER_REPAIR_LIMIT  # the hand-over's: the new daemon's first flow limit
        self.new_vport_pids: tuple[int, ...] = (0,)
        self.old_daemons: frozenset[int] = frozenset()  # process ids whose flow changes are followed
        self._old_portids: set[int] = set()
        self._other_portids: set[int] = set()
        self._due: dict[bytes, tuple[float, Flow]] = {}  # flows nobody pinned: when to judge them
        self.broken: set[bytes] = set()
        self.stats = PinStats()
        self.flush_seen = trio.Event()
        self._repair_lock = trio.Lock()
        self._scope = trio.CancelScope()

    @property
    def expected(self) -> int:
        pinned = len(self.flows) - len(self.broken)
        return pinned if self.frozen else min(pinned, self.repair_limit)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Subscribe first, then reconcile (so nothing deleted in between is missed), then watch.  The
        reconcile dumps the datapath only if it holds fewer flows than the pins (as the watch's poll
        judges): a freeze's pins were dumped a moment ago, and a second dump of 200 000 flows is seconds."""
        with self._scope:
            async with self.dp.events() as events:
                if (await self.dp.info()).stats.flows < self.expected:
                    await self.reconcile()
                task_status.started()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._watch, events)
                    nursery.start_soon(self._poll_count)

    def release(self) -> None:
        """Stop pinning at once: after the new daemon's flush its revalidators own the flows."""
        self._scope.cancel()

    async def reconcile(self) -> int:
        """Re-install every snapshot flow missing from the datapath; the number re-installed."""
        async with self._repair_lock:
            info = await self.dp.info()
            if info.stats.flows == 0:
                missing = [f for k, f in self.flows.items() if k not in self.broken]
            else:
                present = {flow_id(f) async for f in self.dp.flows()}
                missing = [f for k, f in self.flows.items() if k not in present and k not in self.broken]
            if not self.frozen:  # the hand-over's flush repair: what the new daemon keeps, most recent first
                missing = missing[:self.repair_limit]
            return await self._put(missing)

    async def _put(self, flows: list[Flow]) -> int:
        if not flows:
            return 0
        done = 0
        for flow, result in zip(flows, await self.dp.flow_put_many(flows, create=True), strict=True):
            if result is None or (isinstance(result, OSError) and result.errno == errno.EEXIST):
                done += result is None
                continue
            self.broken.add(flow_id(flow))
            self.stats.reinstall_failed += 1
            LOG.warning(kv("pin.reinstall_failed", flow=flow_name(flow), error=str(result)))
        self.stats.reinstalled += done
        return done

    async def settle_flush(self) -> int | None:
        """The hand-over's flush wait is over: a flush repair under way finishes first (None: it ran, the
        flush was seen), else one last reconcile says what was missing (at 200 000 flows the repair
        outlasted the wait, and a second one behind it fought the new daemon's deletes for 44 s)."""
        async with self._repair_lock:
            if self.flush_seen.is_set():
                return None
        return await self.reconcile()

    async def _poll_count(self) -> None:
        while True:
            await trio.sleep(self.poll_interval)
            await self._judge_due_suspects()
            if not self.frozen and self.flush_seen.is_set():
                continue  # the hand-over repairs one flush: after it, the new daemon's deletes are its own
            info = await self.dp.info()
            flushed = info.stats.flows < self.expected or await self._sentinels_gone()
            if flushed and (n := await self.reconcile()):
                self.stats.flushes_detected += 1
                LOG.info(kv("pin.flush_repaired", seen=info.stats.flows, reinstalled=n))
                self.flush_seen.set()

    async def _sentinels_gone(self) -> bool:
        """At the hand-over, whether the new daemon flushed: none of the most recently used pins is left.
        Its handlers refill the table from its first upcalls within a poll, so the count alone can miss
        the flush (a CI run saw 4 pins back only at the wait's end).  While frozen nobody refills."""
        if self.frozen:
            return False
        pinned = (f for k, f in self.flows.items() if k not in self.broken)
        sentinels = list(itertools.islice(pinned, SENTINELS))  # not a pass over 200 000 pins every poll
        for flow in sentinels:
            try:
                await self.dp.flow_get(ufid=flow.ufid, key=None if flow.ufid else flow.key)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
                continue
            return False
        return bool(sentinels)

    async def _watch(self, events: AsyncIterator[Event | Resync]) -> None:
        async for ev in events:
            if isinstance(ev, Resync):
                self.stats.resyncs += 1
                await self.reconcile()
            elif ev.kind is EventKind.FLOW:
                assert isinstance(ev.record, Flow)
                await self._on_flow(ev.cmd, ev.record, ev.sender_portid)
            elif ev.kind is EventKind.VPORT and ev.cmd is EventCmd.DEL:
                assert isinstance(ev.record, Vport)
                await self._recreate_vport(ev.record.port_no)
            elif ev.kind is EventKind.DATAPATH and ev.cmd is EventCmd.DEL:
                LOG.error(kv("pin.datapath_deleted", name=self.dp.name))

    def stop_following(self) -> None:
        """The old daemon is about to be stopped: from now on, its deletes are undone like anyone's."""
        self.old_daemons = frozenset()

    def _from_old_daemon(self, portid: int) -> bool:
        """Whether a request came from the old daemon (each portid is looked up once)."""
        if not self.old_daemons or portid == 0 or portid in self._other_portids:
            return False
        if portid not in self._old_portids:
            self._old_portids = {p for pid in self.old_daemons for p in process_portids(pid)}
            if portid not in self._old_portids:
                self._other_portids.add(portid)
        return portid in self._old_portids

    async def _on_flow(self, cmd: EventCmd, record: Flow, sender: int = 0) -> None:
        fid = flow_id(record)
        name = flow_name(record)
        if cmd is EventCmd.DEL:
            self.stats.suspects.pop(name, None)  # e.g. a feature probe of a starting daemon: gone again
            self._due.pop(fid, None)
            flow = self.flows.get(fid)
            if flow is None or fid in self.broken:
                return
            if self.frozen and _idle(record) and self._from_old_daemon(sender):
                del self.flows[fid]
                self.stats.deletes_accepted += 1
                return
            await self._put([flow])
            return
        if fid in self.flows or not self.frozen:
            return
        if not is_drop_only(record) and record.actions is not None and self._from_old_daemon(sender):
            self.flows[fid] = record
            self.stats.flows_adopted += 1
            return
        self._due.setdefault(fid, (trio.current_time() + SUSPECT_GRACE, record))

    async def _judge_due_suspects(self) -> None:
        """Flows that outlived the grace: report them; remove the drop-only ones."""
        now = trio.current_time()
        for fid, (due, record) in list(self._due.items()):
            if due > now:
                continue
            del self._due[fid]
            if not self.frozen:
                continue
            key = None if record.ufid else record.key
            try:
                await self.dp.flow_get(ufid=record.ufid, key=key)
            except OSError as exc:
                if exc.errno != errno.ENOENT:  # ENOENT: gone again, e.g. a feature probe
                    LOG.warning(kv("pin.suspect_check_failed", flow=flow_name(record), error=str(exc)))
                continue
            name, drop = flow_name(record), is_drop_only(record)
            self.stats.suspects[name] = "drop" if drop else "forwarding"
            LOG.warning(kv("pin.suspect_flow", flow=name, drop=drop))
            if not (drop and self.remove_drop_suspects):
                continue
            try:
                await self.dp.flow_del(ufid=record.ufid, key=key)
                self.stats.suspects_removed += 1
                self.stats.suspects.pop(name, None)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    LOG.warning(kv("pin.suspect_remove_failed", flow=name, error=str(exc)))

    async def _recreate_vport(self, port_no: int) -> None:
        vport = self.vports.get(port_no)
        if vport is None:
            return
        ifindex = vport.ifindex if vport.type is VportType.INTERNAL else None
        try:
            await self.dp.port_add(
                vport.name,
                vport.type,
                port_no=port_no,
                upcall_pids=self.new_vport_pids,
                options=vport.options,
                ifindex=ifindex,
            )
        except OSError as exc:
            if exc.errno != errno.EBUSY:  # EBUSY: someone (the daemon) already re-added it
                self.stats.vport_failures += 1
                LOG.warning(kv("pin.vport_failed", port=port_no, name=vport.name, error=str(exc)))
            return
        self.stats.vports_recreated += 1
        LOG.info(kv("pin.vport_recreated", port=port_no, name=vport.name))


def _idle(record: Flow) -> bool:
    """Whether a deleted flow (its final stats ride on the DEL notification) had stopped carrying traffic."""
    used = record.stats.used_ms
    return not used or time.monotonic() * 1000 - used >= IDLE_MS


def recirculating(flows: Iterable[Flow]) -> list[Flow]:
    return [f for f in flows if uses_recirculation(f)]
