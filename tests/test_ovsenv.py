"""OVS directory resolution must match lib/dirs.c and ovs-appctl's target lookup."""

from __future__ import annotations

from pathlib import Path

import pytest

from dpfreeze.lab.sandbox import Sandbox
from dpfreeze.ovs.ovsenv import DaemonNotRunning, OvsEnv, process_alive


def test_defaults_are_debians() -> None:
    env = OvsEnv.from_environ({})
    assert env.rundir == Path("/var/run/openvswitch")
    assert env.dbdir == Path("/etc/openvswitch")
    assert env.logdir == Path("/var/log/openvswitch")
    assert env.sysconfdir == Path("/etc")
    assert env.pkgdatadir == Path("/usr/share/openvswitch")
    assert env.bindir == Path("/usr/bin")
    assert env.db_remote == "unix:/var/run/openvswitch/db.sock"
    assert env.schema == Path("/usr/share/openvswitch/vswitch.ovsschema")


def test_empty_variables_mean_default() -> None:
    assert OvsEnv.from_environ({"OVS_RUNDIR": "", "OVS_LOGDIR": ""}).rundir == Path("/var/run/openvswitch")


def test_dbdir_follows_sysconfdir_unless_set() -> None:
    assert OvsEnv.from_environ({"OVS_SYSCONFDIR": "/x"}).dbdir == Path("/x/openvswitch")
    assert OvsEnv.from_environ({"OVS_SYSCONFDIR": "/x", "OVS_DBDIR": "/d"}).dbdir == Path("/d")
    assert OvsEnv.from_environ({"OVS_SYSCONFDIR": "/x", "OVS_DBDIR": ""}).dbdir == Path("/x/openvswitch")


def test_environ_round_trips() -> None:
    env = OvsEnv.from_environ({"OVS_RUNDIR": "/r", "OVS_DBDIR": "/d", "OVS_LOGDIR": "/l"})
    assert OvsEnv.from_environ(env.environ()) == env


def test_unixctl_path_from_pidfile(tmp_path: Path) -> None:
    env = OvsEnv.from_environ({"OVS_RUNDIR": str(tmp_path)})
    (tmp_path / "ovs-vswitchd.pid").write_text("4242\n")
    assert env.unixctl("ovs-vswitchd") == tmp_path / "ovs-vswitchd.4242.ctl"
    assert env.unixctl("/abs/sock.ctl") == Path("/abs/sock.ctl")
    with pytest.raises(DaemonNotRunning):
        env.unixctl("ovsdb-server")


def test_current_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from dpfreeze.ovs import ovsenv

    monkeypatch.setenv("OVS_RUNDIR", "/somewhere")
    assert ovsenv.current().db_sock == Path("/somewhere/db.sock")


@pytest.mark.netdev
async def test_matches_ovs_appctl_for_a_running_daemon(ovs: Sandbox) -> None:
    """ovs-appctl, run with the sandbox's OVS_* variables, talks to the socket ovsenv names."""
    sock = ovs.env.unixctl("ovs-vswitchd")
    assert sock.is_socket()
    assert (await ovs.run("ovs-appctl", "-t", str(sock), "version")).startswith("ovs-vswitchd")
    assert ovs.env.db_sock.is_socket()


@pytest.mark.parametrize(("state", "alive"), [("S", True), ("R", True), ("Z", False)])
def test_a_zombie_daemon_is_not_running(tmp_path: Path, state: str, alive: bool) -> None:
    """An exited daemon its parent (a non-reaping init) has not collected yet: `kill -0` says alive."""
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "stat").write_text(f"42 (ovs-vswitchd) {state} 1 42 42 0 -1 4194560 0\n")
    assert process_alive(42, tmp_path) is alive
    assert not process_alive(43, tmp_path)


def test_started_is_the_process_start_time(tmp_path: Path) -> None:
    import subprocess
    import time

    env = OvsEnv.from_environ({"OVS_RUNDIR": str(tmp_path)})
    assert env.started("ovs-vswitchd") is None  # no pidfile
    time.sleep(0.3)
    before = time.time()
    with subprocess.Popen(["sleep", "5"]) as child:
        env.pidfile("ovs-vswitchd").write_text(f"{child.pid}\n")
        started = env.started("ovs-vswitchd")
        child.kill()
    assert started is not None and before - 0.05 <= started <= time.time() + 0.05
