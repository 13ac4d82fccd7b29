"""`dpfreeze bench upgrade`: stock OVS restarts against `dpfreeze upgrade`, one lab, the same traffic.

Methods (restart-measurements.md is the bar): `stop-start` is what `systemctl restart ovs-vswitchd` runs
(Debian's `ovs-ctl --no-ovsdb-server stop`, then `start`), `ovs-ctl-restart` what `systemctl reload` runs
(save flows, flow-restore-wait, restart, restore, clear), `dpfreeze` is `dpfreeze upgrade` with its default
restart.  Runs alternate between methods so drift in the VM hits all of them alike.  The stock methods run
Debian's ovs-ctl with the lab's OVS_* directories; a method that fails or hangs is reported as such and the
bench goes on (the OVS is repaired before the next run).

Per run: established packets lost, new-flow packets lost, the largest established gap (all on the wire,
from the probes), and the upcall storm: the datapath's `missed` counter over the whole probe run minus
the new flows' own misses (each new flow needs exactly one upcall) and, for dpfreeze, the misses it
re-injected (a buffered miss replayed to the new daemon misses a second time, by design).  What is left is
the re-learning of flows that already had a datapath flow, plus the set-up of the probe's own flows (see
`baseline`).

`--datapath netdev` runs the same bench on the userspace datapath, natively (no kernel module needed).  The
lab's daemons live in a private "switch" namespace (every netdev ovs-vswitchd creates the same tap device),
so ovs-ctl runs inside it (`ip netns exec NS ovs-ctl ...`), and so does dpfreeze's restart (ovs-ctl stop,
then start: the systemd path; its default restart would start the new daemon in the bench's namespace).
Debian's `ovs-ctl start` runs `ovs-kmod-ctl insert`, i.e. `modprobe openvswitch`, which fails on a host
whose kernel has module support but no openvswitch.ko, although a userspace datapath never uses it.  A
workaround for such hosts, and the only thing changed about the stock methods: their PATH starts with a
directory whose `modprobe` exits 0 (the only program ovs-kmod-ctl's insert runs; a kernel without module
support, no /proc/modules, makes ovs-kmod-ctl skip modprobe by itself).  A userspace datapath dies with its
daemon and the new one counts `missed` from zero, so the counter is polled during the run and summed over
the daemons (the old daemon's misses of its last poll interval go uncounted); module reloads are refused.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import trio

from dpfreeze.errors import UserError
from dpfreeze.lab.sandbox import Sandbox, SandboxError
from dpfreeze.ovs import appctl
from dpfreeze.ovs.ovsenv import DaemonNotRunning, OvsEnv, proc_stat, process_alive
from dpfreeze.probe import Endpoint, ProbeError, ProbeSpec, Report, Timeline, run_probes
from dpfreeze.probe.render import write
from dpif.model import DpStats

DATAPATH = "ovs-system"
NETDEV_DATAPATH = "netdev@ovs-netdev"  # the one userspace datapath of every netdev bridge of a daemon
DATAPATH_TYPES = ("system", "netdev")
KMOD_METHODS = ("ovs-ctl-reload-kmod", "dpfreeze-kmod")
PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
MISS_POLL = 0.1  # seconds between reads of a userspace datapath's `missed` (see `MissTally`)
# The options of Debian's ovs-vswitchd.service for ExecStart / ExecReload.
CTL_OPTS = ("--no-ovsdb-server", "--no-monitor", "--system-id=random", "--no-record-hostname")
# Reading the UDP source port into a register un-wildcards it: every new probe flow (a fresh source port)
# becomes its own megaflow and needs an upcall, as in restart-measurements.md.
BENCH_FLOW = "priority=10,udp,actions=move:NXM_OF_UDP_SRC[]->NXM_NX_REG0[0..15],NORMAL"
UPGRADE_TIMEOUT = 300.0  # a loaded TCG guest took 63 s for the freeze alone
SERVICE_START_TIMEOUT = 120.0
METRICS = ("established_lost", "newflow_lost", "largest_gap_ms", "excess_misses", "method_s", "flows_before",
           "flows_after",
           "newflow_gap_ms", "newflow_delay_p50_ms", "newflow_delay_p99_ms", "newflow_delay_max_ms", "held_s",
           "peak_rss_mb")


class MethodFailed(Exception):
    """The restart method itself failed (non-zero exit, timeout): recorded for that run."""


@dataclass(frozen=True)
class BenchSpec:
    runs: int = 3
    methods: tuple[str, ...] = ("baseline", "stop-start", "ovs-ctl-restart", "dpfreeze")
    rate: float = 500.0  # established pps, as in restart-measurements.md
    newflow_ms: float = 20.0
    lead_s: float = 1.0
    settle_s: float = 2.0  # after the method returns: the storm, if any, happens here
    tail_s: float = 0.5
    method_timeout: float = 180.0
    datapath: str = "system"  # the lab's datapath type: system (openvswitch.ko) or netdev (userspace)
    openflow_rules: int = 0  # extra OpenFlow rules that no probe matches (see filler_rules)
    flows: int = 0  # extra datapath flows that no probe hits (see fill_datapath)


@dataclass
class RunResult:
    method: str
    run: int
    error: str = ""
    established_sent: int | None = None
    established_lost: int | None = None
    newflow_sent: int | None = None
    newflow_lost: int | None = None
    largest_gap_ms: float | None = None
    tcp_survived: bool | None = None
    flows_before: int | None = None  # datapath flows as the probes started
    flows_after: int | None = None  # and as they ended
    missed: int | None = None  # datapath `missed` delta over the whole probe run
    dp_lost: int | None = None  # datapath `lost` delta: upcalls that could not be delivered
    expected_misses: int | None = None  # one per new flow sent
    replayed: int = 0  # buffered misses dpfreeze re-injected: each counts as a second miss, by design
    excess_misses: int | None = None
    method_s: float | None = None
    newflow_gap_ms: float | None = None  # the longest run of lost new flows: how long they were dropped
    # The delay of the new flows sent during the method (the probe report's window): dpfreeze holds them
    newflow_delay_p50_ms: float | None = None
    newflow_delay_p99_ms: float | None = None
    newflow_delay_max_ms: float | None = None
    held_s: float | None = None  # dpfreeze: how long the miss buffer held misses (take-over to replay)
    profile: list[dict[str, Any]] = field(default_factory=list)  # dpfreeze: its report's per-phase profile
    peak_rss_mb: float | None = None  # dpfreeze: the larger of its command's and its service's peak RSS
    report: str = ""
    upgrade_report: str = ""  # dpfreeze: its upgrade report, <stem>-upgrade.json
    restorer: dict[str, Any] | None = None  # dpfreeze on netdev: the hand-over outcome and restorer stats


@dataclass
class Ctx:
    """What a method needs: the lab's sandbox, a directory for its logs, one for its state and sockets."""

    sb: Sandbox
    workdir: Path  # logs, next to the reports (may be the VM's 9p share)
    scratch: Path  # local: unix sockets, the freeze snapshot, probe raw logs
    endpoints: tuple[Endpoint, Endpoint]
    extra: dict[str, Any] = field(default_factory=dict)  # per-method output (e.g. the upgrade report)
    shim: Path | None = None  # netdev: a directory whose `modprobe` exits 0, first on ovs-ctl's PATH
    filler: Path | None = None  # extra OpenFlow rules (`--openflow-rules`), re-added before each run
    fill: int = 0  # extra datapath flows (`--flows`), installed before each run
    probe_runs: int = 0
    service: Path | None = None  # the state directory of the running `dpfreeze serve`, once started

    @property
    def ovs_ctl(self) -> str:
        return str(self.sb.env.pkgdatadir / "scripts" / "ovs-ctl")

    @property
    def netdev(self) -> bool:
        return self.sb.datapath_type == "netdev"

    @property
    def datapath(self) -> str:
        return NETDEV_DATAPATH if self.netdev else DATAPATH

    def ctl(self, *args: str) -> list[str]:
        """ovs-ctl ARGS where the lab's daemons run (the switch namespace of a netdev lab)."""
        return self.sb._in_switch([self.ovs_ctl, *args])

    def ctl_env(self) -> dict[str, str]:
        """What ovs-ctl runs with besides the lab's OVS_* directories: the modprobe shim, if any."""
        return {"PATH": shim_path(self.shim)} if self.shim else {}

    def restart_command(self) -> str | None:
        """dpfreeze's restart for a netdev lab: ovs-ctl stop, then start (the systemd path), in the switch
        namespace; None (dpfreeze's default restart) on the kernel datapath."""
        if not self.netdev:
            return None
        env = ["env", *(f"{k}={v}" for k, v in self.ctl_env().items())]
        stop = shlex.join([*env, *self.ctl(*CTL_OPTS[:1], "stop")])
        start = shlex.join([*env, *self.ctl(*CTL_OPTS, "start")])
        return f"{stop}; {start}"  # as systemd's restart: ExecStart runs whatever ExecStop returned


def make_modprobe_shim(directory: Path) -> Path:
    """A directory with a `modprobe` that does nothing: for ovs-ctl on a host without openvswitch.ko."""
    directory.mkdir(parents=True, exist_ok=True)
    shim = directory / "modprobe"
    shim.write_text("#!/bin/sh\n# dpfreeze bench upgrade --datapath netdev: no module needed\nexit 0\n")
    shim.chmod(0o755)
    return directory


def shim_path(shim: Path) -> str:
    """PATH with the shim first.  ovs-ctl puts its sbindir/bindir in front of PATH when PATH lacks them,
    which would put the real modprobe before the shim: so they are in it already."""
    dirs = [d for d in os.environ.get("PATH", "").split(":") if d]
    dirs += [d for d in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
             if d not in dirs]
    return ":".join([str(shim), *dirs])


# -- running a method ------------------------------------------------------------------------------------


async def stream(argv: Sequence[str], ctx: Ctx, tl: Timeline, log_name: str, timeout: float,
                 mark: Callable[[str], str | None],
                 extra_env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    """Run argv with the lab's OVS env, log its output, and mark a timeline event when `mark(line)` names one.

    Output is read as it comes so events land on the timeline when they happen.  The command is done when
    it exits, not at end-of-file: a daemon it started (ovs-ctl start) may hold the pipe open for ever.
    """
    lines: list[str] = []
    env = {**os.environ, **ctx.sb.env.environ(), **(extra_env or {})}

    async def read(proc: trio.Process, log: TextIO) -> None:
        assert proc.stdout is not None
        buf = b""
        async for chunk in proc.stdout:
            buf += chunk
            *done, buf = buf.split(b"\n")
            for raw in done:
                line = raw.decode(errors="replace")
                lines.append(line)
                log.write(line + "\n")
                log.flush()
                if name := mark(line):
                    tl.mark(name)

    with (ctx.workdir / log_name).open("a") as log:
        log.write(f"$ {' '.join(argv)}\n")
        log.flush()
        try:
            with trio.fail_after(timeout):
                async with trio.open_nursery() as nursery:
                    proc: trio.Process = await nursery.start(partial(
                        trio.run_process, list(argv), stdin=b"", stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, env=env, check=False))
                    nursery.start_soon(read, proc, log)
                    await proc.wait()
                    await trio.sleep(0.2)  # the last lines, then stop reading
                    nursery.cancel_scope.cancel()
        except trio.TooSlowError:
            raise MethodFailed(f"{argv[0]} still running after {timeout:g} s (killed)") from None
    return proc.returncode or 0, lines


_OVS_LOG = re.compile(r"\d{4}-\d\d-\d\dT\S+\|\d+\|")


def _ctl_mark(line: str) -> str | None:
    """ovs-ctl prints one line per finished step ("Saving flows", "Starting ovs-vswitchd", ...).

    The OVS tools it runs also print their own log lines (`2026-...Z|00002|timeval|WARN|...`): not steps.
    """
    text = line.strip(" *.").split(" ...")[0].strip()
    return f"ovs-ctl: {text[:40]}" if text and not _OVS_LOG.match(text) else None


async def baseline(ctx: Ctx, tl: Timeline) -> None:
    """No restart at all: what the rig itself loses (a loaded VM drops packets on its own)."""
    await trio.sleep(1.0)


async def ovs_ctl(ctx: Ctx, tl: Timeline, timeout: float, *args: str) -> None:
    """Debian's ovs-ctl ARGS (the last one the action) where the lab's daemons run, its steps onto the
    timeline; MethodFailed on a non-zero exit."""
    rc, _ = await stream(ctx.ctl(*args), ctx, tl, "ovs-ctl.log", timeout, _ctl_mark, ctx.ctl_env())
    if rc:
        raise MethodFailed(f"ovs-ctl {args[-1]}: exit {rc}")


async def stop_start(ctx: Ctx, tl: Timeline) -> None:
    """`systemctl restart ovs-vswitchd`: ExecStop then ExecStart, no flow save, no flow-restore-wait."""
    await ovs_ctl(ctx, tl, 120, *CTL_OPTS[:1], "stop")
    await ovs_ctl(ctx, tl, 120, *CTL_OPTS, "start")


async def ovs_ctl_restart(ctx: Ctx, tl: Timeline) -> None:
    """`systemctl reload ovs-vswitchd`: ovs-ctl restart (save, flow-restore-wait, restart, restore, clear)."""
    await ovs_ctl(ctx, tl, 240, *CTL_OPTS, "restart")


_STEP = re.compile(r"\bupgrade\.step\b.*\bstep=(\S+)")
_STATE = re.compile(r"\bstate reason=.*\bstate=(\S+)|\bstate state=(\S+)")
_RESTORED = re.compile(r"\brestorer\.restored\b.*\bflows=(\d+)")
_ASKED = re.compile(r"\bupgrade\.(asked|run|ran)\b")  # an upgrade the service runs: what its command did


def _upgrade_mark(line: str) -> str | None:
    if m := _STEP.search(line):
        return f"upgrade: {m.group(1)}"
    if m := _ASKED.search(line):
        return {"asked": "upgrade: asked the service", "run": "upgrade: restart",
                "ran": "upgrade: restarted"}[m.group(1)]
    if m := _RESTORED.search(line):
        return f"restorer: {m.group(1)} flows restored"
    if m := _STATE.search(line):
        return f"state: {m.group(1) or m.group(2)}"
    return None


async def ovs_ctl_reload_kmod(ctx: Ctx, tl: Timeline) -> None:
    """`ovs-ctl force-reload-kmod`: save flows and interfaces, delete the datapaths, reload the module,
    start with flow-restore-wait, restore, clear (the daemon re-adds the ports in its own order)."""
    await ovs_ctl(ctx, tl, 240, *CTL_OPTS, "force-reload-kmod")


async def dpfreeze_upgrade_kmod(ctx: Ctx, tl: Timeline) -> None:
    """`dpfreeze upgrade --reload-kmod`."""
    await dpfreeze_upgrade(ctx, tl, reload_kmod=True)


async def dpfreeze_upgrade_alone(ctx: Ctx, tl: Timeline) -> None:
    """`dpfreeze upgrade` with no service running: the command runs the upgrade and starts its own."""
    await dpfreeze_upgrade(ctx, tl, alone=True)


SERVICE_METHODS = frozenset({"dpfreeze", "dpfreeze-kmod"})  # run with `dpfreeze serve` running


@asynccontextmanager
async def dpfreeze_service(ctx: Ctx) -> AsyncIterator[None]:
    """`dpfreeze serve` running for the whole bench, as the units keep it on a host (started at boot, not
    by the upgrade; without `--guard`, whose checkpoint would work through the stock methods' runs too).
    Its log goes to the bench's dpfreeze-service.log."""
    state = ctx.scratch / "dpfreeze-serve"
    state.mkdir(mode=0o700, exist_ok=True)
    with (ctx.workdir / "dpfreeze-service.log").open("ab") as log:
        proc = await trio.lowlevel.open_process(
            [*dpfreeze_command(), "-v", "serve", "--state-dir", str(state), "--socket",
             str(state / "control.sock")],
            env={**os.environ, **ctx.sb.env.environ()}, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        with trio.fail_after(SERVICE_START_TIMEOUT):
            while not (state / "control.sock").exists():
                if proc.poll() is not None:
                    raise UserError(f"dpfreeze serve exited ({proc.returncode}): see dpfreeze-service.log")
                await trio.sleep(0.1)
        ctx.service = state
        yield
    finally:
        ctx.service = None
        proc.terminate()
        with trio.CancelScope(shield=True), trio.move_on_after(30):
            await proc.wait()
        if proc.poll() is None:
            proc.kill()


def dpfreeze_command() -> list[str]:
    """`dpfreeze` as installed beside this interpreter, else its module."""
    script = Path(sys.executable).with_name("dpfreeze")
    return [str(script)] if script.exists() else [sys.executable, "-m", "dpfreeze.cli"]


async def dpfreeze_upgrade(ctx: Ctx, tl: Timeline, *, reload_kmod: bool = False,
                           alone: bool = False) -> None:
    """`dpfreeze upgrade` as an operator runs it, like the stock methods a process of its own: its
    start-up and imports count, and, `alone`, the service process it starts (on a netdev lab: with
    `--restart-command`, ovs-ctl stop and start in the switch namespace); else the running service
    (`dpfreeze_service`) runs it.  Its log's steps and state changes go onto the timeline; its report
    (with the per-phase profile) into `ctx.extra`."""
    state = ctx.scratch / "dpfreeze-state" if alone or ctx.service is None else ctx.service
    report = ctx.scratch / "upgrade-report.json"
    report.unlink(missing_ok=True)
    argv = [*dpfreeze_command(), "-v", "upgrade", "--state-dir", str(state), "--socket",
            str(state / "control.sock"), "--ttl", "120", "--datapath", ctx.datapath, "--report", str(report)]
    if restart := ctx.restart_command():
        argv += ["--restart-command", restart]
    if reload_kmod:
        argv.append("--reload-kmod")
    try:
        rc, lines = await stream(argv, ctx, tl, "dpfreeze-upgrade.log", UPGRADE_TIMEOUT, _upgrade_mark)
    finally:  # the service's own log (its phases, its hand-over) beside the command's
        with contextlib.suppress(OSError), (state / "service.log").open("rb") as src, \
                (ctx.workdir / "dpfreeze-service.log").open("ab") as dst:
            shutil.copyfileobj(src, dst)
    try:
        ctx.extra["upgrade"] = json.loads(report.read_text())
    except (OSError, ValueError):
        raise MethodFailed(f"dpfreeze upgrade: exit {rc}, no report: "
                           + (lines[-1] if lines else "no output")[:300]) from None
    if rc:
        upgrade = ctx.extra["upgrade"]
        raise MethodFailed("dpfreeze upgrade failed: "
                           + (upgrade.get("error") or "; ".join(upgrade.get("verify") or ()))[:300])


Method = Callable[[Ctx, Timeline], Awaitable[None]]
METHODS: dict[str, Method] = {"baseline": baseline, "stop-start": stop_start,
                              "ovs-ctl-restart": ovs_ctl_restart, "dpfreeze": dpfreeze_upgrade,
                              "dpfreeze-alone": dpfreeze_upgrade_alone,
                              # module reloads: not in the default set (`--methods` picks them)
                              "ovs-ctl-reload-kmod": ovs_ctl_reload_kmod,
                              "dpfreeze-kmod": dpfreeze_upgrade_kmod}


# -- the lab ---------------------------------------------------------------------------------------------


async def dp_stats(ctx: Ctx) -> DpStats:
    """The datapath's counters now (of the running daemon's datapath, on netdev)."""
    if ctx.netdev:
        from dpif.netdev_datapath import NetdevDatapath

        env = ctx.sb.env
        dp = NetdevDatapath(NETDEV_DATAPATH, lambda: env.unixctl("ovs-vswitchd"), timeout=5.0)
        return (await dp.info()).stats
    from dpif.netlink_datapath import get_datapath

    return (await get_datapath(DATAPATH)).stats


_GONE = (OSError, ValueError)  # no daemon, or one answering nonsense mid-restart (dpif.unixctl's errors)


@dataclass
class MissTally:
    """`missed` and `lost` over a run.  A kernel datapath's counters outlive the daemons: one delta.  A
    userspace datapath dies with its daemon and the new one counts from zero, so the last values read of
    each daemon are summed, polled every MISS_POLL (an old daemon's counts after its last read are lost)."""

    ctx: Ctx
    start: DpStats = field(default_factory=DpStats)
    last: dict[int, DpStats] = field(default_factory=dict)  # daemon pid -> its last counters
    latest: DpStats | None = None  # the last read's, for its flow count
    reads: int = 0

    async def read(self) -> None:
        try:
            pid = self.ctx.sb.env.pid("ovs-vswitchd") if self.ctx.netdev else 0
            with trio.move_on_after(1.0):
                value = await dp_stats(self.ctx)
                if not self.ctx.netdev or self.ctx.sb.env.pid("ovs-vswitchd") == pid:  # the same daemon
                    self.last[pid] = self.latest = value
                    self.reads += 1
        except _GONE:  # no daemon (restarting), or one not serving its socket yet
            pass

    async def begin(self) -> None:
        self.last.clear()
        await self.read()
        if not self.last:
            raise OSError("no ovs-vswitchd answers")
        self.start = self._sum()

    async def poll(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(MISS_POLL)
            await self.read()

    def _sum(self) -> DpStats:
        return DpStats(missed=sum(v.missed for v in self.last.values()),
                       lost=sum(v.lost for v in self.last.values()))

    def total(self) -> DpStats:
        now = self._sum()
        return DpStats(missed=now.missed - self.start.missed, lost=now.lost - self.start.lost)


class DaemonReaper:
    """Collect the lab's exited OVS daemons at once, as systemd (their parent on a real host) does.

    `ovs-ctl stop` (and any `kill -0` check) takes an exited daemon for a running one until its parent
    collects it, and a non-reaping init collects orphans only now and then (here: every ~1.5 s), which
    added seconds of "no daemon" to every method.  The bench becomes the child subreaper, so the detached
    daemons started under it (by the lab, ovs-ctl, dpfreeze) are re-parented to it, and it collects the
    ones named in the lab's pidfiles within 20 ms of their exit.
    """

    def __init__(self) -> None:
        self.env: OvsEnv | None = None
        self.known: set[int] = set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
        task_status.started()
        try:
            while True:
                self.collect()
                await trio.sleep(0.02)
        finally:
            libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)  # orphans started later go to init again

    def collect(self) -> None:
        if self.env is not None:
            for daemon in ("ovs-vswitchd", "ovsdb-server"):
                with contextlib.suppress(DaemonNotRunning):
                    self.known.add(self.env.pid(daemon))
        for pid in list(self.known):
            if not process_alive(pid):
                with contextlib.suppress(ChildProcessError):  # not ours: nothing to collect
                    os.waitpid(pid, os.WNOHANG)
                if not Path(f"/proc/{pid}").exists() or not _child(pid):
                    self.known.discard(pid)


def _child(pid: int) -> bool:
    fields = proc_stat(pid)
    return fields is not None and fields[1] == str(os.getpid())


def vswitchd_alive(sb: Sandbox) -> bool:
    try:
        return process_alive(sb.env.pid("ovs-vswitchd"))
    except DaemonNotRunning:
        return False


async def prepare(ctx: Ctx) -> None:
    """Make the lab ready for the next run, whatever the last method left: daemon up, FRW clear, flows
    (the bench flow, the filler rules if any: a stop-start loses the OpenFlow table; the datapath fill)."""
    sb = ctx.sb
    if not vswitchd_alive(sb):
        await sb.start_vswitchd()
    await sb.vsctl("--if-exists", "remove", "Open_vSwitch", ".", "other_config", "flow-restore-wait")
    for br in sb.bridges:
        await sb.run("ovs-ofctl", "add-flow", br, BENCH_FLOW)
        if ctx.filler is not None:
            await sb.run("ovs-ofctl", "add-flows", br, str(ctx.filler), timeout=300)
    if ctx.fill:
        await fill_datapath(ctx, ctx.fill)


FILL_HEADROOM = 20000  # the daemon's flow limit above the fill: the probes' own flows
FILL_ATTEMPTS = 3


async def keep_fill(sb: Sandbox, n: int) -> None:
    """Let the lab's daemons hold n unhit datapath flows: no idle expiry, no revalidation round but on a
    change, a flow limit above n.  A busy host's flows are all in use; here they are not, and OVS would
    idle them out after 10 s, or delete them all once they outnumber twice its startup limit of 10 000."""
    await sb.vsctl("set", "Open_vSwitch", ".", "other_config:max-idle=3600000",
                   "other_config:max-revalidator=3600000", f"other_config:flow-limit={n + FILL_HEADROOM}")


async def fill_datapath(ctx: Ctx, n: int) -> int:
    """n datapath flows that no probe hits, shaped like the daemon's own megaflows so that its revalidators
    keep them: the megaflow of a ping between the lab's namespaces (its in_port, MACs and actions),
    narrowed to UDP from a source address of its own (a mask narrower than the daemon's own is kept when
    revalidated; a wider one would be deleted).  Installed with `dpfreeze dpctl add-flows`: those still
    there from the last run are refused as existing, and stay.  Never deleted behind the daemon's back: a
    flow it holds a ukey for would not be installed again until a revalidation round, an hour away here.
    The daemon's flow limit is raised to match, first.  Returns the datapath's flow count after."""
    sb = ctx.sb
    src, dst = sb.ports[0], sb.ports[1]
    await sb.ping(src, dst, count=1)
    template = next((line for line in (await sb.dpctl("dump-flows", DATAPATH)).splitlines()
                     if f"eth(src={src.mac}" in line and "eth_type(0x0800),ipv4(" in line), None)
    if template is None:
        raise SandboxError("no IPv4 megaflow of the ping to copy")
    head, actions = template[:template.index("ipv4(")], template.split("actions:")[1].strip()
    path = ctx.scratch / "fill.flows"
    with path.open("w") as f:  # the destination exact too: OpenFlow rules on it (--openflow-rules) need it
        for i in range(n):
            f.write(f"{head}ipv4(src=10.{200 + (i >> 16)}.{i >> 8 & 255}.{i & 255},dst={dst.ipv4},proto=17,"
                    f"frag=no),udp(src=9) {actions}\n")
    flows = 0
    for _ in range(FILL_ATTEMPTS):  # a revalidator round that began before the limit was raised may cut it
        # the limit first: a daemon (a new one starts at 10 000) deletes every flow once they are twice that
        await sb.appctl("ovs-vswitchd", "upcall/set-flow-limit", str(n + FILL_HEADROOM))
        await sb.run(*dpfreeze_command(), "dpctl", "add-flows", DATAPATH, str(path), timeout=600,
                     check=False)
        flows = (await dp_stats(ctx)).flows
        if flows >= n:
            return flows
    if flows < n // 2:
        raise SandboxError(f"the datapath holds {flows} flows after filling it with {n}")
    return flows  # short of n (the run's `flows_before` says by how much), but a fill


def filler_rules(path: Path, n: int) -> Path:
    """n OpenFlow rules the probe traffic never matches (TCP to 10.200/16), as a controller-programmed
    host carries thousands: what `ovs-ctl restart` must restore before it clears flow-restore-wait."""
    path.write_text("".join(f"priority=5,tcp,nw_dst=10.200.{i >> 8 & 255}.{i & 255},"
                            f"tp_dst={1000 + (i >> 16)},actions=drop\n" for i in range(n)))
    return path


NEWFLOW_STRIDE = 2500  # new flows per run at most (a long TCG run sends ~1800) before ports are reused


def probe_spec(spec: BenchSpec, endpoints: tuple[Endpoint, Endpoint], run_index: int = 0) -> ProbeSpec:
    """Each run's new flows start where the last one's ended (8 runs before a port comes back, far beyond
    the 10 s a datapath flow lives idle): a new flow must not hit a flow left by the previous run."""
    return ProbeSpec(src=endpoints[0], dst=endpoints[1], rate=spec.rate, newflow_ms=spec.newflow_ms,
                     newflow_hosts=False, lead_s=spec.lead_s, tail_s=spec.tail_s,
                     newflow_first=run_index * NEWFLOW_STRIDE % 20000,
                     # a loaded TCG guest imports scapy (agent start) and writes a long run's log (stop)
                     # far slower than the probes' defaults allow
                     ready_timeout_s=300.0, stop_timeout_s=120.0)


async def measure(ctx: Ctx, spec: BenchSpec, method: str, run: int, out: Path,
                  stem: str | None = None) -> tuple[RunResult, Report | None]:
    """One probe run around one method; never raises for a failing method or probe."""
    res = RunResult(method, run)
    ctx.extra.clear()

    async def disrupt(tl: Timeline) -> None:
        t0 = time.monotonic()
        tl.mark(f"{method} begins")
        try:
            await METHODS[method](ctx, tl)
        except MethodFailed as exc:
            res.error = str(exc)
        res.method_s = round(time.monotonic() - t0, 3)
        tl.mark(f"{method} {'failed' if res.error else 'done'}")
        await trio.sleep(spec.settle_s)

    tally = MissTally(ctx)
    await tally.begin()
    res.flows_before = tally.latest.flows if tally.latest else None
    try:
        async with trio.open_nursery() as nursery:
            if ctx.netdev:
                await nursery.start(tally.poll)
            ctx.probe_runs += 1
            report = await run_probes(probe_spec(spec, ctx.endpoints, ctx.probe_runs), disrupt,
                                      workdir=ctx.scratch)
            nursery.cancel_scope.cancel()
    except ProbeError as exc:
        res.error = (res.error + "; " if res.error else "") + f"probes: {exc}"
        return res, None
    est, new = report.cls("established"), report.cls("newflow")
    # The sender's pace drops under load, so count the new flows it really sent: one miss each.
    tally.latest = None
    await tally.read()
    counted = tally.total()
    res.flows_after = tally.latest.flows if tally.latest else None
    res.missed, res.dp_lost = counted.missed, counted.lost
    res.expected_misses = new.sent
    hand_over = ((ctx.extra.get("upgrade") or {}).get("status") or {}).get("report") or {}
    res.replayed = int((hand_over.get("handover") or {}).get("replayed", 0))
    if hand_over.get("restorer") is not None:
        res.restorer = {"outcome": hand_over.get("outcome"), **hand_over["restorer"]}
    res.excess_misses = res.missed - new.sent - res.replayed
    res.established_sent, res.established_lost = est.sent, est.lost
    res.newflow_sent, res.newflow_lost = new.sent, new.lost
    res.largest_gap_ms = est.largest_gap_ms
    res.newflow_gap_ms = new.largest_gap_ms
    if new.window is not None and new.window.latency is not None:
        lat = new.window.latency
        res.newflow_delay_p50_ms, res.newflow_delay_p99_ms, res.newflow_delay_max_ms = \
            lat.p50_ms, lat.p99_ms, lat.max_ms
    if hand_over.get("handover"):
        res.held_s = hand_over["handover"].get("held_s")
    upgrade = ctx.extra.get("upgrade") or {}
    res.profile = upgrade.get("profile") or []
    service = upgrade.get("status") or {}
    peaks = [kb for kb in (upgrade.get("peak_rss_kb"), service.get("peak_rss_kb")) if kb]
    res.peak_rss_mb = round(max(peaks) / 1024, 1) if peaks else None
    tcp = next((c.tcp for c in report.classes if c.tcp is not None), None)
    res.tcp_survived = tcp.survived if tcp else None
    json_path, _ = write(report, out, stem or f"run{run}-{method}")
    res.report = json_path.name
    return res, report


# -- summary ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stat:
    median: float
    low: float
    high: float
    n: int

    def text(self, digits: int = 0) -> str:
        f = f"{{:.{digits}f}}"
        med = f.format(self.median)
        return med if self.low == self.high else f"{med} ({f.format(self.low)}-{f.format(self.high)})"


def summarize(results: Sequence[RunResult], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per method: runs, failed runs, and median/low/high of each metric over the runs that measured it."""
    out: dict[str, dict[str, Any]] = {}
    for m in methods:
        rows = [r for r in results if r.method == m]
        entry: dict[str, Any] = {"runs": len(rows), "failed": sum(1 for r in rows if r.error),
                                 "errors": sorted({r.error for r in rows if r.error})}
        for metric in METRICS:
            vals = [float(v) for r in rows if (v := getattr(r, metric)) is not None]
            entry[metric] = (asdict(Stat(statistics.median(vals), min(vals), max(vals), len(vals)))
                             if vals else None)
        for count in ("established_sent", "newflow_sent"):
            vals = [float(v) for r in rows if (v := getattr(r, count)) is not None]
            entry[count] = round(statistics.median(vals)) if vals else None
        entry["profile"] = profile_summary([r.profile for r in rows if r.profile and not r.error])
        out[m] = entry
    return out


def profile_summary(profiles: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per phase, in the order of the first run: the median start and duration over the runs."""
    names = list(dict.fromkeys(s["phase"] for prof in profiles for s in prof))
    out = []
    for name in names:
        spans = [s for prof in profiles for s in prof if s["phase"] == name]
        out.append({"phase": name, "at": round(statistics.median(s["at"] for s in spans), 3),
                    "seconds": round(statistics.median(s["seconds"] for s in spans), 3), "n": len(spans)})
    return sorted(out, key=lambda s: s["at"])


def _cell(entry: dict[str, Any], metric: str, digits: int = 0) -> str:
    s = entry.get(metric)
    return Stat(**s).text(digits) if s else "—"


def where(meta: dict[str, Any]) -> str:
    """"netdev datapath, natively on the host" / "system datapath, in the VM, one VM boot"."""
    dp = meta.get("datapath", "system")
    what = "kernel (system) datapath" if dp == "system" else f"userspace ({dp}) datapath"
    return f"{what}, {'in the VM, one VM boot' if meta.get('in_vm', True) else 'natively on the host'}"


def markdown(summary: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    """The results table for docs/benchmarks.md: medians with (low-high) ranges over the runs."""
    dp = meta.get("datapath", "system")
    load = f", load average {' '.join(meta['loadavg'])} at the start" if meta.get("loadavg") else ""
    lines = [f"Measured {meta['date']} by `dpfreeze bench upgrade --datapath {dp}` ({where(meta)}; "
             f"kernel {meta['kernel']}, {meta['ovs']}, {meta['cpu']}{load}); {meta['runs']} run(s) per "
             f"method, alternating; {meta['rate']:g} pps established, a new flow every "
             f"{meta['newflow_ms']:g} ms"
             + (f"; {meta['openflow_rules']} extra OpenFlow rules" if meta.get("openflow_rules") else "")
             + (f"; {meta['flows']} extra datapath flows" if meta.get("flows") else "") + ".",
             "",
             "| method | runs (failed) | established lost / sent | new-flow lost / sent | largest gap, ms "
             "| excess misses (storm) |",
             "|---|---|---|---|---|---|"]
    for m, e in summary.items():
        lines.append(f"| {m} | {e['runs']} ({e['failed']}) | {_cell(e, 'established_lost')} / "
                     f"{e['established_sent'] or '—'} | {_cell(e, 'newflow_lost')} / "
                     f"{e['newflow_sent'] or '—'} | "
                     f"{_cell(e, 'largest_gap_ms', 1)} | {_cell(e, 'excess_misses')} |")
    lines += ["", "The window: how long each method took, how long it dropped new flows (the longest run of "
              "lost ones), how late the new flows sent while it ran arrived (p50 / p99 / max) and, for "
              "dpfreeze, how long its miss buffer held misses.", "",
              "| method | method, s | new flows dropped for, ms | new-flow delay p50 / p99 / max, ms "
              "| buffer held, s | peak RSS, MB | datapath flows before / after |",
              "|---|---|---|---|---|---|---|"]
    for m, e in summary.items():
        lines.append(f"| {m} | {_cell(e, 'method_s', 1)} | {_cell(e, 'newflow_gap_ms')} | "
                     f"{_cell(e, 'newflow_delay_p50_ms')} / {_cell(e, 'newflow_delay_p99_ms')} / "
                     f"{_cell(e, 'newflow_delay_max_ms')} | {_cell(e, 'held_s', 1)} | "
                     f"{_cell(e, 'peak_rss_mb', 1)} | "
                     f"{_cell(e, 'flows_before')} / {_cell(e, 'flows_after')} |")
    for m, e in summary.items():
        if e.get("profile"):
            lines += ["", f"{m}, per phase (median over the runs; seconds after the command started, "
                      "phases may overlap):", "", "| phase | at, s | took, s |", "|---|---|---|"]
            lines += [f"| {s['phase']} | {s['at']:.2f} | {s['seconds']:.2f} |" for s in e["profile"]]
    for m, e in summary.items():
        lines += [f"\n{m} failed: {err}" for err in e["errors"]]
    return "\n".join(lines) + "\n"


async def meta(spec: BenchSpec) -> dict[str, Any]:
    ovs = (await trio.run_process(["ovs-vswitchd", "--version"], capture_stdout=True, check=False)).stdout
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "unknown cpu")
    return {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "kernel": os.uname().release,
            "ovs": ovs.decode().splitlines()[0].strip() if ovs else "ovs-vswitchd ?", "cpu": cpu,
            "cpus": os.cpu_count(), "in_vm": bool(os.environ.get("DPFREEZE_IN_VM")), "runs": spec.runs,
            "rate": spec.rate, "newflow_ms": spec.newflow_ms, "datapath": spec.datapath,
            "openflow_rules": spec.openflow_rules, "flows": spec.flows,
            "loadavg": Path("/proc/loadavg").read_text().split()[:3]}


# -- the bench -------------------------------------------------------------------------------------------


def need_kernel_datapath(what: str) -> None:
    if not Path("/sys/module/openvswitch").exists():
        raise UserError(f"{what} needs the kernel datapath (no openvswitch module loaded here); run it in "
                        f"the test VM: .venv/bin/python vm-tests/vm.py run --keep DIR -- dpfreeze {what} "
                        "--out /results")


async def lab_ctx(name: str, workdir: Path, scratch: Path, datapath: str = "system",
                  openflow_rules: int = 0, flows: int = 0) -> tuple[Any, Ctx]:
    """A two-namespace lab on the kernel (or userspace) datapath with the bench's OpenFlow table."""
    from dpfreeze.lab.topology import lab_up

    st = await lab_up(name, datapath=datapath, namespaces=2)
    sb = st.sandbox()
    a, b = st.endpoints()[:2]
    shim = make_modprobe_shim(scratch / "modprobe-shim") if datapath == "netdev" else None
    ctx = Ctx(sb, workdir, scratch, (a, b), shim=shim)
    if openflow_rules:
        ctx.filler = filler_rules(scratch / "filler.flows", openflow_rules)
    if flows:
        ctx.fill = flows
        await keep_fill(sb, flows)
    await prepare(ctx)
    await sb.ping(sb.ports[0], sb.ports[1], count=2)  # ARP and MAC learning done before any probe
    return st, ctx


async def bench(spec: BenchSpec, out: Path, progress: Callable[[str], None] = print) -> dict[str, Any]:
    from dpfreeze.lab.topology import lab_down

    out.mkdir(parents=True, exist_ok=True)
    info = await meta(spec)
    name = f"bench{os.getpid()}"
    results: list[RunResult] = []
    scratch = Path(tempfile.mkdtemp(prefix="dpfz-bench-"))
    reaper = DaemonReaper()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(reaper.run)
            try:
                _, ctx = await lab_ctx(name, out, scratch, spec.datapath, spec.openflow_rules, spec.flows)
                reaper.env = ctx.sb.env
                async with contextlib.AsyncExitStack() as stack:
                    if SERVICE_METHODS.intersection(spec.methods):
                        await stack.enter_async_context(dpfreeze_service(ctx))
                    await _runs(ctx, spec, out, results, progress)
            finally:
                if reaper.env is not None:  # the daemons' own logs and counters, beside the bench's
                    with trio.CancelScope(shield=True):
                        await _save_daemon_state(reaper.env, out)
                    for log in reaper.env.logdir.glob("*.log"):
                        with contextlib.suppress(OSError):
                            shutil.copyfile(log, out / f"lab-{log.name}")
                with trio.CancelScope(shield=True):
                    await lab_down(name)
                    await trio.sleep(0.1)  # the reaper collects the daemons lab_down stopped
                nursery.cancel_scope.cancel()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    summary = summarize(results, spec.methods)
    doc = {"meta": info, "spec": asdict(spec), "runs": [asdict(r) for r in results], "summary": summary}
    (out / "bench-upgrade.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / "bench-upgrade.md").write_text(markdown(summary, info))
    return doc


async def _runs(ctx: Ctx, spec: BenchSpec, out: Path, results: list[RunResult],
                progress: Callable[[str], None]) -> None:
    for k in range(spec.runs):
        order = list(spec.methods[k % len(spec.methods):]) + list(spec.methods[:k % len(spec.methods)])
        for method in order:
            try:
                await prepare(ctx)
            except SandboxError as exc:
                results.append(RunResult(method, k + 1, error=f"could not prepare the lab: {exc}"))
                continue
            res, _ = await measure(ctx, spec, method, k + 1, out)
            if upgrade := ctx.extra.get("upgrade"):
                res.upgrade_report = f"run{k + 1}-{method}-upgrade.json"
                (out / res.upgrade_report).write_text(json.dumps(upgrade, indent=1, default=str) + "\n")
            results.append(res)
            progress(_line(res))


async def _save_daemon_state(env: OvsEnv, out: Path) -> None:
    """The last daemon's coverage counters and datapath view (what its upcall handlers did)."""
    parts = []
    for command in ("coverage/show", "dpctl/show"):
        try:
            parts.append(f"$ ovs-appctl {command}\n" + await appctl.appctl(env, "ovs-vswitchd", command))
        except (OSError, trio.TooSlowError) as exc:
            parts.append(f"$ ovs-appctl {command}\n(failed: {exc})\n")
    (out / "lab-daemon-state.txt").write_text("\n".join(parts))


def _line(r: RunResult) -> str:
    if r.established_lost is None:
        return f"run {r.run} {r.method:16} no measurement: {r.error}"
    return (f"run {r.run} {r.method:16} established lost {r.established_lost}/{r.established_sent}, "
            f"new-flow lost {r.newflow_lost}/{r.newflow_sent}, gap {r.largest_gap_ms:.1f} ms, "
            f"excess misses {r.excess_misses} (missed {r.missed}, replayed {r.replayed}), "
            f"upcalls lost {r.dp_lost}, datapath flows {r.flows_before} -> {r.flows_after}, "
            f"method {r.method_s} s"
            + (f", restorer: {r.restorer.get('flows_restored')} flows {r.restorer.get('restored_after_s')} s "
               f"after the new daemon answered ({r.restorer.get('outcome')})" if r.restorer else "")
            + (f"  FAILED: {r.error}" if r.error else ""))
