"""The service driving the state machine, pin and hand-over against an in-memory datapath (pure).

The fake datapath behaves like the kernel where it matters here: a flush sends no notification, single
deletes do, puts of present flows fail with EEXIST, and upcall pids are plain numbers anyone may set.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import struct
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio

from dpfreeze.freeze import handover as ho
from dpfreeze.freeze import pin as pin_mod
from dpfreeze.freeze import service as service_mod
from dpfreeze.freeze.control import ControlError, Request
from dpfreeze.freeze.handover import Handover, MissBuffer, recirc_id
from dpfreeze.freeze.machine import State, StateStore, TransitionRefused
from dpfreeze.freeze.pin import PinSet, uses_recirculation
from dpfreeze.freeze.service import CRASH, FreezeService, ServiceConfig
from dpfreeze.ovs import portids
from dpfreeze.ovs.portids import SocketQueue, parse_socket_queues
from dpfreeze.upgrade import UpgradeReport, verify
from dpif.model import (
    Datapath,
    DatapathInfo,
    DpFeature,
    DpStats,
    Event,
    EventCmd,
    EventKind,
    ExecuteRequest,
    Flow,
    FlowStats,
    Meter,
    MeterStats,
    Resync,
    Upcall,
    UpcallKind,
    Vport,
    VportType,
)
from dpif.netlink.wire import KernelError, attr
from dpif.sockets import parse_proc_net_netlink

OLD_DAEMON, NEW_DAEMON, OURS = 1001, 2002, 3003


def key(port: int, recirc: int = 0) -> bytes:
    return attr(3, struct.pack("=I", port)) + attr(20, struct.pack("=I", recirc))


def flow(n: int, actions: bytes = attr(1, struct.pack("=I", 2))) -> Flow:
    return Flow(key=key(n), mask=None, actions=actions, ufid=bytes([n]) * 16)


class FakeDatapath:
    name = "ovs-system"
    lives_in_daemon = False

    def __init__(self, per_cpu: bool = True, kernel_has_per_cpu: bool = True) -> None:
        self.kernel_has_per_cpu = kernel_has_per_cpu  # False: a kernel before 5.14
        self.features = DpFeature.UNALIGNED | (DpFeature.DISPATCH_UPCALL_PER_CPU if per_cpu else 0)
        self.per_cpu_pids: tuple[int, ...] = (OLD_DAEMON, OLD_DAEMON) if per_cpu else ()
        self.vports = {
            n: Vport(
                n,
                VportType.INTERNAL if n == 0 else VportType.NETDEV,
                f"p{n}",
                upcall_pids=(0,) if per_cpu else (OLD_DAEMON,),
            )
            for n in range(3)
        }
        self.table: dict[bytes, Flow] = {}
        self.executed: list[ExecuteRequest] = []
        self.features_set: list[int] = []
        self._listeners: list[trio.MemorySendChannel[Event | Resync]] = []
        self._upcalls = trio.open_memory_channel[Upcall | Resync](100)
        self.socket_queue: list[Upcall] = []
        self.delivered = 0
        self.held_queue: list[Upcall | Resync] = []
        self.holding = 0  # the daemon's sockets, held by the crash guard

    def notify(self, kind: EventKind, cmd: EventCmd, record: Any, sender: int = 0) -> None:
        for ch in self._listeners:
            ch.send_nowait(Event(kind, cmd, 5, record, sender))

    async def info(self) -> DatapathInfo:
        return DatapathInfo(
            self.name, 5, int(self.features), DpStats(flows=len(self.table)), per_cpu_pids=self.per_cpu_pids
        )

    async def set_features(self, features: int, per_cpu_pids: Sequence[int] | None = None) -> DatapathInfo:
        if features & DpFeature.DISPATCH_UPCALL_PER_CPU and not self.kernel_has_per_cpu:
            raise KernelError(errno.EOPNOTSUPP)
        self.features_set.append(features)
        self.features = DpFeature(features)
        if per_cpu_pids is not None:
            self.per_cpu_pids = tuple(per_cpu_pids)
        return await self.info()

    async def ports(self) -> list[Vport]:
        return list(self.vports.values())

    async def port_add(
        self,
        name: str,
        type: VportType,
        port_no: int | None = None,
        upcall_pids: Sequence[int] = (0,),
        options: bytes = b"",
        ifindex: int | None = None,
    ) -> Vport:
        assert port_no is not None
        if port_no in self.vports:
            raise OSError(errno.EBUSY, "busy")
        self.vports[port_no] = Vport(port_no, type, name, upcall_pids=tuple(upcall_pids))
        return self.vports[port_no]

    async def port_set_upcall_pids(self, port_no: int, upcall_pids: Sequence[int]) -> Vport:
        self.vports[port_no] = replace(self.vports[port_no], upcall_pids=tuple(upcall_pids))
        return self.vports[port_no]

    async def port_del(self, port_no: int) -> None:
        vport = self.vports.pop(port_no)
        self.notify(EventKind.VPORT, EventCmd.DEL, vport)

    async def flows(self) -> AsyncIterator[Flow]:
        for f in list(self.table.values()):
            yield f

    async def flow_batches(self) -> AsyncIterator[list[Flow]]:
        yield list(self.table.values())

    async def flow_get(self, *, ufid: bytes | None = None, key: bytes | None = None) -> Flow:
        if (ufid or b"") not in self.table:
            raise OSError(errno.ENOENT, "no such flow")
        return self.table[ufid or b""]

    async def flow_put(self, flow: Flow, *, create: bool = True) -> None:
        (err,) = await self.flow_put_many([flow], create=create)
        if err is not None:
            raise err

    async def flow_put_many(
        self, flows: Sequence[Flow], *, create: bool = True
    ) -> list[BaseException | None]:
        out: list[BaseException | None] = []
        for f in flows:
            if f.ufid in self.table:
                out.append(OSError(errno.EEXIST, "exists"))
                continue
            assert f.ufid is not None
            self.table[f.ufid] = f
            self.notify(EventKind.FLOW, EventCmd.NEW, f, OURS)
            out.append(None)
        return out

    async def flow_del(self, *, ufid: bytes | None = None, key: bytes | None = None) -> Flow | None:
        assert ufid is not None
        f = self.table.pop(ufid)
        self.notify(EventKind.FLOW, EventCmd.DEL, Flow(b"", None, None, ufid=ufid))  # terse, like vswitchd
        return f

    async def flow_flush(self) -> None:
        self.table.clear()  # silently, as the kernel does

    async def execute(self, request: ExecuteRequest) -> None:
        self.executed.append(request)

    async def execute_many(self, requests: Sequence[ExecuteRequest]) -> list[BaseException | None]:
        self.executed.extend(requests)
        return [None] * len(requests)

    async def meter_get(self, meter_id: int) -> MeterStats:
        raise KernelError(errno.ENOENT)  # no meters: none of these flows uses one

    async def meter_set(self, meter: Meter) -> None:
        raise KernelError(errno.EOPNOTSUPP)

    @asynccontextmanager
    async def events(self) -> AsyncIterator[AsyncIterator[Event | Resync]]:
        send, recv = trio.open_memory_channel[Event | Resync](1000)
        self._listeners.append(send)
        try:
            yield recv
        finally:
            self._listeners.remove(send)

    @asynccontextmanager
    async def upcalls(self, n_sockets: int = 1) -> AsyncIterator[Any]:
        dp = self
        recv = self._upcalls[1]

        class Receiver:
            portids = (OURS,)

            @property
            def delivered(self) -> int:
                return dp.delivered

            def __aiter__(self) -> AsyncIterator[Upcall | Resync]:
                return recv.__aiter__()

            async def flush(self) -> None:  # what a lagging reader had left in the socket
                while dp.socket_queue:
                    dp._deliver(dp.socket_queue.pop(0))

        yield Receiver()

    @asynccontextmanager
    async def hold_upcalls(self, pid: int, portids: Sequence[int]) -> AsyncIterator[Any]:
        """The daemon's own sockets (in these fakes a daemon's portid is its pid); `held_queue` is what the
        kernel queued on them after its death."""
        dp, ours = self, frozenset(p for p in portids if p == pid)

        class Held:
            portids = ours

            def read(self) -> list[Upcall | Resync]:
                out, dp.held_queue = dp.held_queue, []
                return list(out)

        self.holding += 1
        try:
            yield Held()
        finally:
            self.holding -= 1

    def upcall(self, port: int, recirc: int = 0) -> None:
        self._deliver(Upcall(UpcallKind.MISS, 5, b"\0" * 60, key(port, recirc), hash=7))

    def queue_upcall(self, port: int) -> None:
        """A miss the kernel queued on our socket that our reader has not read yet."""
        self.socket_queue.append(Upcall(UpcallKind.MISS, 5, b"\1" * 60, key(port, 0), hash=8))

    def _deliver(self, up: Upcall) -> None:
        self._upcalls[0].send_nowait(up)
        self.delivered += 1

    async def aclose(self) -> None:
        pass


class FakeBackend:
    def __init__(self, dp: FakeDatapath) -> None:
        self.dp = dp
        self.frw: list[bool] = []
        self.pins: PinSet | None = None
        self.pidfile: int | None = None  # the pid ovs-vswitchd's pidfile names
        self.running: dict[int, trio.Event] = {}  # set when that daemon exits
        self.snapshots: list[bool] = []  # `daemon` of each snapshot
        self.miss_in_snapshot = False  # a new flow's first packet arrives while the snapshot is taken
        self.pids_at_snapshot: set[int] = set()
        self.limit: str | None = None  # other_config:flow-limit

    def start_daemon(self, pid: int) -> None:
        self.pidfile, self.running[pid] = pid, trio.Event()

    def die(self, pid: int, *, orderly: bool = False) -> None:
        if orderly:
            self.pidfile = None
        self.running[pid].set()

    @asynccontextmanager
    async def open_datapath(self, name: str) -> AsyncIterator[Datapath]:
        yield self.dp

    async def snapshot(self, dp: Any, path: Path, *, openflow: Any = None, profile: Any = None) -> PinSet:
        self.snapshots.append(openflow is None)
        self.pids_at_snapshot = set(dp.per_cpu_pids)
        if self.miss_in_snapshot:
            dp.upcall(2)
        self.pins = PinSet(await dp.info(), tuple(await dp.ports()), tuple([*dp.table.values()]))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("snapshot")
        return self.pins

    def load_pins(self, path: Path, datapath: str) -> PinSet:
        assert self.pins is not None and path.read_text() == "snapshot"
        return self.pins

    async def set_flow_restore_wait(self, on: bool) -> None:
        self.frw.append(on)

    async def flow_limit(self) -> str | None:
        return self.limit

    async def recreate(self, snapshot: Path, datapath: str) -> str:
        return ""

    def daemon_started(self) -> float | None:
        return None

    def daemon_pid(self) -> int | None:
        return self.pidfile

    async def wait_exit(self, pid: int) -> None:
        if pid in self.running:
            await self.running[pid].wait()


class FakeProc:
    """A /proc with just net/netlink: which generic-netlink portids have a live socket."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "net").mkdir(parents=True)
        self.set_live()

    def set_live(self, *portids: int) -> None:
        rows = [f"0000000000000000 16 {p} 00000000 0 0 0 2 0 {9000 + i}" for i, p in enumerate(portids)]
        (self.root / "net" / "netlink").write_text(
            "sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode\n" + "\n".join(rows) + "\n"
        )


@pytest.fixture
def fake_proc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeProc:
    proc = FakeProc(tmp_path / "proc")
    proc.set_live(OLD_DAEMON)
    real_live = portids.live_portids

    def live(_proc: Path = proc.root) -> dict[int, int]:
        return real_live(proc.root)

    for module in (ho, portids, service_mod):
        monkeypatch.setattr(module, "live_portids", live)
    monkeypatch.setattr(portids, "inode_processes", lambda inodes, _proc=None: {})
    return proc


def make_service(
    tmp_path: Path, dp: FakeDatapath, backend: FakeBackend | None = None, **config: Any
) -> FreezeService:
    cfg = ServiceConfig(
        state_dir=tmp_path / "state",
        socket_path=tmp_path / "run" / "c.sock",
        poll_interval=0.005,
        **{"handover_timeout": 2.0, **config},
    )
    return FreezeService(cfg, backend or FakeBackend(dp))


async def until(predicate: Any, timeout: float = 3.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.005)


async def test_freeze_pins_flows_and_takes_upcalls_only_when_the_daemon_is_gone(tmp_path, fake_proc) -> None:
    dp = FakeDatapath()
    for n in (1, 2, 3):
        dp.table[flow(n).ufid or b""] = flow(n)
    backend = FakeBackend(dp)
    svc = make_service(tmp_path, dp, backend)
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        doc = await svc.freeze(60, "ovs-system")
        assert doc["state"] == "frozen" and backend.frw == [True]
        assert svc.store.load().state is State.FROZEN
        # the old daemon still owns the upcalls: not taken
        await trio.sleep(0.05)
        assert dp.per_cpu_pids == (OLD_DAEMON, OLD_DAEMON)
        # a terse DEL from the old daemon and a silent flush: both repaired
        await dp.flow_del(ufid=flow(2).ufid)
        await until(lambda: len(dp.table) == 3)
        await dp.flow_flush()
        await until(lambda: len(dp.table) == 3)
        # a drop flow appearing while frozen is a suspect and is removed
        drop = flow(9, actions=b"")
        dp.table[drop.ufid or b""] = drop
        dp.notify(EventKind.FLOW, EventCmd.NEW, drop, sender=OLD_DAEMON)
        await until(lambda: drop.ufid not in dp.table)
        # a forwarding flow appearing is reported (not removed) while it lives
        fwd = flow(8)
        dp.table[fwd.ufid or b""] = fwd
        dp.notify(EventKind.FLOW, EventCmd.NEW, fwd, sender=OLD_DAEMON)
        await until(lambda: svc.pinner is not None and bool(svc.pinner.stats.suspects))
        assert svc.pinner is not None and svc.pinner.stats.suspects == {(fwd.ufid or b"").hex(): "forwarding"}
        await dp.flow_del(ufid=fwd.ufid)
        await until(lambda: svc.pinner is not None and not svc.pinner.stats.suspects)
        # the daemon exits: its portid dies, we take over, keeping every feature
        fake_proc.set_live()
        await until(lambda: dp.per_cpu_pids and set(dp.per_cpu_pids) == {OURS})
        assert dp.features_set[-1] & DpFeature.DISPATCH_UPCALL_PER_CPU
        dp.upcall(1)
        dp.upcall(1, recirc=5)
        await until(lambda: svc.handover is not None and svc.handover.stats.misses == 2)
        status = await svc.status()
        assert status["pin"]["reinstalled"] >= 2 and status["pin"]["suspects_removed"] == 1
        assert status["handover"]["buffered"] == 2

        # thaw: the new daemon programs its pids, then flushes; we re-install and replay
        async def new_daemon() -> None:
            await until(lambda: backend.frw == [True, False])
            dp.queue_upcall(2)  # the last miss before the new pids, still unread in our socket
            dp.per_cpu_pids = (NEW_DAEMON, NEW_DAEMON)
            await trio.sleep(0.02)
            await dp.flow_flush()

        nursery.start_soon(new_daemon)
        doc = await svc.thaw()
        assert doc["state"] == "thawed", doc
        report = doc["report"]
        assert report["outcome"] == "new daemon owns the upcalls; flush repaired"
        assert len(dp.table) == 3
        assert report["handover"]["replayed"] == 2 and report["handover"]["not_replayable"] == 1
        assert [(recirc_id(e.key), e.hash) for e in dp.executed] == [(0, 7), (0, 8)]  # unread one too
        assert dp.executed[0].actions == ho.RECIRC0_ACTIONS
        assert dp.per_cpu_pids == (NEW_DAEMON, NEW_DAEMON)  # not given back: the new daemon owns them
        text = (svc.config.state_dir / "report.txt").read_text()
        assert "hand-over: new daemon owns the upcalls; flush repaired" in text
        assert "replayed 2" in text and "dropped 0 (overflow) + 1 (recirc_id != 0)" in text
        assert json.loads((svc.config.state_dir / "report.json").read_text())["state"] == "thawed"
        # where the time went: the freeze's and the hand-over's phases, and how long misses were held
        assert {s["phase"] for s in doc["profile"]} >= {
            "freeze.session", "session.pin", "session.upcall-sockets", "session.flow-restore-wait",
            "thaw.flow-restore-wait", "thaw.new-owner", "thaw.flush-repair", "thaw.replay"}
        assert report["handover"]["held_s"] > 0 and doc["peak_rss_kb"] > 0
        nursery.cancel_scope.cancel()
    assert svc.store.load().state is State.THAWED


def test_the_upgrade_profile_puts_the_service_phases_among_its_own_steps() -> None:
    rep = UpgradeReport()
    t = time.monotonic()
    rep.step("freeze", t - 2.0)
    rep.status = {"profile": [{"phase": "snapshot.datapath", "start": round(t - 1.5, 4), "seconds": 0.5}]}
    rep.profile_of(t - 3.0)
    assert [(s["phase"], s["at"]) for s in rep.profile] == [("freeze", 1.0), ("snapshot.datapath", 1.5)]
    assert "_own" not in rep.to_json() and rep.to_json()["profile"] == rep.profile


async def test_per_vport_takeover_and_give_back_without_restart(tmp_path, fake_proc) -> None:
    """A kernel before 5.14: per-vport it is, to the end."""
    dp = FakeDatapath(per_cpu=False, kernel_has_per_cpu=False)
    backend = FakeBackend(dp)
    svc = make_service(tmp_path, dp, backend)
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        await svc.freeze(60, "ovs-system")
        fake_proc.set_live()  # e.g. killed with -9: the pids stay, nobody holds them
        await until(lambda: all(v.upcall_pids == (OURS,) for v in dp.vports.values()))
        await dp.port_del(2)  # a vport deleted during the freeze comes back with its number
        await until(lambda: 2 in dp.vports)
        assert dp.vports[2].upcall_pids == (OURS,)
        doc = await svc.thaw()  # no new daemon ever comes: time out, give the pids back
        assert doc["state"] == "thawed"
        assert doc["report"]["outcome"] == "timed out waiting for the new daemon"
        assert doc["report"]["handover"]["gave_back"] is True
        assert all(v.upcall_pids == (OLD_DAEMON,) for v in dp.vports.values())
        assert backend.frw == [True, False]
        nursery.cancel_scope.cancel()


async def test_a_thaw_with_the_old_daemon_still_running_gives_its_upcalls_back_at_once(
        tmp_path, fake_proc) -> None:
    """Taken early, and then nobody stopped the old daemon (the upgrade's command was killed first): the
    thaw gives the pids back to it at once instead of waiting out the hand-over timeout for a new one."""
    dp = FakeDatapath(per_cpu=False, kernel_has_per_cpu=False)
    svc = make_service(tmp_path, dp)
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        await svc.freeze(60, "ovs-system")
        await svc.take_upcalls()  # the old daemon still runs, and goes on running
        await until(lambda: all(v.upcall_pids == (OURS,) for v in dp.vports.values()))
        with trio.fail_after(svc.config.handover_timeout / 2):
            doc = await svc.thaw()
        assert doc["report"]["outcome"] == "the old daemon still runs: upcalls given back to it"
        assert all(v.upcall_pids == (OLD_DAEMON,) for v in dp.vports.values())
        nursery.cancel_scope.cancel()


async def test_the_old_per_vport_daemon_keeps_nothing_and_a_new_one_gets_its_mode_before_the_thaw(
        tmp_path, fake_proc) -> None:
    """Taken early (ExecStop) from a live per-vport daemon: its own live vport pids never read as a new
    per-vport daemon.  A new one that puts its pids on every vport gets per-vport dispatch at once, during
    the freeze, not after the thaw."""
    dp = FakeDatapath(per_cpu=False)
    svc = make_service(tmp_path, dp)
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        await svc.freeze(60, "ovs-system")
        await svc.take_upcalls()  # the old daemon still runs
        await until(lambda: bool(dp.features & DpFeature.DISPATCH_UPCALL_PER_CPU))
        await trio.sleep(0.05)
        assert dp.features & DpFeature.DISPATCH_UPCALL_PER_CPU  # not handed back to the old daemon
        fake_proc.set_live(NEW_DAEMON)  # the old one is gone, a new per-vport one starts
        for port_no in dp.vports:
            await dp.port_set_upcall_pids(port_no, (NEW_DAEMON,))
        await until(lambda: not dp.features & DpFeature.DISPATCH_UPCALL_PER_CPU)
        assert svc.state.state is State.FROZEN
        doc = await svc.thaw()
        assert doc["report"]["outcome"].startswith("new daemon owns the upcalls"), doc["report"]
        assert doc["report"]["handover"]["switched_to_per_vport"] is True
        nursery.cancel_scope.cancel()


async def test_a_per_vport_datapath_is_held_per_cpu_and_given_back_per_vport(tmp_path, fake_proc) -> None:
    """A datapath an OVS < 2.16 left per-vport is held per-CPU (a per-CPU daemon after it sets the flag
    before its pids: the misses in between reach us, not a long-dead pid), and given back as it was."""
    dp = FakeDatapath(per_cpu=False)
    dp.per_cpu_pids = (12345, 12345)  # a per-CPU daemon's, long gone
    backend = FakeBackend(dp)
    svc = make_service(tmp_path, dp, backend)
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        await svc.freeze(60, "ovs-system")
        fake_proc.set_live()
        await until(lambda: bool(dp.features & DpFeature.DISPATCH_UPCALL_PER_CPU))
        assert set(dp.per_cpu_pids) == {OURS}
        doc = await svc.thaw()  # no new daemon: back to per-vport, the vports' own pids
        assert doc["report"]["handover"]["gave_back"] is True
        assert not dp.features & DpFeature.DISPATCH_UPCALL_PER_CPU
        assert all(v.upcall_pids == (OLD_DAEMON,) for v in dp.vports.values())
        nursery.cancel_scope.cancel()


async def test_a_daemon_older_than_per_cpu_dispatch_gets_the_upcalls_per_vport(tmp_path, fake_proc) -> None:
    """A downgrade to OVS < 2.16: the new daemon sets its pids on every vport and leaves the per-CPU ones
    (ours) alone.  The hand-over switches the datapath to per-vport dispatch, so its misses reach it."""
    dp = FakeDatapath()
    backend = FakeBackend(dp)
    svc = make_service(tmp_path, dp, backend)
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        await svc.freeze(60, "ovs-system")
        fake_proc.set_live()
        await until(lambda: set(dp.per_cpu_pids) == {OURS})

        async def old_daemon_starts() -> None:
            await until(lambda: backend.frw == [True, False])
            fake_proc.set_live(OURS, NEW_DAEMON)
            for port_no in dp.vports:
                await dp.port_set_upcall_pids(port_no, (NEW_DAEMON,))

        nursery.start_soon(old_daemon_starts)
        doc = await svc.thaw()
        assert doc["report"]["outcome"].startswith("new daemon owns the upcalls"), doc["report"]
        assert not dp.features_set[-1] & DpFeature.DISPATCH_UPCALL_PER_CPU
        assert doc["report"]["handover"]["switched_to_per_vport"] is True
        assert "handed over per-vport" in (svc.config.state_dir / "report.txt").read_text()
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def frozen_service(
    tmp_path: Path, ttl: float = 60.0, flows: Sequence[Flow] = ()
) -> AsyncIterator[tuple[FreezeService, FakeDatapath, FakeBackend]]:
    """A running service with a fresh fake datapath holding `flows`, frozen; stopped on exit as kill -9
    stops it (the state file stays, nothing else)."""
    dp = FakeDatapath()
    dp.table.update((f.ufid or b"", f) for f in flows)
    backend = FakeBackend(dp)
    svc = make_service(tmp_path, dp, backend)
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        await svc.freeze(ttl, "ovs-system")
        yield svc, dp, backend
        nursery.cancel_scope.cancel()


async def test_lease_expiry_thaws_and_clears_flow_restore_wait(tmp_path, fake_proc) -> None:
    async with frozen_service(tmp_path, ttl=0.2) as (svc, _, backend):
        await until(lambda: svc.state.state is State.THAWED)
        assert svc.state.reason.startswith("done") and backend.frw == [True, False]
        assert svc.store.load().state is State.THAWED


async def test_killed_service_resumes_the_freeze(tmp_path, fake_proc) -> None:
    async with frozen_service(tmp_path, flows=[flow(1)]) as (first, dp, backend):
        pass
    assert StateStore(first.config.state_file).load().state is State.FROZEN
    await dp.flow_flush()
    second = make_service(tmp_path, dp, backend)
    assert second.state.state is State.FROZEN
    async with trio.open_nursery() as nursery:
        await nursery.start(second.run)
        await until(lambda: len(dp.table) == 1)  # the resumed pin repaired what happened meanwhile
        assert backend.frw == [True, True]  # re-asserted on resume
        assert (await second.thaw())["state"] == "thawed"
        nursery.cancel_scope.cancel()


async def test_refused_commands_change_nothing(tmp_path, fake_proc) -> None:
    dp = FakeDatapath()
    backend = FakeBackend(dp)
    svc = make_service(tmp_path, dp, backend)
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        for req in (Request(1, "thaw"), Request(2, "renew", {"ttl": 5}), Request(3, "freeze", {"ttl": -1})):
            with pytest.raises(ControlError):
                await svc.handle(req)
        assert not svc.config.state_file.exists() and backend.frw == []
        await svc.handle(Request(4, "freeze", {"ttl": 30}))
        before = svc.config.state_file.read_bytes()
        with pytest.raises(ControlError, match="cannot freeze while frozen"):
            await svc.handle(Request(5, "freeze", {"ttl": 30}))
        assert svc.config.state_file.read_bytes() == before and backend.frw == [True]
        nursery.cancel_scope.cancel()


async def test_a_failing_session_clears_flow_restore_wait(tmp_path, fake_proc) -> None:
    dp = FakeDatapath()
    backend = FakeBackend(dp)

    @asynccontextmanager
    async def broken_events() -> AsyncIterator[AsyncIterator[Event | Resync]]:
        raise OSError(errno.EPERM, "no netlink for you")
        yield  # an async generator, like the real one

    dp.events = broken_events  # type: ignore[method-assign]
    svc = make_service(tmp_path, dp, backend)
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        with pytest.raises(ControlError, match="freeze failed and was undone"):
            await svc.handle(Request(1, "freeze", {"ttl": 30}))
        assert svc.state.state is State.THAWED and "no netlink" in svc.state.error
        assert backend.frw == [False]  # the pin failed before flow-restore-wait was set; cleared anyway
        nursery.cancel_scope.cancel()


def test_miss_buffer_counts_overflow_in_packets_and_bytes() -> None:
    buf = MissBuffer(max_packets=2, max_bytes=100)
    up = Upcall(UpcallKind.MISS, 5, b"x" * 60, key(1))
    assert buf.add(up) and not buf.add(up)  # bytes limit
    assert (buf.overflow_packets, buf.overflow_bytes) == (1, 60)
    small = replace(up, packet=b"y" * 14)
    assert buf.add(small) and not buf.add(small)  # packets limit
    assert buf.overflow_packets == 2 and len(buf.drain()) == 2 and buf.bytes == 0


def test_proc_net_netlink_parsing() -> None:
    text = (
        "sk               Eth Pid        Groups   Rmem     Wmem     Dump  Locks    Drops    Inode\n"
        "ffff8a0c4c9b6800 16  2147483649 00000000 0        0        0     2        0        31337\n"
        "ffff8a0c4c9b7000 0   1          00000000 0        0        0     2        0        42\n"
    )
    assert parse_proc_net_netlink(text) == {2147483649: 31337}
    text += "ffff8a0c4c9b7800 16  77         00000000 98304    0        0     2        3        43\n"
    assert parse_socket_queues(text)[77] == SocketQueue(rmem=98304, drops=3)


async def test_the_replay_waits_for_the_new_daemon_to_read_what_it_was_given(tmp_path) -> None:
    """Misses go back in chunks, each once the new daemon's upcall sockets are nearly empty: a burst of
    thousands overflowed a per-vport daemon's one socket per port."""
    proc = FakeProc(tmp_path / "proc")
    dp = FakeDatapath()
    h = ho.Handover(dp, PinSet(await dp.info(), (), ()), poll_interval=0.005, proc=proc.root)
    h.stats.new_owner_pids = [NEW_DAEMON]
    for _ in range(ho.REPLAY_CHUNK * 3):
        h.buffer.add(Upcall(UpcallKind.MISS, 5, b"\0" * 60, key(1, 0), hash=7))
    full = f"0000000000000000 16 {NEW_DAEMON} 00000000 {ho.REPLAY_QUEUE_BYTES + 1} 0 0 2 0 9000"
    (proc.root / "net" / "netlink").write_text("header\n" + full + "\n")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h._replay_buffer)
        await trio.sleep(0.05)
        assert dp.executed == []  # the daemon has not read its queue: nothing more is sent
        proc.set_live(NEW_DAEMON)  # read: empty queue, no drops
        await until(lambda: len(dp.executed) == ho.REPLAY_CHUNK * 3)
    assert h.stats.replayed == ho.REPLAY_CHUNK * 3
    assert h.stats.replay_waits > 0 and h.stats.new_owner_drops == 0


def test_recirculation_is_recognised() -> None:
    assert not uses_recirculation(flow(1))
    assert uses_recirculation(Flow(key(1, recirc=3), None, attr(1, b"\0" * 4)))
    assert uses_recirculation(Flow(key(1), None, attr(7, b"\0" * 4)))
    # what looks like one inside another attribute's value is not one
    assert not uses_recirculation(Flow(key(1) + attr(16, struct.pack("=HHI", 8, 20, 5)), None,
                                       attr(1, struct.pack("=HH", 8, 7))))


async def test_handover_waits_for_the_old_owner(tmp_path, fake_proc) -> None:
    dp = FakeDatapath()
    pins = PinSet(await dp.info(), tuple(await dp.ports()), ())
    h = Handover(dp, pins, poll_interval=0.005, proc=fake_proc.root)
    with trio.move_on_after(0.05) as scope:
        await h.wait_owner_gone()
    assert scope.cancelled_caught
    fake_proc.set_live(NEW_DAEMON)
    with trio.fail_after(1):
        await h.wait_owner_gone()


def test_upgrade_verification_names_every_problem() -> None:
    good = {
        "state": "thawed",
        "error": "",
        "report": {
            "upcall_owners": [{"portid": 7, "pid": 42, "process": "ovs-vswitchd"}],
            "handover": {"overflow_packets": 0},
            "pin": {"reinstall_failed": 0},
        },
    }
    assert verify(good, 42) == []
    bad = {
        "state": "thawed",
        "error": "OvsdbError: timeout",
        "report": {
            "upcall_owners": [{"portid": 7, "pid": None, "process": None}],
            "handover": {"overflow_packets": 3},
            "pin": {"reinstall_failed": 1},
        },
    }
    problems = verify(bad, 42)
    assert len(problems) == 4 and "7(dead)" in problems[1] and "3 upcalls dropped" in problems[2]
    assert verify({"state": "frozen"}, 42) == ["service state is frozen, not thawed", "no hand-over report"]


async def test_take_upcalls_before_the_old_daemon_stops(tmp_path, fake_proc) -> None:
    """The upgrade takes the upcalls just before it stops the daemon: misses of its exit are buffered."""
    dp = FakeDatapath()
    svc = make_service(tmp_path, dp)
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        with pytest.raises(Exception, match="cannot take the upcalls while idle"):
            await svc.take_upcalls()
        await svc.freeze(60, "ovs-system")
        await trio.sleep(0.05)
        assert dp.per_cpu_pids == (OLD_DAEMON, OLD_DAEMON)  # still alive: not taken by itself
        doc = await svc.take_upcalls()
        assert doc["handover"]["taken_over"] and set(dp.per_cpu_pids) == {OURS}
        nursery.cancel_scope.cancel()


async def test_pids_reset_by_an_exiting_per_vport_daemon_are_taken_again(tmp_path, fake_proc) -> None:
    """On a kernel before 5.14, where per-vport is the only dispatch."""
    dp = FakeDatapath(per_cpu=False, kernel_has_per_cpu=False)
    pins = PinSet(await dp.info(), tuple(await dp.ports()), ())
    h = Handover(dp, pins, poll_interval=0.005, proc=fake_proc.root)
    h.ours = (OURS,)
    fake_proc.set_live(OURS)
    await h.take((OURS,))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.keep)
        for v in await dp.ports():  # what dpif-netlink's destroy_all_channels does on a clean exit
            await dp.port_set_upcall_pids(v.port_no, (0,))
        await until(lambda: all(v.upcall_pids == (OURS,) for v in dp.vports.values()))
        h.handing_over = True  # from here the new daemon's pids are final: never fought over
        for v in await dp.ports():
            await dp.port_set_upcall_pids(v.port_no, (0,))
        await trio.sleep(0.05)
        assert all(v.upcall_pids == (0,) for v in dp.vports.values())


async def test_a_hand_over_re_installs_no_more_flows_than_the_new_daemon_keeps() -> None:
    """While frozen every pinned flow comes back; after the flow-restore-wait clear, the flush repair stops
    at the new daemon's startup flow limit (above twice it, it would delete them all), the pins' first
    (the snapshot puts the most recently used first)."""
    dp = FakeDatapath()
    for n in (1, 2, 3, 4):
        dp.table[flow(n).ufid or b""] = flow(n)
    pinner = pin_mod.Pinner(dp, PinSet(await dp.info(), (), tuple(dp.table.values())))
    pinner.repair_limit = 2
    dp.table.clear()
    assert await pinner.reconcile() == 4 and len(dp.table) == 4
    pinner.frozen = False
    dp.table.clear()  # the new daemon's flush
    assert await pinner.reconcile() == 2 and sorted(dp.table) == [flow(1).ufid, flow(2).ufid]
    assert pinner.expected == 2


def test_the_repair_limit_is_the_new_daemons_first_flow_limit() -> None:
    """min(other_config:flow-limit, 10 000), as udpif starts; unset or not a number: 10 000."""
    assert pin_mod.startup_flow_limit(None) == pin_mod.startup_flow_limit("x") == 10_000
    assert pin_mod.startup_flow_limit("2000") == 2000 and pin_mod.startup_flow_limit("200000") == 10_000


async def test_the_hand_over_reads_the_flow_limit_as_it_thaws(tmp_path: Path, fake_proc: FakeProc) -> None:
    dp = FakeDatapath()
    dp.table[flow(1).ufid or b""] = flow(1)
    backend = FakeBackend(dp)
    backend.limit = "3"
    svc = make_service(tmp_path, dp, backend)
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        await svc.freeze(60, "ovs-system")
        pinner = svc.pinner
        assert pinner is not None and pinner.repair_limit == 10_000
        await svc.thaw()
        nursery.cancel_scope.cancel()
    assert pinner.repair_limit == 3


async def test_the_hand_over_repairs_one_flush_even_one_refilled_at_once() -> None:
    """The new daemon's handlers refill its flushed table within a poll (a CI run: 4 pins, and the count
    never dropped below them): at the hand-over the flush is seen by its pins being gone, and repaired
    once."""
    dp = FakeDatapath()
    for n in (1, 2, 3, 4):
        dp.table[flow(n).ufid or b""] = flow(n)
    pinner = pin_mod.Pinner(dp, PinSet(await dp.info(), (), tuple(dp.table.values())), poll_interval=0.005)
    pinner.frozen = False
    async with trio.open_nursery() as nursery:
        await nursery.start(pinner.run)
        await trio.sleep(0.05)
        assert not pinner.flush_seen.is_set()
        dp.table.clear()  # the flush, then its own flows for the first upcalls, before a poll
        for n in (10, 11, 12, 13, 14):
            dp.table[flow(n).ufid or b""] = flow(n)
        with trio.fail_after(5):
            await pinner.flush_seen.wait()
        assert all(flow(n).ufid in dp.table for n in (1, 2, 3, 4)) and pinner.stats.flushes_detected == 1
        # one repair only: what the new daemon deletes after it stays deleted (re-installing it would be a
        # fight, which at 200 000 flows held the hand-over 44 s), and the wait's end asks nothing more
        dp.table.clear()
        await trio.sleep(0.05)
        assert not dp.table and pinner.stats.flushes_detected == 1
        assert await pinner.settle_flush() is None
        nursery.cancel_scope.cancel()


async def test_the_old_daemon_is_followed_until_it_is_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its deletes of idle flows leave the pin set and its new forwarding flows join it; its deletes of
    busy flows (a teardown), anyone else's deletes, and all of its deletes once it is being stopped are
    undone."""
    import time

    def ufid(n: int) -> bytes:
        return bytes([n]) * 16

    def deleted(n: int, used_ms: int = 0) -> Flow:
        return Flow(b"", None, None, ufid=ufid(n), stats=FlowStats(used_ms=used_ms))  # terse, final stats

    dp = FakeDatapath()
    for n in (1, 2, 3, 4):
        dp.table[ufid(n)] = flow(n)
    monkeypatch.setattr(pin_mod, "process_portids", lambda pid: {77} if pid == OLD_DAEMON else set())
    pinner = pin_mod.Pinner(dp, PinSet(await dp.info(), (), tuple(dp.table.values())), poll_interval=0.005)
    pinner.old_daemons = frozenset({OLD_DAEMON})
    busy = int(time.monotonic() * 1000) - 10
    async with trio.open_nursery() as nursery:
        await nursery.start(pinner.run)
        for n, sender, used in ((1, 77, 0), (2, 55, 0), (3, 77, busy)):
            del dp.table[ufid(n)]
            dp.notify(EventKind.FLOW, EventCmd.DEL, deleted(n, used), sender)
        dp.table[ufid(5)] = flow(5)
        dp.notify(EventKind.FLOW, EventCmd.NEW, flow(5), 77)
        await trio.sleep(0.05)
        assert sorted(dp.table) == [ufid(2), ufid(3), ufid(4), ufid(5)]  # only the idle 1 stays deleted
        dp.table.clear()  # a flush: the adopted flow comes back with the pinned ones
        await trio.sleep(0.05)
        assert sorted(dp.table) == [ufid(2), ufid(3), ufid(4), ufid(5)]
        pinner.stop_following()
        del dp.table[ufid(4)]
        dp.notify(EventKind.FLOW, EventCmd.DEL, deleted(4), 77)
        await trio.sleep(0.05)
        assert ufid(4) in dp.table
        assert (pinner.stats.deletes_accepted, pinner.stats.flows_adopted) == (1, 1)
        nursery.cancel_scope.cancel()


async def test_drop_suspects_get_a_grace_period(monkeypatch: pytest.MonkeyPatch) -> None:
    """A starting daemon's feature probe (drop-only, deleted by the daemon itself) is never touched; a drop
    flow that stays is removed once the grace period is over."""
    monkeypatch.setattr(pin_mod, "SUSPECT_GRACE", 0.1)
    dp = FakeDatapath()
    dels: list[bytes | None] = []
    real_del = dp.flow_del

    async def flow_del(*, ufid: bytes | None = None, key: bytes | None = None) -> Flow | None:
        dels.append(ufid)
        return await real_del(ufid=ufid, key=key)

    dp.flow_del = flow_del  # type: ignore[method-assign]
    pinner = pin_mod.Pinner(dp, PinSet(await dp.info(), (), ()), poll_interval=0.005)
    probe, stuck = flow(8, actions=b""), flow(9, actions=b"")
    async with trio.open_nursery() as nursery:
        await nursery.start(pinner.run)
        for f in (probe, stuck):
            assert f.ufid is not None
            dp.table[f.ufid] = f
            dp.notify(EventKind.FLOW, EventCmd.NEW, f, NEW_DAEMON)
        await trio.sleep(0.03)
        assert dels == [] and probe.ufid is not None
        del dp.table[probe.ufid]  # the daemon deletes its own probe
        dp.notify(EventKind.FLOW, EventCmd.DEL, Flow(b"", None, None, ufid=probe.ufid), NEW_DAEMON)
        await trio.sleep(0.2)
        assert dels == [stuck.ufid] and dp.table == {}
        assert pinner.stats.suspects_removed == 1 and pinner.stats.suspects == {}
        nursery.cancel_scope.cancel()


def test_exit_is_used_only_where_it_keeps_the_kernel_flows() -> None:
    from dpfreeze.upgrade import exit_keeps_flows

    assert exit_keeps_flows("ovs-vswitchd (Open vSwitch) 3.1.0\n")
    assert exit_keeps_flows("ovs-vswitchd (Open vSwitch) 2.14.0\n")
    assert not exit_keeps_flows("ovs-vswitchd (Open vSwitch) 2.13.8\n")
    assert not exit_keeps_flows("ovs-vswitchd (Open vSwitch) 2.9.2\n")
    assert exit_keeps_flows("")  # unknown (no answer): assume a current daemon


def test_cautions_name_what_any_restart_does_here() -> None:
    from dpfreeze.upgrade import cautions

    assert cautions({}, 9000) == []
    (offload,) = cautions({"hw-offload": "true"}, 10)
    assert "TC-offloaded" in offload
    (limit,) = cautions({}, 15000)
    assert "flow limit of 10000" in limit and "100 ms" in limit
    (kill,) = cautions({"flow-limit": "5000"}, 12000)
    assert "flow limit of 5000" in kill and "deletes them all" in kill
    assert len(cautions({"hw-offload": "true", "flow-limit": "junk"}, 25000)) == 2


async def test_detach_stays_frozen_and_reattach_pins_again(tmp_path, fake_proc) -> None:
    """What a module reload needs: let go of the datapath without thawing, then pin the restored one."""
    async with frozen_service(tmp_path, flows=[flow(1)]) as (svc, dp, backend):
        await svc.take_upcalls()
        dp.upcall(1)  # a miss taken before the module reload: kept across it, replayed after
        await until(lambda: svc.handover is not None and len(svc.handover.buffer.buffered) == 1)
        assert (await svc.detach())["state"] == "frozen"
        await dp.flow_flush()  # the module went away with its flows
        await trio.sleep(0.05)
        assert dp.table == {} and backend.frw == [True]  # detached: nothing repaired, nothing thawed
        with pytest.raises(ControlError):
            await svc.handle(Request(1, "detach"))  # twice: refused
        await svc.reattach()
        await until(lambda: len(dp.table) == 1)
        with pytest.raises(ControlError):
            await svc.handle(Request(2, "reattach"))  # already attached
        assert (await svc.thaw())["state"] == "thawed" and backend.frw[-1] is False
        assert len(dp.executed) == 1 and svc.handover is not None and svc.handover.stats.replayed == 1


async def test_a_detached_freeze_still_thaws_and_clears_flow_restore_wait(tmp_path, fake_proc) -> None:
    async with frozen_service(tmp_path) as (svc, _, backend):
        await svc.detach()
        assert (await svc.thaw())["state"] == "thawed"
        assert backend.frw == [True, False]


def test_module_dependents_from_proc_modules() -> None:
    from dpfreeze.kmod import dependents

    text = ("vport_vxlan 16384 1 - Live 0x0\n"
            "openvswitch 192512 2 vport_vxlan,vport_geneve, Live 0x0\n"
            "nf_conntrack 180224 1 openvswitch, Live 0x0\n")
    assert dependents(text) == ["vport_vxlan", "vport_geneve"]
    assert dependents("openvswitch 192512 0 - Live 0x0\n") == []
    assert dependents("") == []


class VanishingDatapath(FakeDatapath):
    """A datapath that goes away under the freeze (`ovs-dpctl del-dp`, the module unloaded)."""

    gone = False

    async def info(self) -> DatapathInfo:
        if self.gone:
            raise KernelError(errno.ENODEV)
        return await super().info()


class RecreatingBackend(FakeBackend):
    def __init__(self, dp: VanishingDatapath) -> None:
        super().__init__(dp)
        self.vanishing = dp
        self.recreated = 0

    async def recreate(self, snapshot: Path, datapath: str) -> str:
        if not self.vanishing.gone:
            return ""
        self.vanishing.gone = False
        self.recreated += 1
        return f"{datapath} re-created from the snapshot"


async def test_a_datapath_gone_under_the_freeze_is_recreated_and_the_freeze_goes_on(
        tmp_path, fake_proc) -> None:
    dp = VanishingDatapath()
    backend = RecreatingBackend(dp)
    svc = make_service(tmp_path, dp, backend)
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        await svc.freeze(60, "ovs-system")
        dp.gone = True
        await until(lambda: backend.recreated == 1)
        await trio.sleep(0.1)
        assert svc.state.state is State.FROZEN and backend.frw[-1] is True  # still frozen, still pinning
        doc = await svc.thaw()
        assert doc["state"] == "thawed" and not doc.get("error"), doc
        nursery.cancel_scope.cancel()


async def test_a_datapath_that_cannot_be_recreated_ends_the_freeze(tmp_path, fake_proc) -> None:
    dp = VanishingDatapath()
    backend = RecreatingBackend(dp)

    async def nothing(snapshot: Path, datapath: str) -> str:
        return ""
    backend.recreate = nothing  # type: ignore[method-assign]
    svc = make_service(tmp_path, dp, backend)
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        await svc.freeze(60, "ovs-system")
        dp.gone = True
        await until(lambda: svc.state.state is State.THAWED)
        assert backend.frw[-1] is False and "ENODEV" in (svc.state.error or "") + str(svc.state.to_json())
        nursery.cancel_scope.cancel()


async def test_a_status_asked_while_the_session_closes_its_datapath_is_still_a_status(
        tmp_path, fake_proc) -> None:
    """`upgrade` polls the status through the end of a hand-over; the datapath's socket may be closing
    then (EBADF, found by the fault matrix): the answer is the status, without the datapath's figures."""
    dp = FakeDatapath()
    svc = make_service(tmp_path, dp)

    class Closing:
        async def info(self) -> DatapathInfo:
            raise OSError(errno.EBADF, "Bad file descriptor")

    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        await svc.freeze(60, "ovs-system")
        real, svc._dp = svc._dp, Closing()  # type: ignore[assignment]
        doc = await svc.status()
        assert doc["state"] == "frozen" and "datapath_flows" not in doc
        svc._dp = real
        nursery.cancel_scope.cancel()


# --- the crash guard -----------------------------------------------------------------------------------


async def guarded(tmp_path: Path, fake_proc: FakeProc, nursery: trio.Nursery, thawed: list[int],
                  **config: Any) -> tuple[FreezeService, FakeDatapath, FakeBackend]:
    dp = FakeDatapath()
    for n in (1, 2, 3):
        dp.table[flow(n).ufid or b""] = flow(n)
    backend = FakeBackend(dp)
    backend.start_daemon(OLD_DAEMON)
    svc = make_service(tmp_path, dp, backend, **config)

    async def crashed(api: FreezeService, dead: int) -> str:
        thawed.append(dead)
        return "noted"
    await nursery.start(functools.partial(svc.run, crashed=crashed))
    return svc, dp, backend


async def test_a_crash_freezes_at_once_takes_the_upcalls_and_execstop_joins(tmp_path, fake_proc) -> None:
    thawed: list[int] = []
    async with trio.open_nursery() as nursery:
        svc, dp, backend = await guarded(tmp_path, fake_proc, nursery, thawed)
        backend.miss_in_snapshot = True
        await trio.sleep(0.1)  # the guard holds its sockets ready, and takes nothing from a live daemon
        assert set(dp.per_cpu_pids) == {OLD_DAEMON}
        fake_proc.set_live()  # kill -9: its sockets go with it, its pidfile stays
        backend.die(OLD_DAEMON)
        await until(lambda: svc.state.state is State.FROZEN and bool(dp.per_cpu_pids)
                    and set(dp.per_cpu_pids) == {OURS})
        assert "crash of ovs-vswitchd pid 1001" in svc.state.reason and svc.state.ttl == 120.0
        # the upcalls were owned before the snapshot was taken: the miss that came meanwhile is kept
        assert backend.pids_at_snapshot == {OURS}
        await until(lambda: svc.handover is not None and svc.handover.stats.misses == 1)
        assert backend.frw == [True] and backend.snapshots == [False]  # no daemon to ask for OpenFlow
        await until(lambda: thawed == [OLD_DAEMON])
        # systemd's restart runs ExecStop's freeze first: it joins the guard's freeze, changing nothing
        doc = await svc.freeze(300, "ovs-system")
        assert doc["state"] == "frozen" and doc["ttl"] == 120.0 and backend.snapshots == [False]
        # a miss while no daemon runs is kept for the next one
        dp.upcall(1)
        await until(lambda: svc.handover is not None and svc.handover.stats.misses == 2)
        backend.start_daemon(NEW_DAEMON)

        async def new_daemon() -> None:
            await until(lambda: backend.frw == [True, False])
            dp.per_cpu_pids = (NEW_DAEMON, NEW_DAEMON)
            await trio.sleep(0.02)
            await dp.flow_flush()
        nursery.start_soon(new_daemon)
        doc = await svc.thaw()
        assert doc["report"]["outcome"] == "new daemon owns the upcalls; flush repaired", doc
        assert len(dp.table) == 3 and len(dp.executed) == 2  # flushed flows back, both misses replayed
        nursery.cancel_scope.cancel()


async def test_an_orderly_stop_is_left_alone(tmp_path, fake_proc) -> None:
    thawed: list[int] = []
    async with trio.open_nursery() as nursery:
        svc, dp, backend = await guarded(tmp_path, fake_proc, nursery, thawed)
        await trio.sleep(0.1)  # the guard waits on the daemon
        # ovs-ctl stop, ovs-appctl exit: the pidfile goes with it, and its upcall pids are reset
        dp.per_cpu_pids = (0, 0)
        fake_proc.set_live()
        backend.die(OLD_DAEMON, orderly=True)
        await trio.sleep(0.3)
        assert svc.state.state is State.IDLE and backend.frw == [] and not thawed
        nursery.cancel_scope.cancel()


async def test_a_crash_whose_pidfile_systemd_removed_first_is_still_a_crash(tmp_path, fake_proc) -> None:
    """systemd reaps the daemon and removes its PIDFile= at once, at times before the guard looks (seen in
    CI): the upcall pids the crash left dangling still tell."""
    thawed: list[int] = []
    async with trio.open_nursery() as nursery:
        svc, dp, backend = await guarded(tmp_path, fake_proc, nursery, thawed)
        await trio.sleep(0.1)  # the guard waits on the daemon
        fake_proc.set_live()
        backend.die(OLD_DAEMON, orderly=True)  # the pidfile is gone, as after an orderly stop
        await until(lambda: svc.state.state is State.FROZEN and set(dp.per_cpu_pids) == {OURS})
        assert CRASH in svc.state.reason
        nursery.cancel_scope.cancel()


async def test_a_crash_s_misses_wait_in_the_dead_daemons_held_sockets(tmp_path, fake_proc) -> None:
    """The guard holds the daemon's own upcall sockets: at its death they live on (its portid stays live),
    what it never read and what came until the take wait there, and go to the next daemon."""
    thawed: list[int] = []
    async with trio.open_nursery() as nursery:
        svc, dp, backend = await guarded(tmp_path, fake_proc, nursery, thawed)
        await until(lambda: dp.holding == 1)
        dp.held_queue = [Upcall(UpcallKind.MISS, 5, b"\2" * 60, key(n), hash=n) for n in (1, 2)]
        backend.die(OLD_DAEMON, orderly=True)  # systemd reaped it and removed its pidfile first
        await until(lambda: svc.state.state is State.FROZEN and set(dp.per_cpu_pids) == {OURS})
        assert CRASH in svc.state.reason  # its pids name a socket only the guard holds: a crash
        await until(lambda: svc.handover is not None and svc.handover.stats.misses == 2)
        await until(lambda: dp.holding == 0)  # let go once the freeze's session holds the upcalls
        backend.start_daemon(NEW_DAEMON)

        async def new_daemon() -> None:
            await until(lambda: backend.frw == [True, False])
            dp.per_cpu_pids = (NEW_DAEMON, NEW_DAEMON)
        nursery.start_soon(new_daemon)
        await svc.thaw()
        assert [r.packet for r in dp.executed] == [b"\2" * 60] * 2  # both given to the next daemon
        nursery.cancel_scope.cancel()


async def test_a_planned_freeze_lets_go_of_the_daemons_sockets(tmp_path, fake_proc) -> None:
    """An upgrade's freeze owns the upcalls itself and asks the daemon to exit: the guard holds nothing of
    it meanwhile, and holds its sockets again once the freeze is over and the daemon lives on."""
    thawed: list[int] = []
    async with trio.open_nursery() as nursery:
        svc, dp, _backend = await guarded(tmp_path, fake_proc, nursery, thawed)
        await until(lambda: dp.holding == 1)
        await svc.freeze(300, "ovs-system")
        assert dp.holding == 0
        await trio.sleep(2.5 * service_mod.HOLD_POLL)
        assert dp.holding == 0
        await svc.thaw()  # the daemon was never restarted: the upcalls go back to it
        await until(lambda: dp.holding == 1, timeout=3 * service_mod.HOLD_POLL)
        nursery.cancel_scope.cancel()


async def test_a_crash_loop_ends_the_crash_freeze_and_the_guard_stands_aside(tmp_path, fake_proc) -> None:
    thawed: list[int] = []
    async with trio.open_nursery() as nursery:
        svc, _dp, backend = await guarded(tmp_path, fake_proc, nursery, thawed, crash_loop=(2, 600.0),
                                         handover_timeout=0.2)
        fake_proc.set_live()
        backend.die(OLD_DAEMON)
        await until(lambda: svc.state.state is State.FROZEN)
        backend.start_daemon(NEW_DAEMON)
        await trio.sleep(0.2)
        backend.die(NEW_DAEMON)  # the second death within the window: a loop
        await until(lambda: svc.state.state is State.THAWED)
        assert backend.frw[-1] is False and "crash-looping" in svc.state.error
        # ExecStop's freeze of the dead daemon is refused, changing nothing
        with pytest.raises(TransitionRefused, match="crash-looping"):
            await svc.freeze(300, "ovs-system")
        assert svc.state.state is State.THAWED and backend.frw[-1] is False
        nursery.cancel_scope.cancel()


async def test_the_next_start_freezes_what_a_crash_left_unguarded(tmp_path, fake_proc) -> None:
    """No guard saw the crash (none ran, or it was too slow): ExecStartPre's crash-check freezes on what the
    crash left: upcall pids no live socket holds.  An orderly exit leaves none, and nothing happens."""
    dp = FakeDatapath()
    backend = FakeBackend(dp)
    svc = make_service(tmp_path, dp, backend)
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)  # no guard
        doc = await svc.handle(Request(1, "crash-check", {}))
        assert doc["state"] == "idle" and backend.frw == []  # the daemon's sockets live: no crash
        dp.per_cpu_pids = (0, 0)  # an orderly exit resets its pids
        fake_proc.set_live()
        assert (await svc.crash_check())["state"] == "idle" and backend.frw == []
        dp.per_cpu_pids = (OLD_DAEMON, OLD_DAEMON)  # kill -9: they dangle
        doc = await svc.crash_check()
        assert doc["state"] == "frozen" and "found at the next start" in doc["reason"]
        assert backend.frw == [True]
        await until(lambda: set(dp.per_cpu_pids) == {OURS})
        assert (await svc.crash_check())["state"] == "frozen" and backend.snapshots == [False]  # once
        nursery.cancel_scope.cancel()


async def test_a_second_upgrade_is_refused_while_one_runs_and_the_first_is_untouched(tmp_path) -> None:
    """One service, one upgrade: a second command's request is refused in one line, and the first goes on
    to its report as if nothing had been asked."""
    from dpfreeze.freeze.caller import Caller

    svc = make_service(tmp_path, FakeDatapath())
    go = trio.Event()

    async def upgrader(api: FreezeService, request: dict[str, Any], caller: Caller) -> dict[str, Any]:
        await go.wait()
        return {"report": request}

    first, second = Caller(os.getpid()), Caller(os.getpid())
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(svc.run, upgrader=upgrader))
        answers: list[dict[str, Any]] = []

        async def ask_first() -> None:
            answers.append(await svc.handle(Request(1, "upgrade", {"ttl": 60}), first))

        nursery.start_soon(ask_first)
        await until(lambda: first.busy)
        with pytest.raises(ControlError, match=r"^an upgrade is already running in this service$"):
            await svc.handle(Request(2, "upgrade", {"ttl": 5}), second)
        assert not second.busy and svc.state.state is State.IDLE
        go.set()
        await until(lambda: bool(answers))
        assert answers == [{"report": {"ttl": 60}}]
        with trio.fail_after(3):  # the first one done, the next is served
            assert await svc.handle(Request(3, "upgrade", {"ttl": 7}), second) == {"report": {"ttl": 7}}
        nursery.cancel_scope.cancel()


async def test_a_service_without_upgrades_says_so_in_the_words_the_command_falls_back_on(tmp_path) -> None:
    """A service an upgrade started for itself runs none: the command recognises the refusal by its words
    (cli/upgrade.py's NOT_HERE) and runs the upgrade itself, so the words are exact."""
    from dpfreeze.cli.upgrade import NOT_HERE
    from dpfreeze.freeze.caller import Caller

    svc = make_service(tmp_path, FakeDatapath())
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        with pytest.raises(ControlError) as refused:
            await svc.handle(Request(1, "upgrade", {"ttl": 60}), Caller(os.getpid()))
        assert str(refused.value).startswith(NOT_HERE), refused.value
        nursery.cancel_scope.cancel()
