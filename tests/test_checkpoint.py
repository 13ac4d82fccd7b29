"""The OpenFlow checkpoint against a real ovs-vswitchd (userspace datapath, on the host): it follows the
bridge's flow monitor, dumps only after a change, pauses while frozen, and survives its daemon's restart."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from dpfreeze.errors import ungrouped
from dpfreeze.freeze.checkpoint import Checkpoint
from dpfreeze.lab.bench_checkpoint import CheckpointSpec, bench_checkpoint
from dpfreeze.lab.sandbox import Sandbox


async def until(predicate: object, timeout: float = 20.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():  # type: ignore[operator]
            await trio.sleep(0.05)


@pytest.mark.netdev
@pytest.mark.ovs_ports(1)
async def test_the_checkpoint_follows_changes_pauses_while_frozen_and_outlives_its_daemon(
        ovs: Sandbox, tmp_path: Path) -> None:
    br = ovs.bridges[0]
    frozen = False
    cp = Checkpoint(ovs.env, tmp_path / "openflow.checkpoint", paused=lambda: frozen, interval=0.2)

    def flows() -> tuple[str, ...]:
        return cp.bridges[br].flows if br in cp.bridges else ()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(cp.run)
        await until(lambda: br in cp.bridges)
        first = cp.dumps
        await trio.sleep(1.0)
        assert cp.dumps == first  # nothing changed: nothing dumped again
        await ovs.run("ovs-ofctl", "add-flow", br, "priority=7,udp,actions=NORMAL")
        await until(lambda: any("priority=7,udp" in f for f in flows()))
        frozen = True
        await ovs.run("ovs-ofctl", "add-flow", br, "priority=8,tcp,actions=drop")
        await trio.sleep(1.0)
        assert not any("priority=8" in f for f in flows())  # frozen: the copy stays as it was
        frozen = False
        await until(lambda: any("priority=8,tcp" in f for f in flows()))
        await ovs.restart_vswitchd()  # a new daemon: its monitor is opened again
        await ovs.run("ovs-ofctl", "add-flow", br, "priority=9,arp,actions=NORMAL")
        await until(lambda: any("priority=9,arp" in f for f in flows()))
        nursery.cancel_scope.cancel()
    assert Checkpoint(ovs.env, tmp_path / "openflow.checkpoint", paused=lambda: False).bridges[br].flows \
        == flows()  # what a restarted service starts from


@pytest.mark.netdev
async def test_bench_checkpoint_measures_both_windows(tmp_path: Path) -> None:
    doc = await bench_checkpoint(CheckpointSpec(rules=200, churn=5, seconds=5), tmp_path)
    assert doc["flows_held"] == 201  # the rules (replaced, never added) and the bridge's NORMAL flow
    assert doc["with_checkpoint"]["dumps"] >= 1 and doc["churn_alone"]["dumps"] == 0
    assert doc["with_checkpoint"]["max_staleness_s"] is not None
    assert "CPU, the service" in (tmp_path / "bench-checkpoint.md").read_text()


@pytest.mark.netdev
@pytest.mark.ovs_ports(1)
async def test_the_checkpoint_outlives_kill_9_of_its_daemon_again_and_again(
        ovs: Sandbox, tmp_path: Path) -> None:
    """A dump that fails as its monitor ends (the daemon killed) came out of the side-by-side dumps as an
    exception group holding their cancellation too, past the checkpoint's `except OpenFlowError`: the
    crash guard's service exited with it in the systemd guest, and forgot the crash loop it was counting."""
    br = ovs.bridges[0]
    cp = Checkpoint(ovs.env, tmp_path / "openflow.checkpoint", paused=lambda: False, interval=0.2)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(cp.run)
        await until(lambda: br in cp.bridges)
        for _ in range(2):
            await ovs.stop_vswitchd("kill")
            await trio.sleep(3)  # the monitor ends, a dump fails, a new monitor is refused
            await ovs.start_vswitchd()
            await trio.sleep(2)
        nursery.cancel_scope.cancel()
    assert br in cp.bridges


def test_side_by_side_errors_come_alone_and_ctrl_c_stays_itself() -> None:
    with pytest.raises(ValueError, match=r"^a$"), ungrouped():
        raise ExceptionGroup("reads", [ValueError("a"), ValueError("b")])
    with pytest.raises(BaseExceptionGroup), ungrouped():
        raise BaseExceptionGroup("reads", [ValueError("a"), KeyboardInterrupt()])
