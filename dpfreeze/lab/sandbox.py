"""A private, throwaway OVS: its own ovsdb-server and ovs-vswitchd, bridges, and ports into namespaces.

Everything lives under one short base directory (unix socket paths are limited to 108 bytes) and one name
prefix, so concurrent sandboxes (several test runs on one host) never collide, and teardown can remove
exactly what was created: namespaces, veths, both daemons, the directory.  With the userspace datapath the
daemons run in a private "switch" namespace, because every netdev-datapath vswitchd creates the same tap
device (ovs-netdev); the kernel datapath stays in the caller's namespace, where dpif code opens its sockets.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import trio

from dpfreeze import command
from dpfreeze.command import CommandFailed, Finished
from dpfreeze.ovs.ovsenv import DaemonNotRunning, OvsEnv, process_alive

log = logging.getLogger(__name__)

# Debian's OVS 3.1.0 counts 0 CPUs during the first 10 s of CLOCK_MONOTONIC and then never installs a
# flow (fixed upstream in 3.1.1, b354cee2e); vswitchd must not start before this uptime.
VSWITCHD_MIN_UPTIME = 10.5
StopMode = Literal["exit", "cleanup", "term", "kill"]


class SandboxError(RuntimeError):
    """A command the sandbox depends on failed; the message carries its stderr."""


@dataclass(frozen=True)
class NsPort:
    """One endpoint: a namespace whose veth peer is an OVS port on a bridge."""

    netns: str
    ifname: str  # inside netns
    port: str  # the OVS port / host-side veth
    bridge: str
    ipv4: str
    ipv6: str
    mac: str
    ofport: int

    def argv(self, *cmd: str) -> list[str]:
        """argv that runs `cmd` inside this endpoint's namespace."""
        return ["ip", "netns", "exec", self.netns, *cmd]


async def run(argv: Sequence[str], *, env: dict[str, str] | None = None, check: bool = True,
              timeout: float = 60.0) -> Finished:
    """Run a command to completion, capturing output; failures raise SandboxError with its stderr."""
    try:
        return await command.run(argv, timeout=timeout, env=env, check=check)
    except CommandFailed as exc:
        raise SandboxError(f"{' '.join(argv)}: {exc.why}") from None


def uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


@dataclass
class Sandbox:
    base: Path
    prefix: str
    datapath_type: str  # "system" (kernel) or "netdev" (userspace)
    switch_ns: str | None  # namespace the daemons and host-side veths live in; None = caller's
    env: OvsEnv
    bridges: list[str] = field(default_factory=list)
    ports: list[NsPort] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    veths: list[str] = field(default_factory=list)  # host-side ends, for ports that never got placed

    # -- commands ------------------------------------------------------------------------------------
    def _in_switch(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.switch_ns, *argv] if self.switch_ns else list(argv)

    async def run(self, *argv: str, check: bool = True, timeout: float = 60.0) -> str:
        """Run an OVS tool (or anything) with this sandbox's OVS_* directories, in the switch namespace."""
        proc = await run(self._in_switch(argv), env=self.env.environ(), check=check, timeout=timeout)
        return proc.stdout.decode(errors="replace")

    async def vsctl(self, *args: str, timeout: float = 30.0) -> str:
        return await self.run("ovs-vsctl", f"--timeout={int(timeout)}", *args, timeout=timeout + 5)

    async def appctl(self, target: str, *args: str, timeout: float = 30.0) -> str:
        return await self.run(
            "ovs-appctl", f"--timeout={int(timeout)}", "-t", target, *args, timeout=timeout + 5
        )

    async def dpctl(self, *args: str) -> str:
        """ovs-dpctl for the kernel datapath; the userspace datapath answers through ovs-appctl dpctl/."""
        if self.datapath_type == "netdev":
            return await self.appctl("ovs-vswitchd", f"dpctl/{args[0]}", *args[1:])
        return await self.run("ovs-dpctl", *args)

    # -- daemons -------------------------------------------------------------------------------------
    async def start_ovsdb(self) -> None:
        for d in (self.env.rundir, self.env.dbdir, self.env.logdir):
            d.mkdir(parents=True, exist_ok=True)
        if not self.env.db_file.exists():
            await self.run("ovsdb-tool", "create", str(self.env.db_file), str(self.env.schema))
        await self.run(
            "ovsdb-server", str(self.env.db_file), f"--remote=punix:{self.env.db_sock}",
            "--remote=db:Open_vSwitch,Open_vSwitch,manager_options", "--pidfile", "--detach",
            f"--log-file={self.env.logdir / 'ovsdb-server.log'}",
        )  # fmt: skip
        await self.vsctl("--no-wait", "init")

    async def start_vswitchd(self) -> None:
        """Start ovs-vswitchd (waiting out the OVS 3.1.0 early-boot bug) and wait until it serves."""
        if (early := VSWITCHD_MIN_UPTIME - uptime()) > 0:
            log.info(
                "waiting %.1f s for uptime %.1f before starting ovs-vswitchd", early, VSWITCHD_MIN_UPTIME
            )
            await trio.sleep(early)
        await self.run(
            "ovs-vswitchd",
            self.env.db_remote,
            "--pidfile",
            "--detach",
            f"--log-file={self.env.logdir / 'ovs-vswitchd.log'}",
        )
        await self.appctl("ovs-vswitchd", "version")
        await self.vsctl("wait-until", "Open_vSwitch", ".", "cur_cfg>=0")  # first reconfiguration done

    async def stop_daemon(self, daemon: str, mode: StopMode = "exit", timeout: float = 15.0) -> None:
        """Stop one daemon and wait until its process is gone.

        exit = `ovs-appctl exit` (kernel flows and ports stay), cleanup = `exit --cleanup` (datapath
        removed), term/kill = signals (nothing touched in the kernel).  Escalates to SIGKILL on timeout.
        """
        try:
            pid = self.env.pid(daemon)
        except DaemonNotRunning:
            return
        if not process_alive(pid):
            return
        if mode in ("exit", "cleanup"):
            args = ["exit", "--cleanup"] if mode == "cleanup" else ["exit"]
            with contextlib.suppress(SandboxError, trio.TooSlowError):
                await self.appctl(daemon, *args, timeout=timeout)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM if mode == "term" else signal.SIGKILL)
        with trio.move_on_after(timeout):
            while process_alive(pid):
                await trio.sleep(0.05)
        if process_alive(pid):
            log.warning("%s (pid %d) ignored %s; killing it", daemon, pid, mode)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            while process_alive(pid):
                await trio.sleep(0.05)
        self.env.pidfile(daemon).unlink(missing_ok=True)

    async def stop_vswitchd(self, mode: StopMode = "exit") -> None:
        await self.stop_daemon("ovs-vswitchd", mode)

    async def restart_vswitchd(self, mode: StopMode = "exit") -> None:
        await self.stop_vswitchd(mode)
        await self.start_vswitchd()

    # -- topology ------------------------------------------------------------------------------------
    async def add_bridge(self, name: str | None = None) -> str:
        name = name or f"{self.prefix}br{len(self.bridges)}"
        self.bridges.append(name)
        await self.vsctl("add-br", name, "--", "set", "Bridge", name, f"datapath_type={self.datapath_type}")
        return name

    async def add_ns_port(self, bridge: str, index: int | None = None) -> NsPort:
        """A new namespace with a veth whose peer is an OVS port: 10.0.0.<i>/24 and fd00::<i>/64.

        Addresses repeat across sandboxes on purpose: each endpoint is in its own namespace.
        """
        i = index if index is not None else len(self.ports) + 1
        ns, port, ifname = f"{self.prefix}n{i}", f"{self.prefix}p{i}", f"{self.prefix}e{i}"
        await run(["ip", "netns", "add", ns])
        self.namespaces.append(ns)
        await run(["ip", "link", "add", port, "type", "veth", "peer", "name", ifname, "netns", ns])
        self.veths.append(port)
        if self.switch_ns:
            await run(["ip", "link", "set", port, "netns", self.switch_ns])
        ipv4, ipv6 = f"10.0.0.{i}", f"fd00::{i:x}"
        for cmd in (
            ["addr", "add", f"{ipv4}/24", "dev", ifname],
            ["-6", "addr", "add", f"{ipv6}/64", "dev", ifname, "nodad"],
            ["link", "set", ifname, "up"],
            ["link", "set", "lo", "up"],
        ):
            await run(["ip", "-n", ns, *cmd])
        await run(self._in_switch(["ip", "link", "set", port, "up"]))
        await self.vsctl("add-port", bridge, port)
        ofport = int((await self.vsctl("get", "Interface", port, "ofport")).strip())
        link = json.loads((await run(["ip", "-n", ns, "-j", "link", "show", ifname])).stdout)
        nsport = NsPort(ns, ifname, port, bridge, ipv4, ipv6, link[0]["address"], ofport)
        self.ports.append(nsport)
        return nsport

    async def ping(self, src: NsPort, dst: NsPort, count: int = 3, *, v6: bool = False) -> str:
        """Ping dst from src's namespace; raises SandboxError on loss of every reply."""
        addr = dst.ipv6 if v6 else dst.ipv4
        proc = await run(
            src.argv("ping", "-6" if v6 else "-4", "-c", str(count), "-i", "0.2", "-W", "2", addr),
            timeout=30 + count,
        )
        return proc.stdout.decode()

    # -- teardown ------------------------------------------------------------------------------------
    def log_tail(self, lines: int = 30) -> str:
        out = []
        for f in sorted(self.env.logdir.glob("*.log")):
            text = f.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {f} (last {len(text)} lines) ---\n" + "\n".join(text))
        return "\n".join(out)

    async def close(self) -> None:
        """Remove everything this sandbox created; each step runs even when an earlier one fails."""
        with trio.CancelScope(shield=True):
            if self.bridges and _running(self.env, "ovs-vswitchd"):
                with contextlib.suppress(SandboxError, trio.TooSlowError):
                    await self.vsctl("--if-exists", *_del_brs(self.bridges), timeout=10)
            stops: tuple[tuple[str, StopMode], ...] = (("ovs-vswitchd", "cleanup"), ("ovsdb-server", "exit"))
            for daemon, mode in stops:
                try:
                    await self.stop_daemon(daemon, mode)
                except Exception:  # teardown must go on: a leaked namespace is worse than a lost warning
                    log.exception("stopping %s", daemon)
            for ns in [*self.namespaces, *([self.switch_ns] if self.switch_ns else [])]:
                await run(["ip", "netns", "del", ns], check=False)
            for veth in self.veths:  # normally gone with its namespace's peer already
                await run(["ip", "link", "del", veth], check=False)
            shutil.rmtree(self.base, ignore_errors=True)


def _running(env: OvsEnv, daemon: str) -> bool:
    try:
        return process_alive(env.pid(daemon))
    except DaemonNotRunning:
        return False


def _del_brs(bridges: Sequence[str]) -> list[str]:
    argv: list[str] = []
    for br in bridges:
        argv += [*(["--"] if argv else []), "del-br", br]
    return argv


@contextlib.asynccontextmanager
async def sandbox(
    datapath_type: str = "system",
    *,
    prefix: str | None = None,
    isolate: bool | None = None,
    start_vswitchd: bool = True,
) -> AsyncIterator[Sandbox]:
    """A private OVS with both daemons running; torn down on exit, whatever happened inside.

    `isolate` (default: only for the userspace datapath) runs the daemons in a private switch namespace.
    """
    prefix = prefix or "fd" + secrets.token_hex(2)
    base = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir="/tmp"))
    here = OvsEnv.from_environ()
    env = OvsEnv(base / "run", base / "db", base / "log", base / "etc", here.pkgdatadir, here.bindir)
    isolate = datapath_type == "netdev" if isolate is None else isolate
    sb = Sandbox(base, prefix, datapath_type, f"{prefix}sw" if isolate else None, env)
    try:
        if sb.switch_ns:
            await run(["ip", "netns", "add", sb.switch_ns])
            await run(["ip", "-n", sb.switch_ns, "link", "set", "lo", "up"])
        await sb.start_ovsdb()
        if start_vswitchd:
            await sb.start_vswitchd()
        yield sb
    finally:
        await sb.close()
