"""`dpfreeze upgrade` on a real ovs-vswitchd (userspace datapath) when things go wrong: killed with SIGKILL
mid-restart, or its restart thawed by somebody else (systemd's ExecStartPost)."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
from servicetools import freeze_service

from dpfreeze.freeze.machine import State, StateStore
from dpfreeze.lab.sandbox import Sandbox
from dpfreeze.ovs import ovsdb
from dpfreeze.upgrade import upgrade

pytestmark = pytest.mark.netdev
DP = "netdev@ovs-netdev"


async def wait_for(what: str, timeout: float, check: object) -> None:
    with trio.move_on_after(timeout):
        while not await check():  # type: ignore[operator]
            await trio.sleep(0.1)
        return
    raise AssertionError(f"not within {timeout} s: {what}")


async def test_kill9_of_upgrade_mid_restart_still_ends_the_freeze_within_the_lease(ovs: Sandbox,
                                                                                  tmp_path: Path) -> None:
    state = tmp_path / "state"
    sock = tmp_path / "run" / "c.sock"
    argv = [sys.executable, "-m", "dpfreeze.cli", "upgrade", "--ttl", "4", "--datapath", DP,
            "--state-dir", str(state), "--socket", str(sock), "--restart-command", "sleep 600"]
    proc = subprocess.Popen(argv, env={**os.environ, **ovs.env.environ()}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        async def frozen() -> bool:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            return await ovsdb.get_flow_restore_wait(ovs.env, timeout=10)

        await wait_for("the upgrade froze", 120, frozen)
        os.killpg(proc.pid, signal.SIGKILL)  # the command, its shell and the restart command's sleep
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)

    async def cleared() -> bool:
        return not await ovsdb.get_flow_restore_wait(ovs.env, timeout=10)

    async def service_gone() -> bool:
        return not sock.exists()

    await wait_for("flow-restore-wait cleared by the lease", 60, cleared)
    await wait_for("the service it started exited after the thaw", 60, service_gone)
    assert StateStore(state / "state.json").load().state is State.THAWED
    await ovs.ping(*ovs.ports[:2])  # the daemon that never went away still forwards


async def test_a_restart_command_that_thaws_through_systemd_is_a_good_upgrade(
        ovs: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/operations.md's `upgrade --restart-command 'systemctl restart ovs-vswitchd'` with the drop-in:
    the unit's ExecStartPost thaws before the restart command returns; the upgrade takes that thaw."""
    start = " ".join(ovs._in_switch(["ovs-vswitchd", ovs.env.db_remote, "--pidfile", "--detach",
                                     f"--log-file={ovs.env.logdir / 'ovs-vswitchd.log'}"]))
    pidfile = ovs.env.pidfile("ovs-vswitchd")
    state = tmp_path / "st"
    thaw = f"{sys.executable} -m dpfreeze.cli thaw --socket {state / 'c.sock'} --state-dir {state}"
    restart = (f"pid=$(cat {pidfile}) && ovs-appctl -t ovs-vswitchd exit && "
               f"while kill -0 $pid 2>/dev/null; do sleep 0.05; done && {start} && {thaw}")
    async with freeze_service(ovs, state, monkeypatch, handover_timeout=10) as svc:
        rep = await upgrade(svc, ovs.env, ttl=120, datapath=DP, restart_command=restart)
    assert rep.ok and not rep.error, rep.text()
    assert rep.status["state"] == "thawed"
    assert not await ovsdb.get_flow_restore_wait(ovs.env, timeout=10)
    await ovs.ping(*ovs.ports[:2])


async def test_a_freeze_that_outlasted_its_lease_restarts_nothing(
        ovs: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A freeze slow enough to use up its lease (the matrix's 100 000-flow delete storm) has ended, upcalls
    given back, by the time the restart would begin: restarting then would be stock's restart with a stale
    report.  The upgrade renews the lease before the restart, and a refused renewal stops it there."""
    ran = tmp_path / "restart-ran"
    old_pid = ovs.env.pid("ovs-vswitchd")
    async with freeze_service(ovs, tmp_path / "st", monkeypatch, handover_timeout=5) as svc:
        class LeaseRunsOut:
            async def take_upcalls(self) -> dict[str, object]:
                doc = await svc.take_upcalls()
                svc.state = dataclasses.replace(svc.state, lease_expires=time.time() - 1)
                with trio.fail_after(10):
                    while svc.state.state is State.FROZEN:
                        await trio.sleep(0.05)
                return doc

            def __getattr__(self, name: str) -> object:
                return getattr(svc, name)

        rep = await upgrade(LeaseRunsOut(), ovs.env, ttl=120, datapath=DP,  # type: ignore[arg-type]
                            restart_command=f"touch {ran}")
    assert not rep.ok and "the freeze ended before the restart" in rep.error, rep.text()
    assert not ran.exists() and ovs.env.pid("ovs-vswitchd") == old_pid
    assert not await ovsdb.get_flow_restore_wait(ovs.env, timeout=10)
    await ovs.ping(*ovs.ports[:2])
