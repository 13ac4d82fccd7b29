"""Snapshot against the real openvswitch.ko: save -> delete the datapath -> restore -> identical dump,
internal port configuration back, and traffic forwarded by the restored flows with no daemon running."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import trio

from dpfreeze import netdevconf, snapshot_cli
from dpfreeze.cli import UserError
from dpfreeze.sandbox import Sandbox
from dpfreeze.snapshot import Snapshot, diff
from dpif.netlink_datapath import list_datapaths

pytestmark = pytest.mark.kernel

DP = "ovs-system"


async def _restore(path: Path) -> int:
    return await snapshot_cli.cmd_restore(argparse.Namespace(file=str(path), datapath=None, openflow=False))


async def test_save_del_dp_restore_is_identical(ovs: Sandbox, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    for k, v in ovs.env.environ().items():
        monkeypatch.setenv(k, v)  # the CLI finds the sandbox's OVS the way ovs-vsctl would
    a, b = ovs.ports
    br = ovs.bridges[0]
    internal = f"{ovs.prefix}i1"
    await ovs.vsctl("add-port", br, internal, "--", "set", "Interface", internal, "type=internal")
    for cmd in (("link", "set", internal, "address", "02:aa:bb:cc:dd:02", "mtu", "1400", "up"),
                ("addr", "add", "192.0.2.1/24", "dev", internal),
                ("route", "add", "198.51.100.0/24", "via", "192.0.2.254", "dev", internal)):
        await trio.run_process(["ip", *cmd])
    await ovs.run("ovs-ofctl", "mod-port", br, a.port, "no-flood")
    await ovs.ping(a, b)
    await ovs.ping(b, a)

    first, second = tmp_path / "first.snap", tmp_path / "second.snap"
    await snapshot_cli.cmd_save(argparse.Namespace(file=str(first), datapath=[DP], no_openflow=False))
    snap = Snapshot.load(first)
    d = snap.datapath(DP)
    assert len(d.flows) >= 2 and {v.name for v in d.vports} >= {DP, br, a.port, b.port, internal}
    assert [n.name for n in snap.netdevs if n.name == internal] == [internal]
    assert snap.openflow[0].port_flags[a.port] == ("NO_FLOOD",)
    assert snap.versions and snap.versions.vswitchd_running

    # What a module reload (or `ovs-dpctl del-dp`) leaves: nothing.
    await ovs.stop_vswitchd("exit")
    await ovs.dpctl("del-dp", f"system@{DP}")
    assert DP not in {i.name for i in await list_datapaths()}

    assert await _restore(first) == 0
    out = capsys.readouterr().out
    assert f"vports: {len(d.vports) - 1} added, 1 already present" in out, out  # port 0 comes with the dp
    assert f"flows: {len(d.flows)} added, 0 already present" in out, out
    await snapshot_cli.cmd_save(argparse.Namespace(file=str(second), datapath=[DP], no_openflow=True))
    after = Snapshot.load(second)
    assert [str(x) for x in diff(snap, after) if x.kind not in ("openflow", "netdev")] == []
    assert after.datapath(DP).info.features == d.info.features  # per-CPU dispatch and all
    # Same ifindex for the re-created internal port (OVS_VPORT_ATTR_IFINDEX), veths re-attached as they were.
    assert {v.name: v.ifindex for v in after.datapath(DP).vports} == {v.name: v.ifindex for v in d.vports}
    (cfg,) = await trio.to_thread.run_sync(netdevconf.save, [internal])
    assert cfg == next(n for n in snap.netdevs if n.name == internal)

    # The restored flows forward on their own: no ovs-vswitchd is running.
    await ovs.ping(a, b, count=2)
    # Restoring again finds everything in place.
    capsys.readouterr()
    assert await _restore(first) == 0
    out = capsys.readouterr().out
    assert "vports: 0 added" in out and "flows: 0 added" in out, out

    await ovs.start_vswitchd()


async def test_refused_snapshot_changes_nothing(ovs: Sandbox, tmp_path: Path) -> None:
    good = tmp_path / "good.snap"
    await snapshot_cli.cmd_save(argparse.Namespace(file=str(good), datapath=[DP], no_openflow=True))
    bad = tmp_path / "bad.snap"
    bad.write_bytes(good.read_bytes()[:-1])
    await ovs.stop_vswitchd("exit")
    await ovs.dpctl("del-dp", f"system@{DP}")
    with pytest.raises(UserError, match="truncated snapshot"):
        await _restore(bad)
    assert DP not in {i.name for i in await list_datapaths()}
    await ovs.start_vswitchd()
