"""`dpfreeze lab faults`: the never-worse-than-stock rule (docs/reliability.md) tried fault by fault.

One lab (two namespaces on the kernel datapath, the bench's OpenFlow rule so that every new flow is an
upcall) and one probe run around the whole matrix: each cell is a `dpfreeze upgrade` run as an operator
runs it (default state directory and socket, OVS found by its OVS_* variables) with one fault injected at
one phase, then the rule checked: flow-restore-wait cleared within the lease, an ovs-vswitchd running and
forwarding new flows, the operator's output one line and no traceback.  What the traffic lost in each
cell comes from the probe buckets between the cell's marks.  Out: faults.json and the markdown table that
docs/reliability.md carries (`--doc` rewrites it there).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import trio

from dpfreeze import command
from dpfreeze.freeze import controlsock
from dpfreeze.freeze.defaults import DEFAULT_SOCKET
from dpfreeze.lab.bench_dpif import flow_lines
from dpfreeze.lab.bench_upgrade import BENCH_FLOW, DaemonReaper, lab_ctx
from dpfreeze.lab.sandbox import Sandbox
from dpfreeze.ovs import appctl, ovsdb
from dpfreeze.ovs.ovsenv import DaemonNotRunning, OvsEnv, process_alive
from dpfreeze.probe import ProbeSpec, Report, Timeline, run_probes

STATE_DIR = Path("/var/lib/dpfreeze")  # the defaults: the matrix runs dpfreeze as an operator would
TTL = 40.0
RULE_MARGIN = 20.0  # after the lease: the thaw itself, under qemu TCG
COMMAND_TIMEOUT = 240.0
# After which `upgrade.step` log line (`-v`) each phase has begun.
PHASES = {"freeze": "freeze", "stopped": "stop", "started": "start", "openflow": "new-daemon",
          "thaw": "restore-openflow"}
# The same, of an upgrade the running service runs: the command logs what it asked and what it ran.
SERVICE_PHASES = {"freeze": r"upgrade\.asked\b", "stopped": r"upgrade\.run\b", "started": r"upgrade\.ran\b"}
SERVICE_START = 120.0
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")
MARKERS = ("<!-- fault-matrix: begin (dpfreeze lab faults --doc) -->", "<!-- fault-matrix: end -->")


@dataclass
class Rig:
    sb: Sandbox
    dpfreeze: list[str]
    ttl: float = TTL
    old_pid: int = 0  # the daemon before the cell
    service: trio.Process | None = None  # `dpfreeze serve` of a cell that runs one, as the units do

    @property
    def env(self) -> OvsEnv:
        return self.sb.env

    def environ(self) -> dict[str, str]:
        return {**os.environ, **self.env.environ()}


Action = Callable[[Rig, "trio.Process"], Awaitable[None]]


@dataclass(frozen=True)
class Cell:
    group: str
    name: str
    phase: str | None = None  # inject `action` once this phase has begun; None: before the command
    action: Action | None = None
    args: tuple[str, ...] = ()
    setup: Callable[[Rig], Awaitable[None]] | None = None
    cleanup: Callable[[Rig], Awaitable[None]] | None = None
    twice: bool = False  # two upgrades started at once
    service: bool = False  # with `dpfreeze serve` running (default paths), which then runs the upgrade


@dataclass
class CellResult:
    group: str
    name: str
    exit: str  # "rc 0", "rc 1", "killed"
    said: str  # what the operator read: the report's first line or the error line
    lines: int  # non-log lines of the error output when the command failed
    traceback: bool
    frw_cleared_s: float | None  # after the command ended; None: not within the lease
    daemon: bool  # an ovs-vswitchd runs and answers at the end
    forwards: bool  # the new-flow probes of the cell's last seconds got through
    lost: dict[str, int] = field(default_factory=dict)
    start_ms: float = 0.0
    end_ms: float = 0.0
    injected: bool = True  # False: the phase never came, or the fault itself failed: the cell proves nothing

    @property
    def held(self) -> bool:
        return (self.injected and self.frw_cleared_s is not None and self.daemon and self.forwards
                and not self.traceback and self.lines <= 1)


async def sh(*argv: str, env: dict[str, str] | None = None, check: bool = True) -> str:
    return (await command.run(argv, timeout=COMMAND_TIMEOUT, env=env, check=check)).text.strip()


def vswitchd_pid(env: OvsEnv) -> int:
    with contextlib.suppress(DaemonNotRunning):
        pid = env.pid("ovs-vswitchd")
        if process_alive(pid):
            return pid
    return 0


def guardian_pids() -> list[int]:
    """The `dpfreeze serve` processes `upgrade` starts for itself."""
    out = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            argv = cmdline.read_bytes().split(b"\0")
            if b"serve" in argv and b"--hold-fd" in argv and process_alive(int(cmdline.parent.name)):
                out.append(int(cmdline.parent.name))
    return out


# --- the faults ---------------------------------------------------------------------------------------


async def kill_command(rig: Rig, proc: trio.Process) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # the command, its shell and its restart command


async def interrupt_command(rig: Rig, proc: trio.Process) -> None:
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C at a terminal reaches the whole foreground group


async def kill_service(rig: Rig, proc: trio.Process) -> None:
    for pid in guardian_pids():
        os.kill(pid, signal.SIGKILL)


async def start_service(rig: Rig) -> None:
    """`dpfreeze serve` with the default paths, its log in the state directory's service.log."""
    STATE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    with (STATE_DIR / "service.log").open("ab") as log:
        rig.service = await trio.lowlevel.open_process([*rig.dpfreeze, "-v", "serve"], env=rig.environ(),
                                                       stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    with trio.fail_after(SERVICE_START):
        while await _status(rig) is None:
            if rig.service.poll() is not None:
                raise RuntimeError(f"dpfreeze serve exited with {rig.service.returncode}")
            await trio.sleep(0.2)


async def _status(rig: Rig) -> str | None:
    """The running service's state; None while it does not answer."""
    with contextlib.suppress(Exception):
        return str((await controlsock.call(str(DEFAULT_SOCKET), "status", timeout=10)).get("state"))
    return None


async def stop_service(rig: Rig) -> None:
    """Once it has ended whatever freeze the cell left (a thaw, or the lease), SIGTERM."""
    if rig.service is not None:
        with trio.move_on_after(rig.ttl + RULE_MARGIN):
            while await _status(rig) in ("frozen", "handing_over"):
                await trio.sleep(0.5)
        rig.service.terminate()
        with trio.move_on_after(30):
            await rig.service.wait()
        if rig.service.poll() is None:
            rig.service.kill()
            await rig.service.wait()
        rig.service = None


async def restart_service(rig: Rig, proc: trio.Process) -> None:
    """kill -9 of the running service, and its start again 1 s later, as systemd's Restart=always does
    (it resumes the freeze from its state file)."""
    assert rig.service is not None
    rig.service.kill()
    await rig.service.wait()
    await trio.sleep(1.0)
    await start_service(rig)


async def kill_old_daemon(rig: Rig, proc: trio.Process) -> None:
    os.kill(rig.old_pid, signal.SIGKILL)


async def kill_new_daemon(rig: Rig, proc: trio.Process) -> None:
    pid = vswitchd_pid(rig.env)
    if pid and pid != rig.old_pid:
        os.kill(pid, signal.SIGKILL)


async def restart_ovsdb(rig: Rig, proc: trio.Process) -> None:
    """As a package upgrade does while the freeze holds: ovsdb-server stopped and started again."""
    pid = rig.env.pid("ovsdb-server")
    argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    await sh("ovs-appctl", "-t", "ovsdb-server", "exit", env=rig.environ(), check=False)
    with trio.move_on_after(10):
        while process_alive(pid):
            await trio.sleep(0.05)
    await sh(*argv, *([] if "--detach" in argv else ["--detach"]), env=rig.environ())


async def unload_module(rig: Rig, proc: trio.Process) -> None:
    """What `ovs-ctl force-reload-kmod` does to the module, run by somebody else mid-upgrade: the datapath
    deleted, then the module removed (the kernel refuses a bare rmmod while a datapath exists).  The fault is
    the deletion; the rmmod then fails whenever the service has already re-created the datapath, as it
    should, and the cell's log says which."""
    await sh("ovs-dpctl", "del-dp", "ovs-system", env=rig.environ())
    await sh("rmmod", "openvswitch", check=False)


async def delete_storm(rig: Rig, proc: trio.Process) -> None:
    await sh("ovs-dpctl", "del-flows", "ovs-system")


async def corrupt_snapshot(rig: Rig, proc: trio.Process) -> None:
    path = STATE_DIR / "freeze.snapshot"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


async def fill_flows(rig: Rig) -> None:
    """100 000 extra megaflows (a busy hypervisor): the delete storm's notifications overrun any buffer."""
    with tempfile.NamedTemporaryFile("w", suffix=".flows") as f:
        f.write("\n".join(flow_lines(100_000)) + "\n")
        f.flush()
        await sh(*rig.dpfreeze, "dpctl", "add-flows", "ovs-system", f.name)


def bad_state(data: bytes) -> Callable[[Rig], Awaitable[None]]:
    async def setup(rig: Rig) -> None:
        STATE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        (STATE_DIR / "state.json").write_bytes(data)
    return setup


async def small_disk(rig: Rig) -> None:
    STATE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    await sh("mount", "-t", "tmpfs", "-o", "size=16k,mode=0700", "dpfreeze-full", str(STATE_DIR))


async def read_only(rig: Rig) -> None:
    STATE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    await sh("mount", "-t", "tmpfs", "-o", "ro,mode=0700", "dpfreeze-ro", str(STATE_DIR))


async def unmount(rig: Rig) -> None:
    await sh("umount", str(STATE_DIR), check=False)


async def reload_module(rig: Rig) -> None:
    await sh("modprobe", "openvswitch", check=False)


def cells() -> list[Cell]:
    out = [Cell("none", "a clean upgrade")]
    for phase in PHASES:
        out.append(Cell("kill -9 of `dpfreeze upgrade`", phase, phase, kill_command))
    for phase in ("stopped", "started"):
        out.append(Cell("Ctrl-C of `dpfreeze upgrade`", phase, phase, interrupt_command))
    for phase in PHASES:
        out.append(Cell("kill -9 of the service `upgrade` started", phase, phase, kill_service))
    with_service = "(`dpfreeze serve` running)"
    out.append(Cell(f"a clean upgrade {with_service}", "run by the service", service=True))
    for phase in SERVICE_PHASES:
        out.append(Cell(f"kill -9 of `dpfreeze upgrade` {with_service}", phase, phase, kill_command,
                        service=True))
    for phase in ("stopped", "started"):
        out.append(Cell(f"Ctrl-C of `dpfreeze upgrade` {with_service}", phase, phase, interrupt_command,
                        service=True))
    for phase in SERVICE_PHASES:
        out.append(Cell("kill -9 of the running service, restarted 1 s later", phase, phase, restart_service,
                        service=True))
    out.append(Cell("kill -9 of the old ovs-vswitchd", "freeze", "freeze", kill_old_daemon))
    for phase in ("started", "openflow", "thaw"):
        out.append(Cell("kill -9 of the new ovs-vswitchd", phase, phase, kill_new_daemon))
    out += [
        Cell("ovsdb-server restarted", "stopped", "stopped", restart_ovsdb),
        Cell("datapath deleted, then rmmod", "stopped", "stopped", unload_module, cleanup=reload_module),
        Cell("snapshot file cut in half", "stopped", "stopped", corrupt_snapshot),
        Cell("state directory", "full (16 KiB tmpfs)", setup=small_disk, cleanup=unmount),
        Cell("state directory", "read-only", setup=read_only, cleanup=unmount),
        Cell("state file", "corrupt JSON", setup=bad_state(b'{"state": "frozen", ')),
        Cell("state file", "truncated", setup=bad_state(b'{"dpfreeze_state": 1, "state": "fro')),
        Cell("state file", "non-UTF-8", setup=bad_state(b'{"state": "\xff\xfe"}')),
        Cell("state file", "foreign", setup=bad_state(b'{"kind": "someone else\'s file", "state": 3}')),
        Cell("two upgrades", "started at once", twice=True),
        Cell("100 000-flow delete storm", "stopped", "stopped", delete_storm, setup=fill_flows),  # last: slow
    ]
    return out


# --- running a cell -----------------------------------------------------------------------------------


async def _upgrade(rig: Rig, cell: Cell, output: list[str]) -> str:
    """One `dpfreeze upgrade`, with the cell's fault at its phase; the exit as the table says it."""
    argv = [*rig.dpfreeze, "-v", "upgrade", "--ttl", f"{rig.ttl:g}", *cell.args]
    marker = (SERVICE_PHASES.get(cell.phase or "", "^$") if cell.service
              else rf"upgrade\.step .*\bstep={PHASES.get(cell.phase or '')}\b")
    proc = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            env=rig.environ(), start_new_session=True)
    assert proc.stdout is not None and proc.stderr is not None
    injected = False

    async def read(stream: trio.abc.ReceiveStream, lines: list[str], watch: bool) -> None:
        nonlocal injected
        buf = b""
        async for chunk in stream:
            buf += chunk
            *done, buf = buf.split(b"\n")
            for raw in done:
                line = raw.decode(errors="replace")
                lines.append(line)
                if watch and cell.action and not injected and re.search(marker, line):
                    try:
                        await cell.action(rig, proc)
                        injected = True
                    except Exception as exc:  # recorded: a fault not injected proves nothing
                        lines.append(f"fault not injected: {exc}")
        if buf:
            lines.append(buf.decode(errors="replace"))

    out: list[str] = []
    if cell.action is None:
        injected = True
    try:
        with trio.fail_after(COMMAND_TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read, proc.stdout, out, False)
                nursery.start_soon(read, proc.stderr, output, True)
                await proc.wait()
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    output[:0] = out
    if not injected:
        output.append("fault not injected")
    return "killed" if proc.returncode is not None and proc.returncode < 0 else f"rc {proc.returncode}"


async def _rule(rig: Rig) -> tuple[float | None, bool]:
    """Seconds until flow-restore-wait reads false (None: not within the lease), and whether a daemon runs
    and answers once every dpfreeze process of the cell is done."""
    t0 = trio.current_time()
    cleared = None
    with trio.move_on_after(rig.ttl + RULE_MARGIN):
        while True:
            with contextlib.suppress(ovsdb.OvsdbError, trio.TooSlowError, OSError):
                if not await ovsdb.get_flow_restore_wait(rig.env, timeout=10):
                    cleared = round(trio.current_time() - t0, 1)
                    break
            await trio.sleep(0.5)
    with trio.move_on_after(rig.ttl + RULE_MARGIN):
        while guardian_pids():  # the service finishes what a dead command began, then exits
            await trio.sleep(0.5)
    daemon = False
    with trio.move_on_after(30):
        while not daemon:
            daemon = bool(vswitchd_pid(rig.env)) and bool(await appctl.version(rig.env, "ovs-vswitchd", 5))
            await trio.sleep(0.5)
    return cleared, daemon


def said(lines: Sequence[str], exit: str) -> tuple[str, int, bool]:
    """What the operator read (the log lines of `-v` aside): the error line, else the report's first line
    and its recovery; how many error lines; whether a traceback showed."""
    text = [line for line in lines if line.strip() and not LOG_LINE.match(line)]
    traceback = any("Traceback" in line for line in lines)
    errors = [line.strip() for line in text if line.startswith("dpfreeze: error")]
    if errors:
        return errors[-1], len(errors), traceback
    if not text:
        return ("(nothing: killed)" if exit == "killed" else ""), 0, traceback
    recovery = [line.strip() for line in text if line.startswith("  recovery:")]
    return " / ".join([text[0].strip(), *recovery]), 0, traceback


def lost_between(report: Report, start_ms: float, end_ms: float) -> dict[str, int]:
    return {c.name: sum(b.lost for b in c.buckets if start_ms <= b.t_ms < end_ms) for c in report.classes}


def forwards_at_end(report: Report, end_ms: float, span_ms: float = 2000.0) -> bool:
    new = report.cls("newflow")
    window = [b for b in new.buckets if end_ms - span_ms <= b.t_ms < end_ms]
    return bool(window) and sum(b.sent for b in window) > 0 and not any(b.lost for b in window)


async def run_cell(rig: Rig, cell: Cell, tl: Timeline) -> tuple[CellResult, str]:
    await _settle(rig)
    tag = f"{cell.group}: {cell.name}"
    tl.mark(f"cell {tag}")
    output: list[str] = []
    try:
        exit, cleared, daemon = await _run_cell(rig, cell, output)
    except Exception as exc:  # the harness itself failed: this cell proves nothing, the others still run
        output.append(f"fault not injected: harness: {type(exc).__name__}: {exc}")
        exit, cleared, daemon = "harness error", None, False
    await trio.sleep(3.0)  # the new-flow probes that show forwarding
    tl.mark(f"end {tag}")
    first, lines, traceback = said(output, exit)
    res = CellResult(cell.group, cell.name, exit, first, lines, traceback, cleared, daemon, False,
                     injected=not any(line.startswith("fault not injected") for line in output))
    service_log = STATE_DIR / "service.log"  # what the service `upgrade` started did meanwhile
    with contextlib.suppress(OSError):
        output += ["--- service.log", *service_log.read_text(errors="replace").splitlines()[-80:]]
        service_log.unlink()
    return res, "\n".join(output)


async def _run_cell(rig: Rig, cell: Cell, output: list[str]) -> tuple[str, float | None, bool]:
    """The cell's setup, its upgrade(s) with the fault, its cleanup: the exit and the rule's readings."""
    rig.old_pid = vswitchd_pid(rig.env)
    try:
        if cell.service:
            await start_service(rig)
        if cell.setup:
            await cell.setup(rig)
        if cell.twice:
            exits: list[str] = []
            outputs: list[list[str]] = [[], []]

            async def one(i: int) -> None:
                exits.append(await _upgrade(rig, cell, outputs[i]))
            async with trio.open_nursery() as nursery:
                for i in range(2):
                    nursery.start_soon(one, i)
            exit = " / ".join(sorted(exits))
            output = outputs[0] + outputs[1]
        else:
            exit = await _upgrade(rig, cell, output)
        cleared, daemon = await _rule(rig)
    finally:
        if cell.cleanup:
            await cell.cleanup(rig)
        await stop_service(rig)
    return exit, cleared, daemon


async def _settle(rig: Rig) -> None:
    """Between cells: the bench's OpenFlow rule present again (as the controller would re-send it) and
    nothing left of the previous cell's freeze."""
    with contextlib.suppress(Exception):
        await sh("ovs-ofctl", "add-flow", rig.sb.bridges[0], BENCH_FLOW, env=rig.environ())
    await trio.sleep(2.0)


@dataclass
class Matrix:
    results: list[CellResult]
    meta: dict[str, str]

    def to_json(self) -> str:
        return json.dumps({"meta": self.meta, "cells": [{**asdict(r), "held": r.held} for r in self.results]},
                          indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Matrix:
        doc = json.loads(text)
        return cls([CellResult(**{k: v for k, v in c.items() if k != "held"}) for c in doc["cells"]],
                   dict(doc["meta"]))


def dpfreeze_argv() -> list[str]:
    script = Path(sys.executable).with_name("dpfreeze")
    return [sys.executable, *([str(script)] if script.exists() else ["-m", "dpfreeze.cli"])]


async def run_matrix(out: Path, only: Sequence[str] = (), progress: Callable[[str], None] = print) -> Matrix:
    """Every cell (or those whose group or name contains one of `only`) in one lab under one probe run."""
    from dpfreeze.lab.topology import lab_down

    chosen = [c for c in cells() if not only or any(o in f"{c.group}: {c.name}" for o in only)]
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="dpfz-faults-"))
    results: list[CellResult] = []
    logs: dict[str, str] = {}
    name = f"faults{os.getpid()}"
    reaper = DaemonReaper()
    report: Report | None = None
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(reaper.run)
            try:
                _, ctx = await lab_ctx(name, out, scratch)
                reaper.env = ctx.sb.env
                rig = Rig(ctx.sb, dpfreeze_argv())
                await sh("ovs-ofctl", "add-flow", ctx.sb.bridges[0], BENCH_FLOW, env=rig.environ())

                async def every_cell(tl: Timeline) -> None:
                    for i, cell in enumerate(chosen, 1):
                        progress(f"faults: {i}/{len(chosen)} {cell.group}: {cell.name}")
                        res, log = await run_cell(rig, cell, tl)
                        results.append(res)
                        logs[f"{res.group}: {res.name}"] = log

                spec = ProbeSpec(src=ctx.endpoints[0], dst=ctx.endpoints[1], rate=100.0, newflow_ms=50.0,
                                 newflow_hosts=False, lead_s=2.0, tail_s=2.0, ready_timeout_s=300.0,
                                 stop_timeout_s=180.0)
                report = await run_probes(spec, every_cell)
            finally:
                with trio.CancelScope(shield=True):
                    await lab_down(name)
                    await trio.sleep(0.1)
                nursery.cancel_scope.cancel()
    finally:
        with contextlib.suppress(OSError):
            for p in scratch.iterdir():
                p.unlink()
            scratch.rmdir()
    assert report is not None
    (out / "faults-probes.json").write_text(report.to_json())
    (out / "faults-output.json").write_text(json.dumps(logs, indent=1) + "\n")
    marks = {e.name: e.t_ms for e in report.events}
    for r in results:
        r.start_ms, r.end_ms = marks[f"cell {r.group}: {r.name}"], marks[f"end {r.group}: {r.name}"]
        r.lost = lost_between(report, r.start_ms, r.end_ms)
        r.forwards = forwards_at_end(report, r.end_ms)
    matrix = Matrix(results, await meta())
    (out / "faults.json").write_text(matrix.to_json())
    (out / "faults.md").write_text(markdown(matrix))
    return matrix


async def meta() -> dict[str, str]:
    version = (await sh("ovs-vswitchd", "--version", check=False)).splitlines()[:1]
    return {"kernel": os.uname().release, "ovs": version[0] if version else "?",
            "date": (await sh("date", "-u", "+%Y-%m-%d %H:%M UTC"))}


def markdown(matrix: Matrix) -> str:
    """The table docs/reliability.md carries."""
    classes = ("established", "newflow", "tcp", "arp", "nd")
    m = matrix.meta
    rows = [f"`dpfreeze lab faults` on {m.get('date', '?')}: kernel {m.get('kernel', '?')}, "
            f"{m.get('ovs', '?')}, lease {TTL:g} s, 100 pps established, a new flow every 50 ms, TCP, ARP, "
            "ND.  Lost: packets lost in the cell (established / new flows / TCP / ARP / ND).", "",
            "| fault | at | exit | operator read | flow-restore-wait cleared | forwards | lost | rule |",
            "|---|---|---|---|---|---|---|---|"]
    for r in matrix.results:
        cleared = f"{r.frw_cleared_s:g} s" if r.frw_cleared_s is not None else "**no**"
        said_text = r.said.replace("|", "\\|")
        said_text = said_text if len(said_text) <= 120 else said_text[:117] + "..."
        lost = " / ".join(str(r.lost.get(c, "-")) for c in classes)
        rows.append(f"| {r.group} | {r.name} | {r.exit} | {said_text or '-'} | {cleared} | "
                    f"{'yes' if r.daemon and r.forwards else '**no**'} | {lost} | "
                    f"{'held' if r.held else '**not injected**' if not r.injected else '**broken**'} |")
    held = sum(r.held for r in matrix.results)
    rows += ["", f"{held} of {len(matrix.results)} cells held the rule."]
    return "\n".join(rows) + "\n"


def update_doc(doc: Path, table: str, markers: tuple[str, str] = MARKERS) -> None:
    """Replace the table between the markers of `doc` (docs/reliability.md)."""
    text = doc.read_text()
    begin, end = markers
    if begin not in text or end not in text:
        raise ValueError(f"{doc} has no {begin} ... {end} section")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{begin}\n{table}{end}{tail}")
