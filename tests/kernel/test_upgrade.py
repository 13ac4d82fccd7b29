"""`dpfreeze upgrade` around a real ovs-vswitchd restart on openvswitch.ko, under traffic (in the VM)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from test_freeze import FLUSH_REPAIRED, freeze_service, pinging

from dpfreeze import ovsdb
from dpfreeze.sandbox import Sandbox
from dpfreeze.upgrade import upgrade

pytestmark = pytest.mark.kernel


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
    assert sent > 100 and received == sent, established


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
