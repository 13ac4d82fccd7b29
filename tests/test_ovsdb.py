"""flow-restore-wait through our OVSDB transactions: refusals (pure), a real private ovsdb-server (netdev)."""

from __future__ import annotations

import dataclasses
import json
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
        with pytest.raises(ovsdb.OvsdbError, match="did not answer a select in time"):
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


def test_dropped_columns_lists_what_the_installed_schema_lacks() -> None:
    running = {"tables": {"Interface": {"columns": {"name": {}, "ingress_policing_kpkts_rate": {}}},
                          "CT_Zone": {"columns": {"limit": {}}}}}
    installed = {"tables": {"Interface": {"columns": {"name": {}}}}}
    assert ovsdb.dropped_columns(running, installed) == {"CT_Zone": ["limit"],
                                                         "Interface": ["ingress_policing_kpkts_rate"]}
    assert ovsdb.dropped_columns(running, running) == {}


@pytest.mark.netdev
@pytest.mark.ovs_ports(2)
async def test_a_downgrade_names_the_set_columns_its_schema_drops(ovs: Sandbox, tmp_path: Path) -> None:
    """The installed schema is 2.15's shape (no Interface:ingress_policing_kpkts_*): the column set on one
    interface is named before ovs-ctl's conversion would drop it; the unset one is not."""
    schema = json.loads(ovs.env.schema.read_text())
    for column in ("ingress_policing_kpkts_rate", "ingress_policing_kpkts_burst"):
        del schema["tables"]["Interface"]["columns"][column]
    schema["version"] = "8.2.0"
    (tmp_path / "vswitch.ovsschema").write_text(json.dumps(schema))
    older = dataclasses.replace(ovs.env, pkgdatadir=tmp_path)
    assert await ovsdb.conversion_losses(ovs.env) == (json.loads(ovs.env.schema.read_text())["version"], [])
    await ovs.vsctl("set", "Interface", ovs.ports[0].port, "ingress_policing_kpkts_rate=100")
    target, losses = await ovsdb.conversion_losses(older)
    assert target == "8.2.0"
    assert losses == [ovsdb.ColumnLoss("Interface", "ingress_policing_kpkts_rate", 1)]
    assert losses[0].describe(target) == ("conf.db: converting to the installed schema 8.2.0 drops "
                                          "Interface:ingress_policing_kpkts_rate (set on 1 row)")
