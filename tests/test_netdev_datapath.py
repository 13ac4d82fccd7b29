"""The userspace provider and the freeze of a userspace datapath, against a real ovs-vswitchd on the host."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from servicetools import freeze_service, until

from dpfreeze.cli import freeze as freeze_cli
from dpfreeze.cli import snapshot as snapshot_cli
from dpfreeze.lab.sandbox import Sandbox, SandboxError
from dpfreeze.ovs import ovsdb
from dpfreeze.upgrade import upgrade
from dpif.model import Flow
from dpif.netdev_datapath import NetdevDatapath, list_netdev_datapaths
from dpif.netlink import flowtext
from dpif.unixctl import UnixctlError

pytestmark = pytest.mark.netdev

DP = "netdev@ovs-netdev"


def provider(sb: Sandbox) -> NetdevDatapath:
    return NetdevDatapath(DP, lambda: sb.env.unixctl("ovs-vswitchd"))


def lines(dump: str) -> list[str]:
    """dump-flows lines without stats and the daemon-only extra info, sorted."""
    return sorted(flowtext.strip_stats(ln.split(", dp-extra-info:")[0]) for ln in dump.splitlines()
                  if ", actions:" in ln)


def ours(flows: list[Flow], *, verbose: bool, names: dict[int, str] | None = None) -> list[str]:
    return sorted(flowtext.strip_stats(flowtext.format_flow(f.key, f.mask, f.actions, f.ufid, f.stats,
                                                            verbose=verbose, port_names=names))
                  for f in flows)


async def learned(sb: Sandbox) -> NetdevDatapath:
    a, b = sb.ports
    await sb.ping(a, b)
    await sb.ping(b, a, v6=True)
    return provider(sb)


async def test_the_provider_sees_what_ovs_appctl_dpctl_prints(ovs: Sandbox) -> None:
    dp = await learned(ovs)
    assert await list_netdev_datapaths(lambda: ovs.env.unixctl("ovs-vswitchd")) == [DP]
    names = {p.port_no: p.name for p in await dp.ports()}
    assert set(names.values()) >= {"ovs-netdev", ovs.bridges[0], *(p.port for p in ovs.ports)}
    # Two dumps taken one after the other: a flow may come or go in between (a namespace's own IPv6
    # chatter), so they are compared again, a few times, before they count as different.
    for attempt in range(5):
        flows = [f async for f in dp.flows()]
        assert len(flows) >= 6 and (await dp.info()).stats.flows >= len(flows)
        theirs = (lines(await ovs.dpctl("dump-flows")), lines(await ovs.dpctl("dump-flows", "-m")))
        if (ours(flows, verbose=False), ours(flows, verbose=True, names=names)) == theirs or attempt == 4:
            break
    assert ours(flows, verbose=False) == theirs[0]
    assert ours(flows, verbose=True, names=names) == theirs[1]


async def test_flush_and_verbatim_reinstall_give_the_same_table(ovs: Sandbox) -> None:
    dp = await learned(ovs)
    before = [f async for f in dp.flows()]
    await dp.flow_flush()
    assert (await dp.info()).stats.flows == 0
    assert await dp.flow_put_many(before) == [None] * len(before)
    after = [f async for f in dp.flows()]
    # Every flow back verbatim; a flow the daemon learned meanwhile (a namespace's own IPv6 chatter: a CI
    # run met one between the re-install and the dump) is no difference.
    assert {(f.ufid, f.key, f.mask, f.actions) for f in before} <= {
        (f.ufid, f.key, f.mask, f.actions) for f in after}
    with pytest.raises(UnixctlError, match="File exists"):
        await dp.flow_put(before[0])
    gone = await dp.flow_del(ufid=before[0].ufid)
    assert gone is not None and gone.ufid == before[0].ufid
    assert await dp.flow_del(ufid=before[0].ufid) is None


async def ports_up(sb: Sandbox, n: int) -> None:
    with trio.fail_after(20):
        while True:
            try:
                if len(await provider(sb).ports()) >= n:
                    return
            except OSError:
                pass
            await trio.sleep(0.05)


async def test_a_daemon_under_flow_restore_wait_drops_what_its_empty_datapath_misses(ovs: Sandbox) -> None:
    """The control for the next test: the stock restart forwards nothing until flow-restore-wait is
    cleared (upcalls are disabled and the new datapath is empty)."""
    a, b = ovs.ports
    await ovs.ping(a, b)
    n = len(await provider(ovs).ports())
    await ovs.vsctl("set", "Open_vSwitch", ".", "other_config:flow-restore-wait=true")
    await ovs.restart_vswitchd()
    await ports_up(ovs, n)
    with pytest.raises(SandboxError):
        await ovs.ping(a, b, count=2)
    await ovs.vsctl("remove", "Open_vSwitch", ".", "other_config", "flow-restore-wait")
    await ovs.ping(a, b)


async def test_frozen_userspace_datapath_is_restored_into_the_new_daemon_before_the_thaw(
    ovs: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record_property: Callable[..., None]
) -> None:
    a, b = ovs.ports
    dp = await learned(ovs)
    names_before = {p.port_no: p.name for p in await dp.ports()}
    before = ours([f async for f in dp.flows()], verbose=True, names=names_before)
    async with freeze_service(ovs, tmp_path / "st", monkeypatch, handover_timeout=10) as svc:
        doc = await svc.freeze(300, DP)
        assert doc["state"] == "frozen" and doc["counters"]["flows"] == len(before)
        await svc.take_upcalls()  # nothing to take in a userspace datapath: accepted, not an error
        assert await ovsdb.get_flow_restore_wait(ovs.env, timeout=10)
        await ovs.restart_vswitchd()  # the new daemon starts under flow-restore-wait
        assert svc.restorer is not None
        await until(svc.restorer.done.is_set, 20, "the restore into the new daemon")
        assert await ovsdb.get_flow_restore_wait(ovs.env, timeout=10)
        names_after = {p.port_no: p.name for p in await dp.ports()}
        record_property("ports", f"before {names_before} after {names_after}")
        # Same flows port by port name, whatever numbers the new daemon gave its ports.
        assert ours([f async for f in dp.flows()], verbose=True, names=names_after) == before
        await ovs.ping(a, b)  # only the restored flows can carry it: the daemon takes no upcalls yet
        doc = await svc.thaw()
    report = doc["report"]
    assert doc["state"] == "thawed", doc
    assert report["outcome"] == "snapshot restored into the new daemon's datapath"
    assert report["restorer"]["flows_restored"] == len(before) and report["restorer"]["failures"] == 0
    assert not await ovsdb.get_flow_restore_wait(ovs.env, timeout=10)
    await ovs.ping(a, b)


async def test_upgrade_of_a_userspace_datapath(
    ovs: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record_property: Callable[..., None]
) -> None:
    """`dpfreeze upgrade --datapath netdev@ovs-netdev` with the sandbox's own restart (its daemons live
    in the switch namespace); the OpenFlow table comes back, the datapath is restored, the flag cleared."""
    a, b = ovs.ports
    br = ovs.bridges[0]
    await ovs.run("ovs-ofctl", "add-flow", br, "cookie=0x5eed,priority=10,ip,actions=NORMAL")
    await learned(ovs)
    start = " ".join(ovs._in_switch(["ovs-vswitchd", ovs.env.db_remote, "--pidfile", "--detach",
                                     f"--log-file={ovs.env.logdir / 'ovs-vswitchd.log'}"]))
    pidfile = ovs.env.pidfile("ovs-vswitchd")
    restart = (f"pid=$(cat {pidfile}) && ovs-appctl -t ovs-vswitchd exit && "
               f"while kill -0 $pid 2>/dev/null; do sleep 0.05; done && {start}")
    async with freeze_service(ovs, tmp_path / "st", monkeypatch, handover_timeout=10) as svc:
        rep = await upgrade(svc, ovs.env, ttl=120, datapath=DP, restart_command=restart)
    record_property("upgrade report", str(rep.to_json()))
    assert rep.ok, rep.to_json()
    assert [s["step"] for s in rep.steps] == ["freeze", "restart-command", "new-daemon", "restore-openflow",
                                              "thaw"]
    restorer = rep.status["report"]["restorer"]
    assert restorer["flows_restored"] > 0 and restorer["failures"] == 0, restorer
    assert "cookie=0x5eed" in await ovs.run("ovs-ofctl", "dump-flows", br)
    assert not await ovsdb.get_flow_restore_wait(ovs.env, timeout=10)
    await ovs.ping(a, b)


async def test_snapshot_cli_saves_and_restores_a_userspace_datapath(
    ovs: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for k, v in ovs.env.environ().items():
        monkeypatch.setenv(k, v)
    dp = await learned(ovs)
    before = sorted((f.ufid, f.key, f.mask, f.actions) for f in [f async for f in dp.flows()])
    path = tmp_path / "s.snap"
    args = argparse.Namespace(datapath=None, file=str(path), no_openflow=False)
    assert await snapshot_cli.cmd_save(args) == 0
    assert f"saved {path}: 1 datapaths, {len(before)} flows" in capsys.readouterr().out
    await dp.flow_flush()
    args = argparse.Namespace(file=str(path), datapath=None, openflow=False)
    assert await snapshot_cli.cmd_restore(args) == 0
    assert f"flows: {len(before)} added, 0 already present" in capsys.readouterr().out
    assert sorted((f.ufid, f.key, f.mask, f.actions) for f in [f async for f in dp.flows()]) == before


async def test_freeze_cli_finds_the_userspace_datapath_by_itself(
    ovs: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The systemd drop-in's `dpfreeze freeze` names no datapath: on a userspace-only host it is found."""
    async with freeze_service(ovs, tmp_path / "st", monkeypatch, handover_timeout=10) as svc:
        args = argparse.Namespace(socket=str(svc.config.socket_path), ttl=60.0, datapath="auto",
                                  take_upcalls=True, json=True)
        assert await freeze_cli.cmd_freeze(args) == 0
        assert (await svc.status())["datapath"] == DP
        await svc.thaw()
    assert not await ovsdb.get_flow_restore_wait(ovs.env, timeout=10)
