"""`dpfreeze upgrade` with `dpfreeze serve` running, as the units install it, on a real ovs-vswitchd
(userspace datapath): the upgrade runs in the service and the command, which imports no trio, runs only the
commands that start processes; killed mid-restart, the service ends the upgrade it ran."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from dpfreeze.freeze.machine import State, StateStore
from dpfreeze.lab.faults import LOG_LINE
from dpfreeze.lab.sandbox import Sandbox
from dpfreeze.ovs import ovsdb

pytestmark = pytest.mark.netdev
DP = "netdev@ovs-netdev"


@asynccontextmanager
async def serving(ovs: Sandbox, state: Path) -> AsyncIterator[list[str]]:
    """`dpfreeze serve` as a process of its own; yields the options that reach it."""
    opts = ["--socket", str(state / "c.sock"), "--state-dir", str(state)]
    env = {**os.environ, **ovs.env.environ()}
    proc = subprocess.Popen([sys.executable, "-m", "dpfreeze.cli", "serve", *opts], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with trio.fail_after(60):
            while not (state / "c.sock").exists():
                assert proc.poll() is None
                await trio.sleep(0.05)
        yield opts
        assert proc.poll() is None, "the service outlives every upgrade it ran"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def command(ovs: Sandbox, *argv: str) -> subprocess.Popen[str]:
    """The command in the switch's network namespace, the service not: the new daemon, started by the
    command, finds its ports only there (as, under systemd, it belongs in the command's cgroup)."""
    return subprocess.Popen(ovs._in_switch([sys.executable, "-X", "importtime", "-m", "dpfreeze.cli", *argv]),
                            text=True, env={**os.environ, **ovs.env.environ()}, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


async def test_the_upgrade_runs_in_the_service_and_the_command_imports_no_trio(ovs: Sandbox,
                                                                               tmp_path: Path) -> None:
    old = ovs.env.pid("ovs-vswitchd")
    async with serving(ovs, tmp_path / "st") as opts:
        proc = command(ovs, "upgrade", "--datapath", DP, "--json", *opts)
        out, err = await trio.to_thread.run_sync(proc.communicate)
    imported = [line.rsplit("|", 1)[1].strip() for line in err.splitlines()
                if line.startswith("import time:")]
    rep = json.loads(out)
    assert proc.returncode == 0 and rep["ok"], err[-2000:]
    assert not [m for m in imported if m.split(".")[0] == "trio"]
    assert rep["old_pid"] == old and rep["new_pid"] == ovs.env.pid("ovs-vswitchd") != old
    assert [p["phase"] for p in rep["profile"]][:2] == ["startup", "plan"]
    assert rep["status"]["state"] == "thawed"
    assert not await ovsdb.get_flow_restore_wait(ovs.env, timeout=10)
    await ovs.ping(*ovs.ports[:2])


async def test_the_start_hooks_run_in_the_service_and_import_no_trio(ovs: Sandbox, tmp_path: Path) -> None:
    """The units' stop and start by hand (`dpfreeze freeze`, a daemon restart, ExecStartPre's `dpfreeze
    preflight --repair`, ExecStartPost's `dpfreeze thaw`) with the service running: each start hook is one
    request, the service does the check and the thaw (the OpenFlow state back into the new daemon first),
    and the command imports no trio (every start of ovs-vswitchd waits for them)."""
    br = ovs.bridges[0]
    await ovs.run("ovs-ofctl", "add-flow", br, "cookie=0x5eed,priority=10,ip,actions=NORMAL")
    async with serving(ovs, tmp_path / "st") as opts:
        frozen = command(ovs, "freeze", "--datapath", DP, *opts)
        _, err = await trio.to_thread.run_sync(frozen.communicate)
        assert frozen.returncode == 0, err[-2000:]
        await ovs.restart_vswitchd()  # stock's start: its OpenFlow tables empty
        outs = []
        for hook in (["preflight", "--repair"], ["thaw"]):
            proc = command(ovs, *hook, *opts)
            out, err = await trio.to_thread.run_sync(proc.communicate)
            assert proc.returncode == 0 and not said(err), err[-2000:]
            assert not [line for line in err.splitlines() if line.startswith("import time:")
                        and line.rsplit("|", 1)[1].strip().split(".")[0] == "trio"]
            outs.append(out)
    assert outs[0].startswith("preflight: ok: state frozen"), outs[0]
    assert "openflow: " in outs[1] and "state: thawed" in outs[1] and "thawed into" in outs[1], outs[1]
    assert "cookie=0x5eed" in await ovs.run("ovs-ofctl", "dump-flows", br)
    assert not await ovsdb.get_flow_restore_wait(ovs.env, timeout=10)
    await ovs.ping(*ovs.ports[:2])


async def test_refusals_by_the_service_are_one_line_and_change_nothing(ovs: Sandbox, tmp_path: Path) -> None:
    state = tmp_path / "st"
    async with serving(ovs, state) as opts:
        proc = command(ovs, "upgrade", "--datapath", "no-such-dp", *opts)
        _, err = await trio.to_thread.run_sync(proc.communicate)
    lines = said(err)
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("dpfreeze: error: "), err
    assert StateStore(state / "state.json").load().state is State.IDLE
    assert not await ovsdb.get_flow_restore_wait(ovs.env, timeout=10)


async def test_kill9_of_the_command_mid_restart_and_the_service_ends_the_upgrade(ovs: Sandbox,
                                                                                tmp_path: Path) -> None:
    """The restart command runs in the command's process group; both killed, the service thaws into the
    daemon that still runs (its lease would anyway, later)."""
    state = tmp_path / "st"
    old = ovs.env.pid("ovs-vswitchd")
    async with serving(ovs, state) as opts:
        proc = command(ovs, "upgrade", "--ttl", "120", "--datapath", DP, "--restart-command", "sleep 600",
                       *opts)
        with trio.fail_after(120):
            while not any(Path(f"/proc/{p}/cmdline").read_bytes().startswith(b"sleep\0")
                          for p in _group(proc.pid)):
                assert proc.poll() is None
                await trio.sleep(0.1)
        assert await ovsdb.get_flow_restore_wait(ovs.env, timeout=10)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        with trio.fail_after(60):
            while StateStore(state / "state.json").load().state is not State.THAWED:
                await trio.sleep(0.2)
    assert not await ovsdb.get_flow_restore_wait(ovs.env, timeout=10)
    assert ovs.env.pid("ovs-vswitchd") == old
    await ovs.ping(*ovs.ports[:2])


def said(err: str) -> list[str]:
    """What the operator reads: stderr without the import times and the log's lines."""
    return [line for line in err.splitlines()
            if not line.startswith("import time:") and not LOG_LINE.match(line)]


def _group(pgid: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                pids.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            pass
    return pids


async def test_the_service_killed_midway_and_the_command_recovers(ovs: Sandbox, tmp_path: Path) -> None:
    """Nobody restarts the killed service here (systemd would, and it would resume the freeze): the
    command finds a daemon running and clears flow-restore-wait itself; one line says so."""
    state = tmp_path / "st"
    old = ovs.env.pid("ovs-vswitchd")
    opts = ["--socket", str(state / "c.sock"), "--state-dir", str(state)]
    service = subprocess.Popen([sys.executable, "-m", "dpfreeze.cli", "serve", *opts],
                               env={**os.environ, **ovs.env.environ()}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        with trio.fail_after(60):
            while not (state / "c.sock").exists():
                await trio.sleep(0.05)
        proc = command(ovs, "upgrade", "--datapath", DP, "--restart-command", "sleep 5", *opts)
        with trio.fail_after(120):
            while not await ovsdb.get_flow_restore_wait(ovs.env, timeout=10):
                assert proc.poll() is None
                await trio.sleep(0.1)
        service.kill()
        _, err = await trio.to_thread.run_sync(proc.communicate)
    finally:
        service.kill()
        service.wait()
    lines = said(err)
    assert proc.returncode == 1 and len(lines) == 1, err
    assert lines[0].startswith("dpfreeze: error: the dpfreeze service was lost mid-upgrade ("), lines
    assert lines[0].endswith("no service answered again; flow-restore-wait cleared here"), lines
    assert not await ovsdb.get_flow_restore_wait(ovs.env, timeout=10)
    assert ovs.env.pid("ovs-vswitchd") == old
    await ovs.ping(*ovs.ports[:2])
