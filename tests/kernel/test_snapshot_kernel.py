"""Snapshot against the real openvswitch.ko: save -> delete the datapath -> restore -> identical dump,
internal port configuration back, and traffic forwarded by the restored flows with no daemon running.
Meters: recorded as the kernel shows them, and the ones a restore cannot bring back are reported."""

from __future__ import annotations

import argparse
import errno
from pathlib import Path

import pytest
import trio

from dpfreeze.cli import snapshot as snapshot_cli
from dpfreeze.errors import UserError
from dpfreeze.lab.sandbox import Sandbox
from dpfreeze.ovs import netdevconf
from dpfreeze.snapshot import MeterRecord, Snapshot, diff, meter_ids
from dpif.model import Meter, MeterBand, MeterBandStats, MeterBandType
from dpif.netlink.wire import KernelError
from dpif.netlink_datapath import list_datapaths, open_datapath

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


async def test_meters_recorded_and_the_unrecoverable_reported(ovs: Sandbox, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """The kernel answers a meter GET with counters only, never the unit, rates or bursts: the snapshot
    records which meters the flows use and whether they exist; after a del-dp the restore puts the flows
    back and names the meter it could not re-create (packets pass a missing meter unmetered)."""
    for k, v in ovs.env.environ().items():
        monkeypatch.setenv(k, v)
    a, b = ovs.ports
    await ovs.stop_vswitchd("exit")  # its revalidators would delete a flow that no OpenFlow rule explains
    async with open_datapath(DP) as dp:
        await dp.meter_set(Meter(1, kbps=True, bands=(MeterBand(MeterBandType.DROP, rate=1000, burst=100),)))
        got = await dp.meter_get(1)
        assert (got.id, got.packets, got.bands) == (1, 0, (MeterBandStats(),))
        ports = {v.name: v.port_no for v in await dp.ports()}
    # meter(2) does not exist: the kernel accepts the action and lets packets through.
    key = f"in_port({ports[a.port]}),eth(),eth_type(0x0800),ipv4(frag=no)"
    await ovs.dpctl("add-flow", f"system@{DP}", key, f"meter(1),meter(2),{ports[b.port]}")

    path = tmp_path / "metered.snap"
    await snapshot_cli.cmd_save(argparse.Namespace(file=str(path), datapath=[DP], no_openflow=True))
    d = Snapshot.load(path).datapath(DP)
    assert d.meter_ids == (1, 2)
    assert d.meters == (MeterRecord(1, present=True, bands=1), MeterRecord(2, present=False))
    assert any(g.startswith(f"meters: {DP}: meters [1] exist") for g in Snapshot.load(path).gaps)

    await ovs.dpctl("del-dp", f"system@{DP}")
    capsys.readouterr()
    assert await _restore(path) == 0  # a missing meter is reported, not a failure
    out = capsys.readouterr().out
    assert f"flows: {len(d.flows)} added, 0 already present" in out, out
    assert "meters: 0 present, 1 missing" in out and "missing meter 1: not re-created" in out, out
    async with open_datapath(DP) as dp:
        assert [meter_ids(f.actions) async for f in dp.flows() if meter_ids(f.actions)] == [{1, 2}]
        with pytest.raises(KernelError) as err:
            await dp.meter_get(1)
        assert err.value.code == errno.ENOENT  # nothing could bring its configuration back

    await ovs.start_vswitchd()
