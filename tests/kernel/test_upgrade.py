"""`dpfreeze upgrade` around a real ovs-vswitchd restart on openvswitch.ko, under traffic (in the VM)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from test_freeze import FLUSH_REPAIRED, freeze_service, pinging

from dpfreeze.cli.freeze import RemoteApi, cmd_thaw
from dpfreeze.lab.bench_upgrade import CTL_OPTS
from dpfreeze.lab.sandbox import Sandbox
from dpfreeze.ovs import ovsdb
from dpfreeze.upgrade import upgrade
from dpif.netlink_datapath import open_datapath

pytestmark = pytest.mark.kernel

CUSTOM_ACTIONS = "NORMAL"  # behaves like the default flow, so traffic works either way; the cookie tells


async def test_upgrade_restarts_the_daemon_without_losing_established_traffic(
    ovs: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record_property: Callable[..., None]
) -> None:
    a, b = ovs.ports
    await ovs.ping(a, b)
    old_pid = ovs.env.pid("ovs-vswitchd")
    async with freeze_service(ovs, tmp_path / "st", monkeypatch, handover_timeout=30) as svc, \
            pinging(a, b.ipv4) as established:  # fmt: skip
        rep = await upgrade(svc, ovs.env, ttl=300, datapath="ovs-system")
    record_property("upgrade report", str(rep.to_json()))
    record_property("pings", f"established {established}")
    assert rep.ok, rep.to_json()
    assert rep.old_pid == old_pid and rep.new_pid not in (None, old_pid)
    assert rep.new_pid == ovs.env.pid("ovs-vswitchd")
    assert rep.status["report"]["outcome"] == FLUSH_REPAIRED
    assert [s["step"] for s in rep.steps] == [
        "freeze",
        "stop",
        "start",
        "new-daemon",
        "restore-openflow",
        "thaw",
    ]
    assert not await ovsdb.get_flow_restore_wait(ovs.env, timeout=30)
    sent, received = established
    assert sent > 40 and received == sent, established  # pinging ran throughout (the upgrade takes seconds)


async def test_failed_restart_command_thaws_and_clears_flow_restore_wait(
    ovs: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with freeze_service(ovs, tmp_path / "st", monkeypatch, handover_timeout=2) as svc:
        rep = await upgrade(svc, ovs.env, ttl=120, datapath="ovs-system", restart_command="exit 3")
        assert not rep.ok and "restart command failed" in rep.error
        assert rep.status["state"] == "thawed"
    assert not await ovsdb.get_flow_restore_wait(ovs.env, timeout=30)
    a, b = ovs.ports
    await ovs.ping(a, b)


async def test_a_new_daemon_that_never_comes_up_is_rolled_back_to_the_old_binary(
    ovs: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The restart stops the old daemon and the new one fails to start (a bad binary): the freeze keeps
    traffic on the pinned flows, then the old daemon's own binary (kept from /proc/PID/exe) is started with
    its command line, the freeze thaws, and the report says so."""
    old_pid = ovs.env.pid("ovs-vswitchd")
    async with freeze_service(ovs, tmp_path / "st", monkeypatch, handover_timeout=10) as svc:
        rep = await upgrade(svc, ovs.env, ttl=120, datapath="ovs-system", daemon_timeout=10,
                            restart_command="ovs-appctl -t ovs-vswitchd exit && /bin/false",
                            rollback_dir=tmp_path / "rollback")
    assert not rep.ok and "restart command failed" in rep.error, rep.text()
    assert rep.recovery.startswith("rolled back: started the previous ovs-vswitchd (3.1.0, kept from pid"), \
        rep.text()
    new_pid = ovs.env.pid("ovs-vswitchd")
    assert new_pid == rep.new_pid != old_pid
    assert Path(f"/proc/{new_pid}/exe").readlink().name.startswith("ovs-vswitchd")
    assert str(Path(f"/proc/{new_pid}/exe").readlink()).startswith(str(tmp_path / "rollback"))
    assert not (tmp_path / "rollback" / "ovs-vswitchd").exists()  # the copy goes once it is not needed
    assert rep.status["state"] == "thawed"
    assert not await ovsdb.get_flow_restore_wait(ovs.env, timeout=30)
    await ovs.ping(*ovs.ports[:2])


async def test_systemd_restart_path_restores_openflow_and_keeps_traffic(
    ovs: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The drop-in's `systemctl restart`, hook by hook: ExecStop `freeze --take-upcalls` then Debian's
    `ovs-ctl stop`, ExecStart `ovs-ctl start` (empty OpenFlow tables, flow-restore-wait set), ExecStartPost
    `thaw`, which must give the new daemon the saved OpenFlow flows before it clears flow-restore-wait."""
    a, b = ovs.ports
    br = ovs.bridges[0]
    await ovs.run("ovs-ofctl", "add-flow", br, f"cookie=0x5eed,priority=10,ip,actions={CUSTOM_ACTIONS}")
    await ovs.ping(a, b)
    ctl = [str(ovs.env.pkgdatadir / "scripts" / "ovs-ctl"), *CTL_OPTS]
    async with freeze_service(ovs, tmp_path / "st", monkeypatch, handover_timeout=30) as svc, \
            pinging(a, b.ipv4) as established:  # fmt: skip
        api = RemoteApi(svc.config.socket_path)
        await api.freeze(300, "ovs-system")
        await api.take_upcalls()
        await trio.run_process([*ctl[:2], "stop"], capture_stdout=True)
        await trio.run_process([*ctl, "start"], capture_stdout=True)
        args = argparse.Namespace(socket=str(svc.config.socket_path), no_wait=False, no_openflow=False,
                                  openflow_timeout=60.0, json=False)
        assert await cmd_thaw(args) == 0
        out = capsys.readouterr().out
        assert f"openflow: {br}: replace-flows" in out, out  # the new daemon had started with empty tables
    assert "cookie=0x5eed" in await ovs.run("ovs-ofctl", "dump-flows", br)
    assert not await ovsdb.get_flow_restore_wait(ovs.env, timeout=30)
    assert (await svc.status())["state"] == "thawed"
    sent, received = established
    assert sent > 40 and received == sent, established  # pinging ran throughout (the upgrade takes seconds)


async def test_upgrade_with_a_module_reload_keeps_port_numbers_and_flows(
    ovs: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record_property: Callable[..., None]
) -> None:
    """`upgrade --reload-kmod`: the datapath goes with the old module; the snapshot (datapath, vports with
    their numbers, flows) is restored into the new one before the new daemon starts, so traffic resumes
    without it and the daemon adopts the old port numbers (a stock force-reload-kmod renumbers them)."""
    a, b = ovs.ports
    await ovs.ping(a, b)
    async with open_datapath("ovs-system") as dp:
        before = {v.name: v.port_no for v in await dp.ports()}
    async with freeze_service(ovs, tmp_path / "st", monkeypatch, handover_timeout=60) as svc, \
            pinging(a, b.ipv4) as established:  # fmt: skip
        rep = await upgrade(svc, ovs.env, ttl=300, datapath="ovs-system", reload_kmod=True)
    record_property("upgrade report", str(rep.to_json()))
    record_property("pings", f"sent, received {established}")
    assert rep.ok, rep.to_json()
    assert [s["step"] for s in rep.steps] == [
        "freeze", "stop", "reload-kmod", "start", "new-daemon", "restore-openflow", "thaw"]
    reload = rep.steps[2]
    assert reload["vports"] == len(before) - 1 and reload["flows"] > 0 and reload["failures"] == 0, reload
    async with open_datapath("ovs-system") as dp:
        assert {v.name: v.port_no for v in await dp.ports()} == before
    assert not await ovsdb.get_flow_restore_wait(ovs.env, timeout=30)
    await ovs.ping(a, b)
    sent, received = established
    assert sent > 40 and received > sent // 2, established  # the module is gone for a moment, not longer
