"""`dpfreeze upgrade`: a hitless `ovs-ctl restart`, around any restart command.

freeze (the snapshot holds the OpenFlow state) -> restart (default: stop and start ovs-vswitchd as ovs-ctl
does) -> wait for the new daemon -> restore the OpenFlow state it lacks -> thaw -> verify -> report.  Any
failure after the freeze thaws (which clears flow-restore-wait) before the error is reported: a stale
flow-restore-wait is a total outage for new flows.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import outcome
import trio

from dpfreeze import command, files, kmod
from dpfreeze.command import CommandFailed
from dpfreeze.errors import DpfreezeError
from dpfreeze.freeze import machine
from dpfreeze.freeze.caller import Caller, CallerGone
from dpfreeze.freeze.control import ControlError
from dpfreeze.freeze.defaults import DEFAULT_TTL
from dpfreeze.freeze.pin import startup_flow_limit
from dpfreeze.freeze.service import render_status
from dpfreeze.log import Profile, kv, peak_rss_kb
from dpfreeze.ovs import appctl, datapaths, openflow, ovsdb
from dpfreeze.ovs.ovsenv import VSWITCHD, DaemonNotRunning, OvsEnv, daemon_argv, process_alive
from dpfreeze.snapshot import load_openflow
from dpif.netdev_datapath import is_netdev_name

LOG = logging.getLogger(__name__)


class UpgradeError(DpfreezeError):
    """The upgrade could not be done; flow-restore-wait was cleared, the new daemon may be running."""


class FreezeApi(Protocol):
    """The service, in-process or over the control socket."""

    async def freeze(self, ttl: float, datapath: str) -> dict[str, Any]: ...

    async def thaw(self, *, wait: bool = True) -> dict[str, Any]: ...

    async def take_upcalls(self) -> dict[str, Any]: ...

    async def renew(self, ttl: float) -> dict[str, Any]: ...

    async def detach(self) -> dict[str, Any]: ...

    async def reattach(self) -> dict[str, Any]: ...

    async def status(self) -> dict[str, Any]: ...


@dataclass
class UpgradeReport:
    ok: bool = False
    old_pid: int | None = None
    new_pid: int | None = None
    old_version: str = ""  # `ovs-appctl version` of each daemon: an upgrade often changes it
    new_version: str = ""
    steps: list[dict[str, Any]] = field(default_factory=list)
    openflow_changes: list[str] = field(default_factory=list)
    verify: list[str] = field(default_factory=list)  # problems found by the verification; empty = good
    cautions: list[str] = field(default_factory=list)  # known effects of any restart here (see cautions())
    restore: list[str] = field(default_factory=list)  # what a module reload restored (RestoreReport lines)
    status: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    recovery: str = ""  # what was done after a failure so that a daemon runs
    # Every phase, the service's too, `at` seconds after the command started (see `profile_of`).
    profile: list[dict[str, Any]] = field(default_factory=list)
    peak_rss_kb: int | None = None  # this process's; the service's is in `status`
    _own: Profile = field(default_factory=Profile)

    def step(self, name: str, started: float, **extra: Any) -> None:
        self.steps.append({"step": name, "seconds": round(time.monotonic() - started, 3), **extra})
        self._own.add(name, started)
        LOG.info(kv("upgrade.step", step=name, **extra))

    def profile_of(self, origin: float) -> None:
        """The upgrade's profile: its own steps and the service's phases (on the same clock), from `origin`,
        the command's start: a process's own start-up shows as the time before the first phase."""
        service = Profile([s for s in self.status.get("profile") or () if isinstance(s, dict)])
        self.profile = Profile(self._own.spans + service.spans).relative(origin)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def text(self) -> str:
        """What the operator reads: the outcome line, then one line per step, finding and error."""
        lines = [f"upgrade {'OK' if self.ok else 'FAILED'}: ovs-vswitchd {self.old_version or '?'} (pid "
                 f"{self.old_pid}) -> {self.new_version or '?'} (pid {self.new_pid})"]
        lines += [
            f"  {s['step']}: {s['seconds']:.3f} s"
            + "".join(f" {k}={v}" for k, v in s.items() if k not in ("step", "seconds"))
            for s in self.steps
        ]
        lines += [f"  openflow: {c}" for c in self.openflow_changes]
        lines += [f"  problem: {p}" for p in self.verify]
        lines += [f"  caution: {c}" for c in self.cautions]
        lines += [f"  restore: {r}" for r in self.restore]
        if self.error:
            lines.append(f"  error: {self.error}")
        if self.recovery:
            lines.append(f"  recovery: {self.recovery}")
        if self.status:
            lines.append(render_status(self.status))
        return "\n".join(lines)


def _version(line: str | None) -> str:
    """"ovs-vswitchd (Open vSwitch) 3.1.0" -> "3.1.0"; "" when the daemon did not say."""
    return line.split()[-1] if line else ""


async def _wait_gone(pid: int, timeout: float) -> bool:
    with trio.move_on_after(timeout):
        while process_alive(pid):
            await trio.sleep(0.05)
        return True
    return False


class Runner(Protocol):
    """Runs a step's command that starts processes (the restart command, the daemon, a rollback) in OVS's
    environment; its failure is an UpgradeError saying `failure` and why."""

    async def __call__(self, argv: list[str], env: OvsEnv, timeout: float, failure: str,
                       executable: str | None = None) -> None: ...


async def run_here(argv: list[str], env: OvsEnv, timeout: float, failure: str,
                   executable: str | None = None) -> None:
    """The Runner of an upgrade run by the command itself: in this process."""
    try:
        await command.run(argv, timeout=timeout, env=env.environ(), executable=executable)
    except CommandFailed as exc:
        LOG.warning(kv("upgrade.command_failed", argv=" ".join(argv), rc=exc.returncode,
                       stderr=exc.why[-300:]))
        raise UpgradeError(f"{failure}: {exc.why}") from None


def run_by(caller: Caller) -> Runner:
    """The Runner of an upgrade run by the service: in the process of the command that asked for it (see
    `Caller`); CallerGone once that command is gone."""

    async def run(argv: list[str], env: OvsEnv, timeout: float, failure: str,
                  executable: str | None = None) -> None:
        why = await caller.run(argv, timeout=timeout, env=env.environ(), executable=executable)
        if why:
            LOG.warning(kv("upgrade.command_failed", argv=" ".join(argv), stderr=why[-300:]))
            raise UpgradeError(f"{failure}: {why}")

    return run


async def _thaw(api: FreezeApi, timeout: float = 120.0) -> dict[str, Any]:
    """Thaw, or take the thaw somebody else did: a restart command that goes through systemd runs the
    unit's ExecStartPost (`dpfreeze thaw`) before it returns."""
    status = await api.status()
    if status.get("state") == "frozen":
        return await api.thaw()
    with trio.move_on_after(timeout):
        while status.get("state") == "handing_over":
            await trio.sleep(0.1)
            status = await api.status()
    LOG.info(kv("upgrade.thawed_by_another", state=status.get("state")))
    return status


def keep_binary(pid: int, directory: Path, proc: Path = Path("/proc")) -> Path | None:
    """A private copy of the running daemon's own binary, to roll back to if the new one does not come up.

    Read through /proc/PID/exe: the file the daemon was started from, even once a package has replaced the
    one at its path (Debian's ovs-vswitchd links OVS's own libraries statically, so the binary alone runs).
    Named ovs-vswitchd, so that the rolled-back process is one that ovs-ctl recognises.  None (no rollback,
    the rest goes on) when it cannot be copied, e.g. on a full disk."""
    tmp = directory / f".{VSWITCHD}.{os.getpid()}"
    try:
        files.private_dir(directory.parent)
        files.private_dir(directory)
        shutil.copyfile(proc / str(pid) / "exe", tmp)
        tmp.chmod(0o700)
        tmp.replace(directory / VSWITCHD)
    except OSError as exc:
        with contextlib.suppress(OSError):  # a copy cut short by a full disk must not stay behind
            tmp.unlink(missing_ok=True)
        LOG.warning(kv("upgrade.no_rollback_binary", error=str(exc)))
        return None
    return directory / VSWITCHD


async def _daemon_again(env: OvsEnv, argv: list[str], rep: UpgradeReport, kept: Path | None,
                        run: Runner = run_here) -> None:
    """After a failed restart, never leave the host without a daemon: if nothing runs, roll back, once: the
    old daemon's own binary (`keep_binary`) with its command line, else that command line as it is (the
    binary now at its path).  Said in the report either way."""
    if not argv:
        return
    try:
        pid = env.pid(VSWITCHD)
    except DaemonNotRunning:
        pid = 0
    if pid and process_alive(pid):
        return
    what = f"the previous {VSWITCHD} ({rep.old_version or 'version unknown'}, kept from pid {rep.old_pid})"
    if kept is None:
        what = f"{VSWITCHD} again from its path (the previous binary was not kept)"
    try:
        await start_vswitchd(env, argv, kept, run)
        rep.new_pid = await wait_new_daemon(env, rep.old_pid or 0, 30)
    except (UpgradeError, OSError) as exc:
        rep.recovery = f"no {VSWITCHD} runs, and starting {what} failed: {exc}"
    else:
        rep.new_version = _version(await appctl.version(env, VSWITCHD))
        rep.recovery = f"rolled back: started {what} with its command line (pid {rep.new_pid})"
    LOG.warning(kv("upgrade.recovery", text=rep.recovery))


async def recover_lost_service(api: FreezeApi, env: OvsEnv, old_pid: int | None, argv: list[str],
                               wait: float = 30.0) -> str:
    """The service that ran this command's upgrade was lost midway (killed, stopped): make sure a daemon
    runs (the old command line, the binary at its path, started here), then have the service end the
    freeze once it is back (systemd restarts it and it resumes the freeze from its state file), and clear
    flow-restore-wait here if it is still set.  What was done, in one line."""
    rep = UpgradeReport(old_pid=old_pid)
    with trio.move_on_after(90):
        await _daemon_again(env, argv, rep, None)
    done = [rep.recovery] if rep.recovery else []
    status: dict[str, Any] = {}
    with trio.move_on_after(wait):
        while not status:
            with contextlib.suppress(DpfreezeError, OSError):
                status = await api.status()
            if not status:
                await trio.sleep(0.5)
    if status:
        with trio.move_on_after(90), contextlib.suppress(DpfreezeError, OSError):  # lost again: see below
            status = await _thaw(api, timeout=90)
    done.append(f"the service, started again, ended in state {status.get('state')}" if status
                else "no service answered again")
    with contextlib.suppress(DpfreezeError, OSError, trio.TooSlowError), trio.move_on_after(30):
        if await ovsdb.get_flow_restore_wait(env, timeout=10):
            await ovsdb.set_flow_restore_wait(False, env, timeout=10)
            done.append("flow-restore-wait cleared here")
    return "; ".join(done)


async def _thaw_or_clear(api: FreezeApi, env: OvsEnv, rep: UpgradeReport) -> dict[str, Any]:
    """Thaw after a failure; if the service cannot (it is gone), clear flow-restore-wait here: a flag left
    set stops every new flow, which is worse than anything the freeze protects."""
    try:
        return await api.thaw()
    except Exception as exc:
        LOG.error(kv("upgrade.thaw_failed", error=str(exc)))
        try:
            await ovsdb.set_flow_restore_wait(False, env, timeout=20)
            rep.recovery = (rep.recovery + "; " if rep.recovery else "") + \
                f"the service could not thaw ({exc}): flow-restore-wait cleared directly"
        except Exception as again:
            rep.recovery = (rep.recovery + "; " if rep.recovery else "") + \
                f"the service could not thaw ({exc}), nor could flow-restore-wait be cleared: {again}"
        return {"state": "unknown", "error": str(exc)}


def exit_keeps_flows(version_text: str) -> bool:
    """Whether `ovs-appctl exit` leaves the kernel flows alone: OVS 2.14 and later (before, a graceful
    exit flushed every one of them; research/ovs-restart.md §1.1).  Unknown versions are assumed new."""
    m = re.search(r"\(Open vSwitch\) (\d+)\.(\d+)", version_text)
    return m is None or (int(m.group(1)), int(m.group(2))) >= (2, 14)


async def stop_vswitchd(env: OvsEnv, pid: int) -> str:
    """As ovs-ctl's stop_daemon: `ovs-appctl exit`, TERM, KILL; straight to TERM (which never touches the
    datapath) for a daemon older than 2.14, whose graceful exit would flush the kernel flows."""
    running = await appctl.version(env, VSWITCHD, 2)
    if exit_keeps_flows(running or ""):
        with contextlib.suppress(OSError, trio.TooSlowError):
            await appctl.appctl(env, VSWITCHD, "exit", timeout=1)
        if await _wait_gone(pid, 2.0):
            return "exit"
    os.kill(pid, signal.SIGTERM)
    if await _wait_gone(pid, 5.0):
        return "SIGTERM"
    os.kill(pid, signal.SIGKILL)
    if await _wait_gone(pid, 10.0):
        return "SIGKILL"
    raise UpgradeError(f"{VSWITCHD} pid {pid} survived SIGKILL")


async def start_vswitchd(env: OvsEnv, argv: list[str], binary: Path | None = None,
                         run: Runner = run_here) -> None:
    """Re-run the old command line (the binary at that path is the new one); it must --detach.  A rollback
    runs the kept `binary` under the old argv[0], so that the next upgrade reads the installed path from
    the daemon's command line, not the kept copy (which is gone by then)."""
    if "--detach" not in argv:
        argv = [*argv, "--detach"]
    await run(argv, env, 60, f"starting {VSWITCHD} failed: {shlex.join(argv)}",
              executable=str(binary) if binary else None)


DEAD_GRACE = 5.0  # a new daemon's pidfile naming a dead process this long: it died (a supervisor's restart
# would have replaced it by then)


async def wait_new_daemon(env: OvsEnv, old_pid: int, timeout: float) -> int:
    """Until a new daemon's pidfile names a live process that answers `ovs-appctl version`; fails early
    once the new daemon's pidfile has named a dead process for DEAD_GRACE (it crashed at start or was
    killed): every second spent waiting on it is a second of new flows kept back."""
    dead_since: float | None = None
    with trio.move_on_after(timeout):
        while True:
            try:
                pid = env.pid(VSWITCHD)
            except DaemonNotRunning:
                pid = 0
            if pid and pid != old_pid and process_alive(pid) and await appctl.version(env, VSWITCHD, 2):
                return pid
            if pid and pid != old_pid and not process_alive(pid):
                dead_since = dead_since or trio.current_time()
                if trio.current_time() - dead_since >= DEAD_GRACE:
                    raise UpgradeError(f"the new {VSWITCHD} (pid {pid}) died")
            else:
                dead_since = None
            await trio.sleep(0.02)
    raise UpgradeError(f"no new {VSWITCHD} answered within {timeout:g} s")


async def restore_openflow(snapshot_path: str | Path, env: OvsEnv) -> list[str]:
    """Give the running daemon the OpenFlow state the snapshot saved (ovs-save's restore, plus what it
    misses); one line per change (`restore_bridge`: the flows' `replace-flows` is always reported)."""
    changes: list[str] = []
    for bridge in load_openflow(snapshot_path):
        changes += await openflow.restore_bridge(bridge, env)
    return changes


def cautions(other_config: dict[str, str], flows: int) -> list[str]:
    """What a restart will do anyway, whatever dpfreeze pins (research/ovs-restart.md §1.2, §1.4)."""
    out = []
    if other_config.get("hw-offload") == "true":
        out.append("hw-offload=true: the new daemon deletes every TC-offloaded flow when it starts; those "
                   "live outside the kernel datapath, so they are neither pinned nor restored")
    limit = startup_flow_limit(other_config.get("flow-limit"))
    if flows > limit:
        what = "deletes them all" if flows > 2 * limit else "expires them after 100 ms idle"
        out.append(f"{flows} datapath flows: the new daemon starts with a flow limit of {limit} and, until "
                   f"it has measured its dump rate, {what} after the hand-over")
    return out


def verify(status: dict[str, Any], new_pid: int) -> list[str]:
    """What is wrong after the thaw: not thawed, upcalls not owned by the new daemon, losses."""
    problems = []
    if status.get("state") != "thawed":
        problems.append(f"service state is {status.get('state')}, not thawed")
    if status.get("error"):
        problems.append(f"the freeze failed: {status['error']}")
    report = status.get("report") or {}
    if not report:
        problems.append("no hand-over report")
    owners = report.get("upcall_owners") or []
    foreign = [o for o in owners if o.get("portid") and o.get("pid") != new_pid]
    if foreign:
        problems.append(
            "upcall portids not owned by the new daemon: "
            + ", ".join(f"{o['portid']}({o.get('process') or 'dead'})" for o in foreign)
        )
    handover = report.get("handover") or {}
    if handover.get("overflow_packets"):
        problems.append(f"{handover['overflow_packets']} upcalls dropped (miss buffer overflow)")
    pin = report.get("pin") or {}
    if pin.get("reinstall_failed"):
        problems.append(f"{pin['reinstall_failed']} snapshot flows could not be re-installed")
    restorer = report.get("restorer") or {}
    if restorer.get("failures"):
        problems.append(f"{restorer['failures']} snapshot flows could not be restored into the new daemon")
    return problems


@dataclass(frozen=True)
class UpgradePlan:
    """An upgrade checked before anything changes: every refusal happens while planning."""

    ttl: float
    datapath: str  # resolved
    old_pid: int | None
    argv: list[str]  # the old daemon's command line: the default restart starts it again
    restart_command: str | None = None
    reload_kmod: bool = False


async def plan_upgrade(env: OvsEnv, *, ttl: float, datapath: str, restart_command: str | None = None,
                       reload_kmod: bool = False) -> UpgradePlan:
    """Check everything that can refuse the upgrade; raises UpgradeError, and nothing has changed."""
    if reload_kmod and restart_command:
        raise UpgradeError("--reload-kmod replaces the default restart; it takes no --restart-command")
    try:
        datapath = await datapaths.resolve(datapath, env)
    except datapaths.NoDatapath as exc:
        raise UpgradeError(str(exc)) from None
    if reload_kmod:
        if is_netdev_name(datapath):
            raise UpgradeError(f"--reload-kmod: {datapath} is a userspace datapath, it does not use the "
                               "kernel module")
        try:
            await kmod.check_reloadable({datapath})  # the freeze snapshots this datapath only
        except kmod.ReloadError as exc:
            raise UpgradeError(str(exc)) from None
    old_pid = None
    try:
        old_pid = env.pid(VSWITCHD)
    except DaemonNotRunning as exc:
        if restart_command is None:
            raise UpgradeError(f"{exc}: nothing to restart") from exc
    argv = daemon_argv(old_pid) if old_pid else []
    return UpgradePlan(ttl, datapath, old_pid, argv, restart_command, reload_kmod)


async def upgrade(
    api: FreezeApi,
    env: OvsEnv,
    *,
    ttl: float,
    datapath: str,
    restart_command: str | None = None,
    daemon_timeout: float = 60.0,
    reload_kmod: bool = False,
    rollback_dir: Path | None = None,
) -> UpgradeReport:
    plan = await plan_upgrade(env, ttl=ttl, datapath=datapath, restart_command=restart_command,
                              reload_kmod=reload_kmod)
    return await run_upgrade(api, env, plan, daemon_timeout=daemon_timeout, rollback_dir=rollback_dir)


async def run_upgrade(api: FreezeApi, env: OvsEnv, plan: UpgradePlan, *, daemon_timeout: float = 60.0,
                      rollback_dir: Path | None = None, origin: float | None = None,
                      before: Profile | None = None, run: Runner = run_here) -> UpgradeReport:
    """Freeze, restart, restore OpenFlow, thaw; whatever fails, the freeze ends (thawed) and, if no daemon
    runs, the old one is rolled back to (its binary kept in `rollback_dir`, removed at the end).  The
    report's profile counts from `origin` (time.monotonic(); default: now) and starts with the phases
    `before` this call (the command's start-up).  With the caller gone (CallerGone from `run`), the freeze
    and the kept binary are left to `finish_orphaned`."""
    origin = time.monotonic() if origin is None else origin
    kept = keep_binary(plan.old_pid, rollback_dir) if plan.old_pid and rollback_dir else None
    try:
        rep = await _run_upgrade(api, env, plan, daemon_timeout, kept, run)
    except CallerGone:
        raise
    except BaseException:
        if kept is not None:
            drop_kept(kept)
        raise
    if kept is not None:
        drop_kept(kept)
    rep._own.spans[:0] = before.spans if before else []
    rep.profile_of(origin)
    rep.peak_rss_kb = peak_rss_kb()
    return rep


def kept_binary_dir(state_dir: Path) -> Path:
    """This upgrade's own place for the kept binary: two upgrades started at once never share one."""
    return state_dir / "rollback" / str(os.getpid())


def drop_kept(kept: Path) -> None:
    kept.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        kept.parent.rmdir()


async def _run_upgrade(api: FreezeApi, env: OvsEnv, plan: UpgradePlan, daemon_timeout: float,
                       kept: Path | None, run: Runner) -> UpgradeReport:
    rep = UpgradeReport(old_pid=plan.old_pid, old_version=_version(await appctl.version(env, VSWITCHD)))
    argv = plan.argv
    t = time.monotonic()
    other_config: dict[str, str] = {}

    async def read_other_config() -> None:  # beside the freeze: seconds of IDL work under emulation
        with contextlib.suppress(ovsdb.OvsdbError, trio.TooSlowError):
            other_config.update(await ovsdb.get_other_config(env))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_other_config)
        result = await outcome.acapture(api.freeze, plan.ttl, plan.datapath)  # its error stays itself
        if isinstance(result, outcome.Error):
            nursery.cancel_scope.cancel()
    frozen = result.unwrap()
    rep.step("freeze", t)
    rep.cautions = cautions(other_config, int(frozen["counters"]["flows"]))
    for caution in rep.cautions:
        LOG.warning(kv("upgrade.caution", text=caution))
    try:
        unsaved = [g for g in frozen.get("snapshot_gaps") or () if g.startswith("openflow:")]
        if unsaved and plan.old_pid:
            raise UpgradeError(f"the running {VSWITCHD}'s OpenFlow state could not be saved ({unsaved[0]}): "
                               "nothing restarted (the new daemon would start with empty tables)")
        t = time.monotonic()
        await api.take_upcalls()  # misses of the old daemon's exit are buffered for the new one, not lost
        try:  # the whole lease for the restart; a freeze that outlasted its lease (a delete storm) stops here
            await api.renew(plan.ttl)
        except DpfreezeError as exc:
            raise UpgradeError(f"the freeze ended before the restart ({exc}): nothing restarted") from None
        if plan.restart_command:
            await run(["sh", "-c", plan.restart_command], env, daemon_timeout,
                      f"restart command failed: {plan.restart_command}")
            rep.step("restart-command", t)
        else:
            assert rep.old_pid is not None
            how = await stop_vswitchd(env, rep.old_pid)
            rep.step("stop", t, how=how)
            if plan.reload_kmod:
                t = time.monotonic()
                await api.detach()  # the module reload would fail the session, and a failure thaws
                restored = await kmod.reload_and_restore(frozen["snapshot_path"])
                await api.reattach()
                rep.restore = [line for r in restored for line in r.lines()]
                rep.step("reload-kmod", t, vports=sum(len(r.vports_added) for r in restored),
                         flows=sum(r.flows_added for r in restored),
                         failures=sum(len(r.failures) for r in restored))
            t = time.monotonic()
            await start_vswitchd(env, argv, run=run)
            rep.step("start", t)
        t = time.monotonic()
        rep.new_pid = await wait_new_daemon(env, rep.old_pid or 0, daemon_timeout)
        rep.new_version = _version(await appctl.version(env, VSWITCHD))
        rep.step("new-daemon", t, pid=rep.new_pid, version=rep.new_version)
        t = time.monotonic()
        rep.openflow_changes = await restore_openflow(frozen["snapshot_path"], env)
        rep.step("restore-openflow", t, changes=len(rep.openflow_changes))
    except CallerGone:
        raise
    except Exception as exc:
        rep.error = f"{type(exc).__name__}: {exc}"
        LOG.error(kv("upgrade.failed", error=rep.error))
        with trio.CancelScope(shield=True), trio.move_on_after(daemon_timeout + 10):
            await _daemon_again(env, argv, rep, kept, run)
        with trio.CancelScope(shield=True), trio.move_on_after(90):
            rep.status = await _thaw_or_clear(api, env, rep)
        return rep
    except BaseException:  # Ctrl-C (which reaches the restart command too) or a cancellation
        with trio.CancelScope(shield=True), trio.move_on_after(daemon_timeout + 10):
            await _daemon_again(env, argv, rep, kept, run)
        with trio.CancelScope(shield=True), trio.move_on_after(90):
            await _thaw_or_clear(api, env, rep)
        raise
    t = time.monotonic()
    try:
        rep.status = await _thaw(api)
    except Exception as exc:  # the service lost mid-thaw, and not to be had again: the flag still goes
        rep.error = f"thaw failed: {exc}"
        LOG.error(kv("upgrade.failed", error=rep.error))
        with trio.CancelScope(shield=True), trio.move_on_after(90):
            rep.status = await _thaw_or_clear(api, env, rep)
        return rep
    rep.step("thaw", t, outcome=(rep.status.get("report") or {}).get("outcome"))
    rep.verify = verify(rep.status, rep.new_pid)
    if not process_alive(rep.new_pid):  # it died in the thaw: nothing would ever start one again
        rep.error = f"the new {VSWITCHD} (pid {rep.new_pid}) died during the thaw"
        with trio.CancelScope(shield=True), trio.move_on_after(daemon_timeout + 10):
            await _daemon_again(env, argv, rep, kept, run)
    rep.ok = not rep.verify and not rep.error
    return rep


@dataclass(frozen=True)
class Orphan:
    """What the service that `dpfreeze upgrade` started needs to finish the upgrade if the command dies."""

    old_pid: int | None
    argv: list[str]  # the old daemon's command line
    kept: Path  # where `keep_binary` puts the old daemon's binary
    group: int  # the command's process group: its restart command, if still running, is in it

    def to_json(self) -> str:
        return json.dumps({"old_pid": self.old_pid, "argv": self.argv, "kept": str(self.kept),
                           "group": self.group})

    @classmethod
    def from_json(cls, text: str) -> Orphan:
        d = json.loads(text)
        return cls(d["old_pid"], list(d["argv"]), Path(d["kept"]), int(d["group"]))


ORPHAN_SETTLE = 2.0  # a daemon must run this long before the orphaned freeze is handed to it
ORPHAN_WAIT = 60.0  # no daemon for this long while the command's group lingers: the restart is not coming


def group_alive(pgid: int, proc: Path = Path("/proc")) -> bool:
    """Whether any process of process group `pgid` runs (a restart command the dead command left behind).
    A zombie runs nothing: the killed command's children wait there for a parent that may never reap them
    (a subreaper that collects only the daemons it knows; a matrix run waited out its lease on one)."""
    for stat_file in proc.glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            state, _, pgrp = stat_file.read_text().rsplit(")", 1)[1].split()[:3]
            if int(pgrp) == pgid and state != "Z":
                return True
    return False


async def _answering(env: OvsEnv) -> int:
    """The pid of the ovs-vswitchd that runs and answers, else 0."""
    try:
        pid = env.pid(VSWITCHD)
    except DaemonNotRunning:
        return 0
    return pid if process_alive(pid) and await appctl.version(env, VSWITCHD, 2) else 0


async def _restore_then_thaw(api: FreezeApi, env: OvsEnv) -> None:
    """A new daemon: the snapshot's OpenFlow state first (best effort, bounded), then the thaw."""
    with contextlib.suppress(Exception), trio.move_on_after(60):
        snapshot = (await api.status()).get("snapshot_path")
        if snapshot:
            await restore_openflow(snapshot, env)
    await api.thaw()


async def finish_crash(api: FreezeApi, env: OvsEnv, dead: int) -> str:
    """The crash guard froze after ovs-vswitchd `dead` died: once whatever supervises it (systemd, a
    container runtime) has started a new one and it has run steadily, give it the saved OpenFlow state and
    thaw.  On the systemd path the unit's ExecStartPost thaw may come first; then there is nothing left to
    do.  No new daemon: the lease ends the freeze."""
    settled: tuple[int, float] = (0, 0.0)
    while (await api.status()).get("state") == "frozen":
        pid, now = await _answering(env), trio.current_time()
        if pid and pid != dead:
            if settled[0] != pid:
                settled = (pid, now)
            elif now - settled[1] >= ORPHAN_SETTLE:
                await _restore_then_thaw(api, env)
                return f"a new daemon (pid {pid}) ran: thawed into it"
        await trio.sleep(0.2)
    return "thawed by another (the unit's ExecStartPost, or the lease)"


@dataclass(frozen=True)
class Thawed:
    """What `dpfreeze thaw` prints and exits with, wherever it ran (this process, or the service)."""

    doc: dict[str, Any]
    text: str
    code: int
    said: tuple[str, ...] = ()  # printed before the result: the OpenFlow restore's changes
    failed: str = ""  # what failed and did not stop the thaw

    def to_json(self) -> dict[str, Any]:
        return {"thaw": self.doc, "text": self.text, "code": self.code, "said": list(self.said),
                "failed": self.failed}


async def thaw_started(api: FreezeApi, env: OvsEnv, *, openflow: bool, timeout: float, wait: bool) -> Thawed:
    """ExecStartPost's thaw: the snapshot's OpenFlow state into the running daemon first (as `upgrade`
    does), then the thaw.

    Why the OpenFlow state: on the systemd path (`systemctl restart`) ovs-ctl starts the new daemon with
    empty OpenFlow tables, and clearing flow-restore-wait then would make its revalidators judge the
    re-installed kernel flows against nothing.  A restore that fails is reported, and the thaw happens
    anyway: a freeze is never left in place because of it.  Nothing frozen (every ordinary start runs
    ExecStartPost too) is not an error."""
    status = await api.status()
    if status.get("state") != machine.State.FROZEN.value:
        return Thawed(status, f"nothing to thaw: {status.get('state')}", 0)
    said: list[str] = []
    failed = ""
    if openflow and status.get("snapshot_path"):
        try:
            with trio.fail_after(timeout):
                await wait_new_daemon(env, 0, timeout)
                said = [f"openflow: {line}" for line in await restore_openflow(status["snapshot_path"], env)]
        except Exception as exc:  # whatever failed, the thaw below still happens
            failed = f"OpenFlow state not restored: {exc or type(exc).__name__}"
    try:
        doc = await api.thaw(wait=wait)
    except DpfreezeError:
        status = await api.status()
        if status.get("state") == machine.State.FROZEN.value:
            raise
        # Thawed meanwhile by another (the crash guard, the lease): the freeze is over, as asked.
        return Thawed(status, f"already thawed: {status.get('state')}", 1 if failed else 0, tuple(said),
                      failed)
    return Thawed(doc, render_status(doc) + await daemon_line("thawed into", env),
                  1 if doc.get("error") or failed else 0, tuple(said), failed)


async def daemon_line(what: str, env: OvsEnv) -> str:
    """Which ovs-vswitchd a freeze or thaw met: on the systemd path the journal then names the old and the
    new daemon's versions, as `dpfreeze upgrade`'s report does."""
    version = await appctl.version(env, VSWITCHD, 5)
    return f"\n{what} {version or 'no ovs-vswitchd answering'}"


async def thaw_in_service(api: FreezeApi, env: OvsEnv, request: dict[str, Any]) -> dict[str, Any]:
    """A `thaw-started` request's answer: ExecStartPost's thaw run by the service on itself."""
    try:
        done = await thaw_started(api, env, openflow=request.get("openflow", True),
                                  timeout=request.get("openflow_timeout", 60.0),
                                  wait=request.get("wait", True))
    except DpfreezeError as exc:  # the command's own refusal, word for word
        raise ControlError(str(exc)) from exc
    return done.to_json()


async def finish_orphaned(api: FreezeApi, env: OvsEnv, orphan: Orphan) -> str:
    """The `dpfreeze upgrade` that started this service died mid-upgrade (SIGKILL, an OOM kill): finish what
    it began rather than wait out the lease.  A daemon that runs steadily gets the freeze: the old one
    (killed before the stop) or a new one (killed after the start), which first gets the snapshot's
    OpenFlow state.  No daemon, once the command's process group is gone (or after ORPHAN_WAIT): roll back
    as the command would have.  Returns what was done, for the log."""
    settled: tuple[int, float] = (0, 0.0)
    nobody_since = trio.current_time()
    while (await api.status()).get("state") == "frozen":
        pid, now = await _answering(env), trio.current_time()
        if pid:
            if settled[0] != pid:
                settled = (pid, now)
            elif now - settled[1] >= ORPHAN_SETTLE:
                if pid == orphan.old_pid:
                    await api.thaw()
                    return "the old daemon still ran: thawed into it"
                await _restore_then_thaw(api, env)
                return f"a new daemon (pid {pid}) ran: thawed into it"
            nobody_since = now
        elif not group_alive(orphan.group) or now - nobody_since >= ORPHAN_WAIT:
            break
        await trio.sleep(0.5)
    if await _answering(env):
        return "the freeze had ended; a daemon runs"
    rep = UpgradeReport(old_pid=orphan.old_pid)
    kept = orphan.kept if orphan.kept.is_file() else None
    try:
        with trio.move_on_after(90):
            await _daemon_again(env, orphan.argv, rep, kept)
    finally:
        if kept is not None:
            drop_kept(kept)
    with trio.move_on_after(60):
        if (await api.status()).get("state") == "frozen":
            await api.thaw()
    return rep.recovery or "no daemon, and no command line to start one"


async def schema_warnings() -> list[str]:
    """The set conf.db columns that the installed schema lacks, before ovs-ctl's conversion drops them (a
    package downgrade: the freeze in ExecStop runs once the older package is unpacked); one line each."""
    try:
        target, losses = await ovsdb.conversion_losses()
    except (ovsdb.OvsdbError, OSError) as exc:
        return [f"cannot compare conf.db with the installed schema: {exc}"]
    return [loss.describe(target) for loss in losses]


async def plan_from_start(env: OvsEnv, origin: float, *, ttl: float, datapath: str,
                          restart_command: str | None, reload_kmod: bool
                          ) -> tuple[UpgradePlan, Profile, list[str]]:
    """`plan_upgrade` (a refusal changes nothing), the schema warnings, and the profile's first phases: the
    command's own start-up since `origin` (its process's start) and the plan."""
    before = Profile()
    before.add("startup", origin)
    with before.span("plan"):
        plan = await plan_upgrade(env, ttl=ttl, datapath=datapath, restart_command=restart_command,
                                  reload_kmod=reload_kmod)
        warnings = await schema_warnings()
    return plan, before, warnings


async def serve_upgrade(api: FreezeApi, env: OvsEnv, args: dict[str, Any], caller: Caller,
                        state_dir: Path) -> dict[str, Any]:
    """`dpfreeze upgrade` run by the service it found running (the `upgrade` control request, `args` as
    there): the same plan and steps, but the commands that start processes run in the caller's (`run_by`).
    What the command prints comes back: the report, its text, the schema warnings.  The caller gone before
    the end, the upgrade is finished as an orphan's (`finish_orphaned`), and CallerGone raised."""
    origin = float(args.get("origin") or time.monotonic())
    plan, before, warnings = await plan_from_start(
        env, origin, ttl=machine.check_ttl(args.get("ttl", DEFAULT_TTL)),
        datapath=args.get("datapath", datapaths.AUTO), restart_command=args.get("restart_command"),
        reload_kmod=args.get("reload_kmod", False))
    kept_in = kept_binary_dir(state_dir)
    try:
        rep = await run_upgrade(api, env, plan, rollback_dir=kept_in, origin=origin, before=before,
                                run=run_by(caller))
    except CallerGone as exc:
        LOG.warning(kv("upgrade.caller_gone", error=str(exc)))
        orphan = Orphan(plan.old_pid, plan.argv, kept_in / VSWITCHD, caller.group)
        LOG.warning(kv("upgrade.orphaned", done=await finish_orphaned(api, env, orphan)))
        raise
    return {"ok": rep.ok, "report": rep.to_json(), "text": rep.text(), "warnings": warnings}
