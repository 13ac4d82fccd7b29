"""`dpfreeze serve`: one trio process that holds the freeze.

One nursery owns the control listener, the lease watcher and, while a freeze is active, the session task
(which owns the pinner and the hand-over).  Every state change goes through `machine.step` and is written
to disk *before* it is acted on, so a service killed with -9 resumes the freeze in progress from the state
file.  Every failure path ends with flow-restore-wait cleared.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import stat
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import trio

from dpfreeze import command, files
from dpfreeze.errors import DpfreezeError
from dpfreeze.freeze import control, controlsock, machine
from dpfreeze.freeze.caller import Caller
from dpfreeze.freeze.checkpoint import Checkpoint
from dpfreeze.freeze.defaults import DEFAULT_SOCKET, DEFAULT_STATE_DIR, DEFAULT_TTL
from dpfreeze.freeze.guard import CrashLoop, wait_exit
from dpfreeze.freeze.handover import Handover, MissBuffer
from dpfreeze.freeze.machine import ACTIVE, Event, State, StateStore, TransitionRefused
from dpfreeze.freeze.pin import Pinner, PinSet, recirculating, startup_flow_limit
from dpfreeze.freeze.restorer import Restorer
from dpfreeze.log import Profile, kv, peak_rss_kb
from dpfreeze.ovs import datapaths, ovsdb, ovsenv
from dpfreeze.ovs.openflow import BridgeOpenFlow
from dpfreeze.ovs.ovsenv import OvsEnv
from dpfreeze.ovs.portids import live_portids, portid_owners, upcall_owners, upcall_pids
from dpfreeze.snapshot import Snapshot, restore, take_snapshot
from dpfreeze.snapshot.recreate import open_or_create
from dpif.model import Datapath, HeldUpcalls
from dpif.netdev_datapath import is_netdev_name
from dpif.netlink_datapath import open_datapath

LOG = logging.getLogger(__name__)

DEFAULT_DATAPATH = "ovs-system"
GUARD_POLL = 0.1  # while no live daemon is named: how often its pidfile is read again
HOLD_POLL = 1.0  # how often the guard checks that the upcall pids still name the sockets it holds
FRW_ATTEMPTS, FRW_TIMEOUT = 3, 20.0  # a loaded host (or TCG) can keep ovsdb-server busy for seconds


class Backend(Protocol):
    """What the service needs from the rest of dpfreeze (tests substitute fakes)."""

    def open_datapath(self, name: str) -> AbstractAsyncContextManager[Datapath]: ...

    async def snapshot(self, dp: Datapath, path: Path, *, openflow: Sequence[BridgeOpenFlow] | None = None,
                       profile: Profile | None = None) -> PinSet:
        """Take the full snapshot and write it atomically to `path`; what to pin.  `openflow` given: no
        daemon runs (a crash), so its OpenFlow state is taken from there (the checkpoint), not asked for."""
        ...

    def load_pins(self, path: Path, datapath: str) -> PinSet: ...

    async def set_flow_restore_wait(self, on: bool) -> None: ...

    async def flow_limit(self) -> str | None:
        """other_config:flow-limit as OVSDB holds it; None when unset or unreadable."""
        ...

    def daemon_started(self) -> float | None:
        """time.time() at which the running ovs-vswitchd started; None if none runs."""
        ...

    async def recreate(self, snapshot: Path, datapath: str) -> str:
        """Make the datapath again from the snapshot if it is gone; what was done, "" if it was there."""
        ...

    def daemon_pid(self) -> int | None:
        """The pid ovs-vswitchd's pidfile names, alive or not; None without a pidfile."""
        ...

    async def wait_exit(self, pid: int) -> None: ...


Orphaned = Callable[["FreezeService"], Awaitable[str]]  # what finishes a freeze whose caller died
# An upgrade run in the service for a command at the other end of a connection (upgrade.serve_upgrade): its
# arguments, the caller that runs its commands; the report, or an exception that refuses it in one line.
Upgrader = Callable[["FreezeService", dict[str, Any], Caller], Awaitable[dict[str, Any]]]
# A request answered by code above this floor, run here (the unit's start hooks: preflight.in_service)
Hook = Callable[["FreezeService", dict[str, Any]], Awaitable[dict[str, Any]]]
CALLER_IDLE = 150.0  # a connection quiet this long is closed; an upgrade's caller runs a command up to 60 s
Crashed = Callable[["FreezeService", int], Awaitable[str]]  # what thaws a crash freeze into the next daemon
REPAIR_FIRST = 1.0  # the longest the hand-over's replay waits for the flush repair (`_replay_after_repair`)
CRASH = "crash of ovs-vswitchd"  # the freeze reason's words for a freeze the guard made


@dataclass
class Armed:
    """The crash guard's upcall sockets, held ready while a daemon lives (see `FreezeService._arm`), and the
    daemon's own upcall sockets, held unread (`FreezeService._hold`)."""

    handover: Handover
    scope: trio.CancelScope
    done: trio.Event = field(default_factory=trio.Event)  # the crash freeze holds the upcalls, or failed
    held: HeldUpcalls | None = None
    hold_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    fired: bool = False
    released: bool = False
    held_read: int = 0  # upcalls read from the dead daemon's sockets

    async def fire(self) -> Handover | None:
        """Take the upcalls now: the hand-over that holds them, or None if it could not in time."""
        self.fired = True
        self.handover.take_now.set()
        with trio.move_on_after(5):
            await self.handover.taken.wait()
            LOG.info(kv("guard.upcalls_taken", pids=",".join(map(str, self.handover.ours)),
                        held=self.read_held()))
            return self.handover
        return None

    def read_held(self) -> int:
        """Buffer what the dead daemon's sockets queued: the misses it never read, and every one sent to
        its pids until the take; how many."""
        ups = self.held.read() if self.held is not None else []
        for up in ups:
            self.handover.handle(up)
        self.held_read += len(ups)
        return len(ups)

    def release(self) -> None:
        """Stop holding the daemon's sockets, unless a crash freeze still reads them: a planned freeze
        asks the daemon to exit, and owns the upcalls itself."""
        if not self.fired:
            self.released = True
            self.hold_scope.cancel()

    def disarm(self) -> None:
        self.scope.cancel()


@dataclass(frozen=True)
class ServiceConfig:
    state_dir: Path = DEFAULT_STATE_DIR
    socket_path: Path = DEFAULT_SOCKET
    handover_timeout: float = 10.0  # after the flow-restore-wait clear: wait for the new daemon's pids
    flush_wait: float = 3.0  # then for its flush (it flushes right after programming its pids)
    poll_interval: float = 0.02
    max_buffer_packets: int = 10000
    max_buffer_bytes: int = 16 << 20
    crash_ttl: float = 120.0  # the lease of a freeze the crash guard made
    crash_loop: tuple[int, float] = (3, 600.0)  # this many crashes within this many seconds: stay out

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def snapshot_file(self) -> Path:
        return self.state_dir / "freeze.snapshot"


class FreezeService:
    def __init__(
        self, config: ServiceConfig, backend: Backend, *, clock: Callable[[], float] = time.time,
        boot: Callable[[], str] = machine.current_boot,
    ) -> None:
        self.config = config
        self.backend = backend
        self.boot = boot()
        self.store = StateStore(config.state_file)
        self.clock = clock
        self._unreadable = ""  # why the state file could not be read at start (it was moved aside)
        try:
            self.state = self.store.load()
        except machine.StateFileError as exc:
            # Unknown freeze state: never crash-loop on it.  The file is kept aside and the service starts
            # idle; run() clears flow-restore-wait, since nothing can say whose freeze set it.
            self._unreadable = f"{exc}; moved to {self.store.quarantine(clock())}"
            self.state = machine.FreezeState()
        self.pinner: Pinner | None = None
        self.handover: Handover | None = None
        self.restorer: Restorer | None = None  # instead of both, for a datapath that lives in the daemon
        self._dp: Datapath | None = None
        self._nursery: trio.Nursery | None = None
        self._thaw = trio.Event()
        self._idle = trio.Event()  # set when no session runs
        self._idle.set()
        self._session_scope = trio.CancelScope()
        self._carried: MissBuffer | None = None  # misses taken before a detach, replayed after the reattach
        self._early: Handover | None = None  # a crash's upcalls, owned before its freeze (`_arm`)
        self._armed: Armed | None = None  # the guard's, while a daemon lives
        self._lock = trio.Lock()  # one command at a time
        self.crashes = CrashLoop(*config.crash_loop)
        self._checkpoint: Checkpoint | None = None
        self._upgrader: Upgrader | None = None
        self._hooks: Mapping[str, Hook] = {}
        self._upgrading = False
        self.profile = Profile()  # the last freeze's and hand-over's phases
        self._fresh: PinSet | None = None  # the pins the freeze just took, for its session (not re-read)
        self.gaps: tuple[str, ...] = ()  # what the last freeze's snapshot could not read

    # --- state -----------------------------------------------------------------------------------

    def _apply(self, event: Event, detail: str = "", **changes: Any) -> None:
        nxt = machine.step(self.state, event, now=self.clock(), detail=detail, **changes)
        try:
            self.store.save(nxt)
        except OSError as exc:
            if event in (Event.FREEZE, Event.RENEW):  # refused before anything changed
                raise machine.StateFileError(f"cannot save the freeze state: {exc}") from exc
            # Towards a thaw the safe act comes first: a full or read-only disk never keeps a freeze.
            LOG.error(kv("state.not_saved", on=event.value, error=describe(exc)))
        self.state = nxt
        LOG.info(kv("state", state=nxt.state.value, reason=nxt.reason))
        if nxt.state is State.HANDING_OVER:
            self._thaw.set()

    # --- commands --------------------------------------------------------------------------------

    async def freeze(self, ttl: float, datapath: str = DEFAULT_DATAPATH) -> dict[str, Any]:
        async with self._lock:
            if self.state.state is State.FROZEN and CRASH in self.state.reason:
                return self.status_doc()  # ExecStop after a crash: the guard froze first; join its freeze
            if self.state.state in ACTIVE:
                raise TransitionRefused(f"cannot freeze while {self.state.state.value}")
            if self.crashes.looping(self.clock()) and not self._daemon_alive():
                raise TransitionRefused(f"ovs-vswitchd is crash-looping ({self._loop_text()}): not freezing")
            await self._freeze(ttl, datapath)
            return self.status_doc()

    async def _freeze(self, ttl: float, datapath: str, crash: str = "",
                      openflow: Sequence[BridgeOpenFlow] | None = None) -> None:
        machine.check_ttl(ttl)
        if not crash and self._armed is not None:
            self._armed.release()  # until the freeze ends or fails (`_hold`)
        self.profile = Profile()
        path = self.config.snapshot_file
        try:  # a fresh machine has no state directory: only systemd's StateDirectory= ever made one
            files.private_dir(path.parent)
        except OSError as exc:
            raise machine.StateFileError(f"cannot create {path.parent}: {exc.strerror or exc}") from exc
        async with self.backend.open_datapath(datapath) as dp:
            pins = await self.backend.snapshot(dp, path, openflow=openflow, profile=self.profile)
        self.gaps = pins.gaps
        self._apply(
            Event.FREEZE,
            detail=crash,
            ttl=ttl,
            datapath=datapath,
            snapshot_path=str(path),
            counters={"flows": len(pins.flows), "vports": len(pins.vports)},
            boot_id=self.boot,
        )
        self._fresh = pins
        with self.profile.span("freeze.session"):
            await self._start_session()
        if self.state.state is not State.FROZEN:
            raise control.ControlError(f"freeze failed and was undone: {self.state.error}")

    async def renew(self, ttl: float) -> dict[str, Any]:
        async with self._lock:
            self._apply(Event.RENEW, ttl=ttl)
            return self.status_doc()

    async def thaw(self, *, wait: bool = True) -> dict[str, Any]:
        async with self._lock:
            self._apply(Event.THAW)
            await self._attach_for_hand_over()
        if wait:
            with trio.fail_after(self.config.handover_timeout + 30):
                await self._idle.wait()
        return self.status_doc()

    async def detach(self) -> dict[str, Any]:
        """Let go of the datapath while staying frozen (flow-restore-wait set, lease running): the kernel
        module is about to be reloaded, which would otherwise fail the session and thaw.  `reattach`
        resumes, as a restarted service does."""
        async with self._lock:
            if self.state.state is not State.FROZEN or self._idle.is_set():
                raise TransitionRefused(f"cannot detach while {self.state.state.value}"
                                        + (" and detached" if self._idle.is_set() else ""))
            self._session_scope.cancel()
            with trio.fail_after(30):
                await self._idle.wait()
            self._carried = self.handover.buffer if self.handover is not None else None
            LOG.info(kv("session.detached", datapath=self.state.datapath,
                        misses_kept=len(self._carried.buffered) if self._carried else 0))
            return self.status_doc()

    async def reattach(self) -> dict[str, Any]:
        """Pin and take the upcalls again, on the datapath as it is now (e.g. restored into a new module)."""
        async with self._lock:
            if self.state.state is not State.FROZEN or not self._idle.is_set():
                raise TransitionRefused(f"cannot reattach while {self.state.state.value}"
                                        + ("" if self._idle.is_set() else " and attached"))
            await self._start_session()
            if self.state.state is not State.FROZEN:
                raise control.ControlError(f"reattach failed and thawed: {self.state.error}")
            return self.status_doc()

    async def take_upcalls(self) -> dict[str, Any]:
        """The old daemon is about to be stopped: own the upcalls from now on (see Handover.take_now)."""
        if self.state.state is State.FROZEN and self.restorer is not None:
            return self.status_doc()  # a userspace datapath's upcalls never leave its daemon
        if self.state.state is not State.FROZEN or self.handover is None:
            raise TransitionRefused(f"cannot take the upcalls while {self.state.state.value}")
        self._take_now()
        with trio.fail_after(10):
            await self.handover.taken.wait()
        return self.status_doc()

    def _take_now(self) -> None:
        if self.handover is not None:
            self.handover.take_now.set()
        if self.pinner is not None:
            self.pinner.stop_following()

    async def status(self) -> dict[str, Any]:
        doc = self.status_doc()
        if self._dp is not None:
            # OSError: the session may be closing its datapath at this very moment (the end of a hand-over);
            # a status asked then is still a status, not an error (found by the fault matrix: EBADF)
            with trio.move_on_after(2), suppress(OSError):
                info, vports = await self._dp.info(), await self._dp.ports()
                doc["datapath_flows"] = info.stats.flows
                doc["upcall_owners"] = portid_owners(upcall_pids(info, vports))
        return doc

    def status_doc(self) -> dict[str, Any]:
        s = self.state
        doc: dict[str, Any] = {k: v for k, v in s.to_json().items() if k != "dpfreeze_state"}
        doc["lease_remaining"] = s.lease_remaining(self.clock())
        if self.pinner is not None:
            doc["pin"] = self.pinner.stats.as_dict()
        if self.handover is not None:
            doc["handover"] = self.handover.stats.as_dict(self.handover.buffer)
        if self.restorer is not None:
            doc["restorer"] = self.restorer.stats.as_dict()
        doc["profile"] = list(self.profile.spans)
        doc["snapshot_gaps"] = list(self.gaps)
        doc["peak_rss_kb"] = peak_rss_kb()  # this service process's, pins and miss buffer included
        return doc

    async def handle(self, req: control.Request, caller: Caller | None = None) -> dict[str, Any]:
        """The control-socket dispatcher: refusals become one-line ControlErrors.  `caller` is the
        connection's, for an upgrade run here."""
        try:
            if req.cmd == "upgrade":
                return await self._upgrade(req.args, caller)
            if req.cmd == "upgrade-ran":
                if caller is None or not caller.busy:
                    raise control.ControlError("no upgrade of this connection waits for a command")
                await caller.ran(req.args.get("error", ""))
                return await self._answer(caller)
            if req.cmd == "freeze":
                return await self.freeze(req.args.get("ttl", DEFAULT_TTL),
                                         req.args.get("datapath", DEFAULT_DATAPATH))
            if req.cmd == "renew":
                return await self.renew(req.args.get("ttl", DEFAULT_TTL))
            if req.cmd == "thaw":
                return await self.thaw(wait=req.args.get("wait", True))
            if req.cmd == "take-upcalls":
                return await self.take_upcalls()
            if req.cmd == "detach":
                return await self.detach()
            if req.cmd == "reattach":
                return await self.reattach()
            if req.cmd == "crash-check":
                return await self.crash_check()
            if (hook := self._hooks.get(req.cmd)) is not None:
                return await hook(self, req.args)
            return await self.status()
        except control.ControlError:
            raise
        except TransitionRefused as exc:
            raise control.ControlError(str(exc)) from exc
        except Exception as exc:  # a failed command must never take the service (and its pin) down
            raise control.ControlError(describe(exc)) from exc

    async def _upgrade(self, args: dict[str, Any], caller: Caller | None) -> dict[str, Any]:
        if self._upgrader is None or self._nursery is None or caller is None:
            raise control.ControlError("this service runs no upgrades")
        if self._upgrading:
            raise control.ControlError("an upgrade is already running in this service")
        caller.busy, self._upgrading = True, True
        self._nursery.start_soon(self._upgrade_task, self._upgrader, args, caller)
        return await self._answer(caller)

    @staticmethod
    async def _answer(caller: Caller) -> dict[str, Any]:
        answer = await caller.next_answer()
        if isinstance(answer, Exception):  # a refusal reads as the command's own would, in one line
            caller.busy = False
            raise control.ControlError(str(answer) if isinstance(answer, DpfreezeError) else describe(answer))
        if "run" not in answer:
            caller.busy = False
        return answer

    async def _upgrade_task(self, upgrader: Upgrader, args: dict[str, Any], caller: Caller) -> None:
        answer: dict[str, Any] | Exception
        try:
            answer = await upgrader(self, args, caller)
        except Exception as exc:  # a refusal (nothing changed), or a failure the report could not hold
            answer = exc
        finally:
            self._upgrading = False
        await caller.finish(answer)

    # --- tasks -----------------------------------------------------------------------------------

    async def run(self, *, hold_fd: int | None = None, orphaned: Orphaned | None = None,
                  crashed: Crashed | None = None, checkpoint: Checkpoint | None = None,
                  upgrader: Upgrader | None = None, hooks: Mapping[str, Hook] | None = None,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled or SIGTERM/SIGINT; the state on disk is left for the next start.  With
        `hold_fd`, also until that descriptor reads end-of-file (its writer, the command that started this
        service, is gone) and no freeze is active; `orphaned` then finishes a freeze that command left.
        With `crashed`, the crash guard runs, and `crashed` thaws each crash freeze into the next daemon;
        `checkpoint` then keeps the OpenFlow state a crash freeze saves (the dead daemon cannot be asked).
        With `upgrader`, a command's `upgrade` request runs here, not in the command's process; `hooks`
        answer the requests they are named for."""
        self._upgrader, self._hooks = upgrader, hooks or {}
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._signals, nursery.cancel_scope)
            if hold_fd is not None:
                nursery.start_soon(self._serve_while_held, hold_fd, nursery.cancel_scope, orphaned)
            await nursery.start(self._listen)
            if self._unreadable:
                LOG.warning(kv("service.unreadable_state", error=self._unreadable))
                if why := await self._clear_flow_restore_wait():
                    LOG.error(kv("service.flow_restore_wait_not_cleared", error=why))
            if self.state.state in ACTIVE and self.state.boot_id and self.state.boot_id != self.boot:
                # Nothing of that freeze survived the reboot: re-pinning a datapath that only has its name
                # would write an old snapshot into a new datapath.  End it, clearing flow-restore-wait.
                LOG.warning(kv("service.freeze_of_another_boot", state=self.state.state.value))
                await self._fail("the freeze was made before this boot; its datapath is gone")
            elif self.state.state in ACTIVE:
                LOG.warning(kv("service.resume", state=self.state.state.value, reason=self.state.reason))
                await self._start_session()
            nursery.start_soon(self._lease)
            if crashed is not None:
                self._checkpoint = checkpoint
                nursery.start_soon(self._guard, crashed)
                if checkpoint is not None:
                    nursery.start_soon(checkpoint.run)
            task_status.started()

    async def _clear_flow_restore_wait(self) -> str:
        """Clear flow-restore-wait, bounded and shielded; returns why it failed ("" when it did not)."""
        with trio.CancelScope(shield=True), trio.move_on_after(FRW_ATTEMPTS * FRW_TIMEOUT + 5) as scope:
            try:
                await self.backend.set_flow_restore_wait(False)
            except Exception as exc:
                return describe(exc)
        return "no answer in time" if scope.cancelled_caught else ""

    async def _serve_while_held(self, fd: int, scope: trio.CancelScope, orphaned: Orphaned | None) -> None:
        try:
            await trio.lowlevel.wait_readable(fd)
        finally:
            os.close(fd)
        LOG.info(kv("service.caller_gone", state=self.state.state.value))
        if orphaned is not None and self.state.state is State.FROZEN:
            try:
                LOG.warning(kv("service.orphaned", done=await orphaned(self)))
            except Exception as exc:  # the lease still ends the freeze
                LOG.error(kv("service.orphan_failed", error=describe(exc)))
        while self.state.state in ACTIVE or not self._idle.is_set():  # the lease still ends the freeze
            await trio.sleep(0.2)
        scope.cancel()

    async def _guard(self, crashed: Crashed) -> None:
        """The crash guard (see guard.py): ovs-vswitchd dead with its pidfile left behind, while nothing is
        frozen, is frozen at once (lease `crash_ttl`, upcalls taken before systemd's restart begins), and
        `crashed` thaws that freeze into the next daemon.  A crash loop ends the guard's freeze and makes it
        stand aside until the loop's window has passed."""
        assert self._nursery is not None
        dead = 0
        while True:
            pid = self.backend.daemon_pid()
            if pid is None or pid == dead:
                await trio.sleep(GUARD_POLL)
                continue
            armed = await self._nursery.start(self._arm, DEFAULT_DATAPATH, pid)
            await self.backend.wait_exit(pid)
            died, dead = trio.current_time(), pid
            # A crash leaves its pidfile, unless systemd has reaped it and removed the file first (seen in
            # CI): then its upcall pids tell, dangling where an orderly exit resets them.
            crash = self.backend.daemon_pid() == pid or await self._crash_leftover(armed)
            judged = trio.current_time()
            loop = crash and self.crashes.record(self.clock())
            if armed and (not crash or loop or self.state.state in ACTIVE):
                armed.disarm()
            if not crash:
                LOG.info(kv("guard.stopped", pid=pid, state=self.state.state.value))
                continue
            if loop:
                LOG.error(kv("guard.crash_loop", pid=pid, crashes=self._loop_text()))
                await self._end_crash_freeze(f"ovs-vswitchd is crash-looping ({self._loop_text()})")
                continue
            if self.state.state in ACTIVE:  # a freeze of its own (an upgrade) is under way: it copes
                LOG.warning(kv("guard.crash", pid=pid, state=self.state.state.value))
                continue
            try:
                taken = await self._crash_freeze(f"pid {pid}", armed)
            except Exception as exc:  # no kernel datapath, say: nothing of the stock path is changed
                LOG.error(kv("guard.freeze_failed", pid=pid, error=describe(exc)))
                continue
            LOG.warning(kv("guard.crash_frozen", pid=pid, flows=self.state.counters.get("flows"),
                           after_s=f"{trio.current_time() - died:.3f}", judged_s=f"{judged - died:.3f}",
                           upcalls_after_s=f"{taken - died:.3f}" if taken else "at the freeze",
                           held=armed.held_read if armed else 0))
            self._nursery.start_soon(self._crashed, crashed, pid)

    async def _crash_freeze(self, what: str, armed: Armed | None = None) -> float | None:
        """Freeze after a crash, the upcalls taken first; when they were taken (trio's clock), if early."""
        async with self._lock:
            if self.state.state in ACTIVE:
                if armed:
                    armed.disarm()
                return None
            assert self._nursery is not None
            armed = armed or await self._nursery.start(self._arm, DEFAULT_DATAPATH)
            try:
                self._early = await armed.fire() if armed else None
                taken = trio.current_time() if self._early else None
                state = self._checkpoint.state() if self._checkpoint else ()
                await self._freeze(self.config.crash_ttl, DEFAULT_DATAPATH, f"{CRASH} {what}", state)
                self._take_now()
                return taken
            finally:
                self._early = None  # its buffer is the session's now, and no later one's
                if armed:
                    armed.done.set()

    async def _arm(self, datapath: str, pid: int | None = None, *,
                   task_status: trio.TaskStatus[Armed | None] = trio.TASK_STATUS_IGNORED) -> None:
        """Upcall sockets held ready while the daemon `pid` lives (None: no kernel datapath to hold them
        for), and the daemon's own held unread (`_hold`).
        Why: at a crash the dead daemon's upcall pids drop every miss until someone owns them, and opening
        sockets, then the freeze's snapshot, took 0.4-1.7 s under TCG; armed, the take is two requests.  Once
        fired they hold the upcalls until the freeze's session has taken them; their misses start its
        buffer (shared), and what they still hold is read before they close."""
        armed = None
        try:
            async with self.backend.open_datapath(datapath) as dp:
                if dp.lives_in_daemon:
                    return
                handover = Handover(dp, PinSet(await dp.info(), (), ()),
                                    MissBuffer(self.config.max_buffer_packets, self.config.max_buffer_bytes),
                                    poll_interval=self.config.poll_interval)
                handover.watch_owner = False  # armed: it takes when fired, and only then
                async with trio.open_nursery() as nursery:
                    await nursery.start(handover.run)
                    armed = Armed(handover, nursery.cancel_scope)
                    if pid is not None:
                        self._armed = armed
                        nursery.start_soon(self._hold, dp, pid, armed)
                    task_status.started(armed)
                    await armed.done.wait()
                    await self._drain(armed)
                    nursery.cancel_scope.cancel()
        except Exception as exc:  # no early take: the freeze takes the upcalls as it always did
            LOG.debug(kv("guard.arm_failed", error=describe(exc)))
        finally:
            if self._armed is armed:
                self._armed = None
            if armed is None:
                task_status.started(None)

    async def _hold(self, dp: Datapath, pid: int, armed: Armed) -> None:
        """Hold the daemon's own upcall sockets, unread, while it lives and nothing is frozen.
        Why: a socket lives while anyone holds it, so at the daemon's death the misses sent to its pids
        queue there, with those it never read, instead of being dropped: the 4-6 new flows a crash still
        lost with the armed take alone (0.13-0.26 s from the death to the take under TCG).  Held again
        when the pids name other sockets (the daemon changed its handlers), let go at a planned freeze
        (`Armed.release`), kept once fired until the crash freeze's session holds the upcalls."""
        def planned() -> bool:
            return not armed.fired and (armed.released or self.state.state in ACTIVE)

        refused = False
        while True:
            if armed.released and self.state.state not in ACTIVE and not self._lock.locked():
                armed.released = False  # that freeze is over, or was refused, and the daemon lives on
            if planned():
                await trio.sleep(HOLD_POLL)
                continue
            try:
                with trio.CancelScope() as armed.hold_scope:
                    named = await armed.handover.pids_now()
                    async with dp.hold_upcalls(pid, named) as held:
                        armed.held = held
                        while not planned() and (armed.fired or await armed.handover.pids_now() == named):
                            await trio.sleep(HOLD_POLL)
            except ProcessLookupError:  # it is gone: the guard judges that death
                pass
            except Exception as exc:  # no pidfd_getfd (Linux < 5.6), no ptrace access: the take alone
                if not refused:
                    LOG.info(kv("guard.hold_refused", pid=pid, error=describe(exc)))
                refused = True
            finally:
                armed.held = None
            await trio.sleep(HOLD_POLL)

    def _successor(self, early: Handover) -> Handover | None:
        """The crash freeze's session hand-over once it holds the upcalls (it shares `early`'s buffer)."""
        session = self.handover
        if session is not None and session.buffer is early.buffer and session.stats.taken_over:
            return session
        return None

    async def _drain(self, armed: Armed) -> None:
        """The freeze's session is about to take the upcalls (or the freeze failed): hold them until it has
        (closing first lost every miss in between: 250 ms of new flows under TCG), then read what the
        early sockets and the dead daemon's still hold, until quiet a moment, and count it as the
        session's."""
        early = armed.handover
        if not early.stats.taken_over:
            return
        with trio.move_on_after(10):
            while self.state.state in ACTIVE and self._successor(early) is None:
                await trio.sleep(self.config.poll_interval)
        if (session := self._successor(early)) is None:
            return
        with trio.move_on_after(2):
            seen = -1
            while early.consumed != seen:
                seen = early.consumed
                await trio.sleep(5 * self.config.poll_interval)
                armed.read_held()
        session.stats.misses += early.stats.misses
        session.stats.action_upcalls += early.stats.action_upcalls
        session.taken_at = early.taken_at

    async def crash_check(self) -> dict[str, Any]:
        """ExecStartPre's question after any stop: did a crash leave the datapath unguarded?  systemd runs no
        ExecStop when the daemon died on its own, so if the guard did not freeze (not running, or too slow),
        this freezes now, before the next daemon can start without flow-restore-wait and flush.  What a crash
        leaves and an orderly exit does not: upcall pids that no live socket holds (the exit resets them)."""
        async with self._lock:
            pass  # a freeze under way (the guard's) is complete, flow-restore-wait set, once this is ours
        if self.crashes.looping(self.clock()):
            LOG.warning(kv("guard.crash_loop", crashes=self._loop_text(), at="the next start"))
        elif self.state.state not in ACTIVE and await self._crash_leftover():
            await self._crash_freeze("found at the next start")
            LOG.warning(kv("guard.crash_frozen", found="at the next start",
                           flows=self.state.counters.get("flows")))
        return self.status_doc()

    async def _crash_leftover(self, armed: Armed | None = None) -> bool:
        """Upcall pids that no live socket holds, or only the guard (`_hold`): what a crash leaves.  Read
        through the guard's armed datapath where it has one (opening one anew took a good part of a second
        under TCG)."""
        if self._daemon_alive():
            return False
        try:
            if armed is not None:
                pids = await armed.handover.pids_now()
            else:
                async with self.backend.open_datapath(DEFAULT_DATAPATH) as dp:
                    pids = upcall_pids(await dp.info(), await dp.ports())
        except Exception:  # no kernel datapath: nothing to guard
            return False
        live = live_portids()
        held = armed.held.portids if armed is not None and armed.held is not None else frozenset()
        return any(p and (p not in live or p in held) for p in pids)

    async def _crashed(self, crashed: Crashed, pid: int) -> None:
        try:
            LOG.warning(kv("guard.thawed", done=await crashed(self, pid)))
        except Exception as exc:  # the lease still ends the freeze
            LOG.error(kv("guard.thaw_failed", error=describe(exc)))

    async def _end_crash_freeze(self, detail: str) -> None:
        async with self._lock:
            if self.state.state is State.FROZEN and CRASH in self.state.reason:
                self._apply(Event.FAIL, detail=detail)
                await self._attach_for_hand_over()

    def _daemon_alive(self) -> bool:
        pid = self.backend.daemon_pid()
        return pid is not None and ovsenv.process_alive(pid)

    def _loop_text(self) -> str:
        limit, window = self.config.crash_loop
        return f"{len(self.crashes.recent(self.clock()))} crashes within {window:g} s, the limit is {limit}"

    async def _signals(self, scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                LOG.warning(
                    kv("service.stop", signal=signal.Signals(signum).name, state=self.state.state.value)
                )
                scope.cancel()

    async def _listen(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        path = self.config.socket_path
        await _claim_socket_path(path)
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        tmp = path.with_name(path.name + ".new")
        tmp.unlink(missing_ok=True)
        old = os.umask(0o177)
        try:
            await sock.bind(str(tmp))
        finally:
            os.umask(old)
        sock.listen(16)
        tmp.rename(path)  # clients never find a socket that does not listen yet
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                await trio.serve_listeners(
                    self._serve_one, [trio.SocketListener(sock)], handler_nursery=nursery
                )
        finally:
            with suppress(OSError):
                path.unlink()

    async def _serve_one(self, stream: trio.SocketStream) -> None:
        caller = Caller(controlsock.peer_credentials(stream.socket)[0])
        try:
            await controlsock.serve_stream(stream, partial(self.handle, caller=caller),
                                           idle_timeout=CALLER_IDLE)
        except Exception as exc:  # one client's broken connection is not the service's problem
            LOG.info(kv("control.connection_error", error=describe(exc)))
        finally:
            caller.gone()

    async def _lease(self) -> None:
        while True:
            remaining = self.state.lease_remaining(self.clock())
            if remaining is not None and remaining <= 0 and self.state.state is State.FROZEN:
                async with self._lock:
                    if self.state.state is State.FROZEN and self.state.expired(self.clock()):
                        LOG.warning(kv("lease.expired", ttl=self.state.ttl))
                        self._apply(Event.EXPIRE)
                        await self._attach_for_hand_over()
            await trio.sleep(min(remaining, 0.5) if remaining and remaining > 0 else 0.5)

    async def _attach_for_hand_over(self) -> None:
        """A detached freeze still needs its hand-over (flow-restore-wait cleared, flush repaired); if the
        datapath is gone, the session fails and `_fail` clears flow-restore-wait all the same."""
        if self.state.state is State.HANDING_OVER and self._idle.is_set():
            await self._start_session()

    async def _start_session(self) -> None:
        assert self._nursery is not None
        self._thaw = trio.Event()
        if self.state.state is State.HANDING_OVER:
            self._thaw.set()
        self._idle = trio.Event()
        await self._nursery.start(self._session)

    async def _session(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        started = False

        def ready() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        self._session_scope = trio.CancelScope()  # cancelled by `detach` only: no failure, no thaw
        try:
            with self._session_scope:
                try:
                    await self._attached(ready)
                except Exception as exc:
                    if not (started and await self._recreated(exc)):
                        raise
                    await self._attached(ready)  # once: a second loss of the datapath ends the freeze
        except Exception as exc:
            LOG.error(kv("session.failed", error=describe(exc)))
            await self._fail(describe(exc))
        finally:
            if self.state.state is State.THAWED:  # in the log too: a failed thaw's status reaches no one
                LOG.info(kv("session.profile", **self.profile.totals()))
                LOG.info(kv("session.peak_mb", **self.profile.peaks()))
            self._dp = None
            self._idle.set()
            if not started:
                task_status.started()

    async def _recreated(self, exc: Exception) -> bool:
        """The datapath went away under a freeze (a module unload, `ovs-dpctl del-dp`): put it back from
        the snapshot, vports with their numbers and flows, so that traffic resumes and the next daemon finds
        it; a freeze that ended because of it would leave no datapath at all until a daemon made a new one."""
        if self.state.state is not State.FROZEN:
            return False
        try:
            what = await self.backend.recreate(Path(self.state.snapshot_path), self.state.datapath)
        except Exception as again:
            LOG.error(kv("session.recreate_failed", error=describe(again), after=describe(exc)))
            return False
        if what:
            LOG.warning(kv("session.datapath_recreated", after=describe(exc), what=what))
        return bool(what)

    async def _attached(self, ready: Callable[[], None]) -> None:
        """The session proper: pin, take the upcalls, wait for the thaw, hand over."""
        async with self.backend.open_datapath(self.state.datapath) as dp:
            self._dp = dp
            # The freeze's own pins; a resumed or re-attached session reads them back from the snapshot.
            pins, self._fresh = self._fresh or self.backend.load_pins(Path(self.state.snapshot_path),
                                                                      self.state.datapath), None
            if dp.lives_in_daemon:
                await self._restoring(dp, pins, ready)
                return
            self.pinner = Pinner(dp, pins, poll_interval=self.config.poll_interval)
            if self.state.state is State.FROZEN:
                self.pinner.old_daemons = await upcall_owners(dp)
            carried, self._carried = self._carried, None
            early = self._early.buffer if self._early is not None else None
            self.handover = Handover(
                dp,
                pins,
                carried or early or MissBuffer(self.config.max_buffer_packets, self.config.max_buffer_bytes),
                poll_interval=self.config.poll_interval,
            )
            self.handover.profile = self.profile
            if carried is not None:  # the same port numbers were restored: they replay as they are
                self.handover.stats.misses = len(carried.buffered)
            async with trio.open_nursery() as nursery:
                with self.profile.span("session.pin"):
                    await nursery.start(self.pinner.run)  # first: on resume, repairs are the most urgent
                if self.state.state is State.FROZEN:
                    with self.profile.span("session.upcall-sockets"):
                        await nursery.start(self.handover.run)
                    self.pinner.new_vport_pids = self.handover.ours  # re-created vports upcall to us
                    with self.profile.span("session.flow-restore-wait"):
                        await self.backend.set_flow_restore_wait(True)  # before freeze() returns
                ready()
                await self._thaw.wait()
                report = await self._hand_over(dp, pins, self.pinner, self.handover)
                nursery.cancel_scope.cancel()
            self._apply(Event.DONE, report=report)
            self._write_report()

    async def _restoring(self, dp: Datapath, pins: PinSet, ready: Callable[[], None]) -> None:
        """The session for a datapath that lives in the daemon (see `restorer`): flow-restore-wait set, the
        snapshot put into the new daemon's datapath when it appears, flow-restore-wait cleared at the thaw."""
        self.restorer = Restorer(dp, pins, frozen_at=self.state.frozen_at,
                                 daemon_started=self.backend.daemon_started,
                                 poll_interval=self.config.poll_interval)
        async with trio.open_nursery() as nursery:
            if self.state.state is State.FROZEN:
                await nursery.start(self.restorer.run)
                await self.backend.set_flow_restore_wait(True)
            ready()
            await self._thaw.wait()
            nursery.cancel_scope.cancel()
        await self.backend.set_flow_restore_wait(False)
        stats = self.restorer.stats
        outcome = ("snapshot restored into the new daemon's datapath" if self.restorer.done.is_set()
                   else "no new daemon seen: nothing restored")
        flows = None
        with suppress(OSError), trio.move_on_after(5):  # the daemon may be gone: the report still stands
            flows = (await dp.info()).stats.flows
        report: dict[str, Any] = {"outcome": outcome, "restorer": stats.as_dict(), "datapath_flows": flows,
                  "upcall_owners": []}
        LOG.info(kv("handover.done", outcome=outcome))
        self._apply(Event.DONE, report=report)
        self._write_report()

    async def _hand_over(
        self, dp: Datapath, pins: PinSet, pinner: Pinner, handover: Handover
    ) -> dict[str, Any]:
        """Clear flow-restore-wait, wait for the new daemon's pids and flush, re-install, replay, release."""
        pinner.frozen = False
        handover.handing_over = True
        pinner.flush_seen = trio.Event()

        async def repair_limit() -> None:  # what the new daemon reads as it starts: not before the thaw
            pinner.repair_limit = startup_flow_limit(await self.backend.flow_limit())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(repair_limit)
            with self.profile.span("thaw.flow-restore-wait"):
                await self.backend.set_flow_restore_wait(False)
        outcome = "no restart seen: nothing to hand over"
        if handover.stats.taken_over and handover.old_owner_alive():
            outcome = "the old daemon still runs: upcalls given back to it"
            pinner.release()
            await handover.give_back()
            await handover.replay()
        elif handover.stats.taken_over:
            outcome = "timed out waiting for the new daemon"
            owner = False
            with trio.move_on_after(self.config.handover_timeout), self.profile.span("thaw.new-owner"):
                await handover.wait_new_owner()
                owner = True
            if owner:
                outcome = "new daemon owns the upcalls; flush repaired"
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._replay_after_repair, handover, pinner)
                    with self.profile.span("thaw.flush-repair"):
                        with trio.move_on_after(self.config.flush_wait) as wait:
                            await pinner.flush_seen.wait()
                        if wait.cancelled_caught and (n := await pinner.settle_flush()) is not None:
                            outcome = f"new daemon owns the upcalls; no flush seen, {n} re-installed"
            pinner.release()  # from here on, re-installing what its revalidators delete would be a fight
            if not owner:
                await self._replay(handover)
            await handover.give_back()
        info, vports = await dp.info(), await dp.ports()
        report: dict[str, Any] = {
            "outcome": outcome,
            "pin": pinner.stats.as_dict(),
            "handover": handover.stats.as_dict(handover.buffer),
            "recirculating_flows": len(recirculating(pins.flows)),  # the new daemon deletes these
            "datapath_flows": info.stats.flows,
            "upcall_owners": portid_owners(upcall_pids(info, vports)),
        }
        LOG.info(kv("handover.done", outcome=outcome))
        return report

    async def _replay_after_repair(self, handover: Handover, pinner: Pinner) -> None:
        """The backlog once the flush is repaired, or REPAIR_FIRST after the new daemon took its pids (it
        flushes as it takes them).  Why: from the flush to their repair the flows in use miss too, and
        their misses (an ARP reply, a TCP segment) queued behind hundreds of replayed ones were answered
        more than a second late (the requester's retry) at hand-overs under TCG.  The most recently used
        pins go back first; the backlog has waited seconds, a fraction more is cheap."""
        with trio.move_on_after(REPAIR_FIRST):
            await pinner.flush_seen.wait()
        await self._replay(handover)

    async def _replay(self, handover: Handover) -> None:
        with self.profile.span("thaw.replay"):
            await handover.replay()

    def _write_report(self) -> None:
        """The thaw report beside the state file, JSON and text, each written atomically."""
        try:
            self._write_report_files()
        except OSError as exc:
            LOG.error(kv("report.not_saved", error=describe(exc)))

    def _write_report_files(self) -> None:
        doc = self.status_doc()
        files.write_atomic(self.config.state_dir / "report.json",
                           (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())
        files.write_atomic(self.config.state_dir / "report.txt", (render_status(doc) + "\n").encode())

    async def _fail(self, detail: str) -> None:
        """Any failure: persist it, clear flow-restore-wait (best effort, bounded), end THAWED."""
        if why := await self._clear_flow_restore_wait():
            detail += f"; clearing flow-restore-wait failed too: {why}"
        with suppress(TransitionRefused):
            self._apply(Event.FAIL, detail=detail)
        with suppress(TransitionRefused):
            self._apply(Event.FAIL, detail=detail)


# Each of a snapshot's reads (an `ovs-ofctl` dump, an OVSDB select): a daemon with 20 000 OpenFlow rules
# on a loaded guest took more than 10 s to dump them; ovs-save waits without any limit.
SNAPSHOT_READ_TIMEOUT = 60.0


class SystemBackend:
    """The real thing: the kernel datapath over netlink, snapshot files, the OVSDB IDL."""

    def __init__(self, env: OvsEnv | None = None) -> None:
        self.env = env or ovsenv.current()

    def open_datapath(self, name: str) -> AbstractAsyncContextManager[Datapath]:
        return datapaths.open_any(name, self.env)

    def daemon_started(self) -> float | None:
        return self.env.started(ovsenv.VSWITCHD)

    async def snapshot(self, dp: Datapath, path: Path, *, openflow: Sequence[BridgeOpenFlow] | None = None,
                       profile: Profile | None = None) -> PinSet:
        profile = profile or Profile()
        snap = await take_snapshot(dp, env=self.env, saved_openflow=openflow, profile=profile,
                                   timeout=SNAPSHOT_READ_TIMEOUT)
        with profile.span("snapshot.save"):
            await trio.to_thread.run_sync(partial(snap.save, path, openflow_beside=True))
        return pins_of(snap, dp.name)

    def load_pins(self, path: Path, datapath: str) -> PinSet:
        return pins_of(Snapshot.load(path), datapath)

    async def recreate(self, snapshot: Path, datapath: str) -> str:
        if is_netdev_name(datapath):  # its daemon's to make
            return ""
        if not Path("/sys/module/openvswitch").is_dir():
            await command.run(["modprobe", "openvswitch"], timeout=60)
        snap = Snapshot.load(snapshot)
        if not await open_or_create(snap.datapath(datapath)):
            return ""
        async with open_datapath(datapath) as dp:
            report = await restore(dp, snap)
        failed = f", {len(report.failures)} failed" if report.failures else ""
        return (f"{datapath} re-created from the snapshot: {len(report.vports_added)} vports, "
                f"{report.flows_added} flows{failed}")

    def daemon_pid(self) -> int | None:
        try:
            return self.env.pid(ovsenv.VSWITCHD)
        except ovsenv.DaemonNotRunning:
            return None

    async def wait_exit(self, pid: int) -> None:
        await wait_exit(pid)

    async def flow_limit(self) -> str | None:
        with suppress(ovsdb.OvsdbError, OSError, trio.TooSlowError):
            return (await ovsdb.get_other_config(self.env, timeout=FRW_TIMEOUT)).get("flow-limit")
        return None

    async def set_flow_restore_wait(self, on: bool) -> None:
        """Retried: a flow-restore-wait left set by a failed write stops all new flows."""
        for attempt in range(1, FRW_ATTEMPTS + 1):
            try:
                await ovsdb.set_flow_restore_wait(on, self.env, timeout=FRW_TIMEOUT)
                return
            except ovsdb.OvsdbError as exc:
                if attempt == FRW_ATTEMPTS:
                    raise
                LOG.warning(kv("frw.retry", value=on, attempt=attempt, error=str(exc)))


def pins_of(snap: Snapshot, datapath: str) -> PinSet:
    d = snap.datapath(datapath)
    return PinSet(d.info, d.vports, d.flows, snap.gaps)


def render_status(doc: dict[str, Any]) -> str:
    """The operator's view of a status document or thaw report (the text half of the report)."""
    lines = [f"state: {doc.get('state')}" + (f" ({doc['reason']})" if doc.get("reason") else "")]
    if doc.get("datapath"):
        lines.append(f"datapath: {doc['datapath']}  snapshot: {doc.get('snapshot_path')}")
    remaining = doc.get("lease_remaining")
    if remaining is not None:
        lines.append(f"lease: {remaining:.1f} s left of {doc.get('ttl'):g} s")
    if doc.get("error"):
        lines.append(f"error: {doc['error']}")
    report = doc.get("report") or {}
    pin = doc.get("pin") or report.get("pin") or {}
    if pin:
        lines.append(
            f"flows: pinned {doc.get('counters', {}).get('flows', '?')}, re-installed "
            f"{pin.get('reinstalled', 0)} (failed {pin.get('reinstall_failed', 0)}), flushes seen "
            f"{pin.get('flushes_detected', 0)}, vports re-created {pin.get('vports_recreated', 0)}, "
            f"suspects {len(pin.get('suspects', []))} (removed {pin.get('suspects_removed', 0)}); "
            f"the old daemon's own: {pin.get('deletes_accepted', 0)} deleted, "
            f"{pin.get('flows_adopted', 0)} added"
        )
    ho = doc.get("handover") or report.get("handover") or {}
    if ho:
        lines.append(
            f"upcalls: mode {ho.get('mode') or '-'}"
            + (" (handed over per-vport: the new daemon predates per-CPU dispatch)"
               if ho.get("switched_to_per_vport") else "")
            + f", taken over {ho.get('taken_over')}, misses "
            f"{ho.get('misses', 0)}, buffered {ho.get('buffered', 0)}, "
            f"replayed {ho.get('replayed', 0)}"
            + (f" (its sockets dropped {ho['new_owner_drops']})" if ho.get("new_owner_drops") else "")
            + ", "
            f"dropped {ho.get('overflow_packets', 0)} (overflow) + {ho.get('not_replayable', 0)} "
            f"(recirc_id != 0) + {ho.get('replay_failed', 0)} (failed)"
        )
    if report.get("outcome"):
        lines.append(
            f"hand-over: {report['outcome']}; {report.get('recirculating_flows', 0)} recirculating "
            "flows will be deleted by the new daemon"
        )
    for o in doc.get("upcall_owners") or report.get("upcall_owners") or []:
        who = (
            f"{o['process']}[{o['pid']}]"
            if o.get("pid")
            else ("alive, owner unknown" if o.get("alive") else "nobody (dead)")
        )
        lines.append(f"upcall portid {o['portid']}: {who}")
    return "\n".join(lines)


def describe(exc: BaseException) -> str:
    """One line for an error, looking inside the exception groups that nurseries wrap errors in."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


async def _claim_socket_path(path: Path) -> None:
    """Refuse to start beside a live service; remove the socket a dead one left behind, and nothing else:
    a path that is not a socket is refused, never deleted."""
    files.private_dir(path.parent)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise TransitionRefused(f"{path} exists and is not a socket: refusing to replace it")
    try:
        with trio.fail_after(2):
            stream = await trio.open_unix_socket(str(path))
        await stream.aclose()
    except (OSError, trio.TooSlowError):
        path.unlink(missing_ok=True)
        return
    raise TransitionRefused(f"another dpfreeze service is listening on {path}")
