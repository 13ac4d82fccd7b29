"""flow-restore-wait through the OVSDB IDL: refusals (pure) and a real private ovsdb-server (netdev)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from dpfreeze.lab.sandbox import Sandbox
from dpfreeze.ovs import ovsdb
from dpfreeze.ovs.ovsenv import OvsEnv


def _env(rundir: Path) -> OvsEnv:
    return OvsEnv(rundir, rundir, rundir, rundir, Path("/usr/share/openvswitch"), Path("/usr/bin"))


async def test_missing_db_socket_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(ovsdb.OvsdbError, match=r"no ovsdb-server socket at .*db\.sock \(is ovsdb-server"):
        await ovsdb.set_flow_restore_wait(True, _env(tmp_path))


async def test_silent_server_hits_the_deadline(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.bind(str(tmp_path / "db.sock"))
        silent.listen(4)  # accepts connections (backlog) but never answers
        start = time.monotonic()
        with pytest.raises(ovsdb.OvsdbError, match="did not answer get_schema in time"):
            await ovsdb.get_flow_restore_wait(_env(tmp_path), timeout=0.5)
        assert time.monotonic() - start < 5


@pytest.mark.netdev
@pytest.mark.ovs_ports(0)
async def test_set_get_clear_flow_restore_wait(ovs: Sandbox) -> None:
    env = ovs.env
    await ovs.vsctl("set", "Open_vSwitch", ".", "other_config:keep-me=yes")
    assert await ovsdb.get_flow_restore_wait(env) is False
    assert await ovsdb.set_flow_restore_wait(True, env) is True
    assert (await ovs.vsctl("get", "Open_vSwitch", ".", "other_config:flow-restore-wait")).strip() == '"true"'
    assert await ovsdb.get_flow_restore_wait(env) is True
    assert await ovsdb.set_flow_restore_wait(True, env) is False  # already set: no transaction
    assert await ovsdb.set_flow_restore_wait(False, env) is True
    other = await ovs.vsctl("get", "Open_vSwitch", ".", "other_config")
    assert "flow-restore-wait" not in other and "keep-me=yes" in other
    assert await ovsdb.get_flow_restore_wait(env) is False
    assert await ovsdb.set_flow_restore_wait(False, env) is False
    # What ovs-ctl writes is read back the same way.
    await ovs.vsctl("set", "Open_vSwitch", ".", "other_config:flow-restore-wait=true")
    assert await ovsdb.get_flow_restore_wait(env) is True


@pytest.mark.netdev
@pytest.mark.ovs_ports(0)
async def test_versions(ovs: Sandbox) -> None:
    v = await ovsdb.versions(ovs.env)
    assert v.vswitchd_running and v.vswitchd_running.startswith("ovs-vswitchd (Open vSwitch) ")
    assert v.vswitchd_binary and v.kernel
    assert ovsdb.Versions.from_json(v.to_json()) == v
    await ovs.stop_vswitchd()
    stopped = await ovsdb.versions(ovs.env)
    assert stopped.vswitchd_running is None and stopped.vswitchd_binary == v.vswitchd_binary
