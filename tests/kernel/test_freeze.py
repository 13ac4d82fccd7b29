"""Freeze, hand-over and thaw against openvswitch.ko and a real ovs-vswitchd, with real traffic (VM)."""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from dpfreeze import control, ovsdb
from dpfreeze.machine import State, StateStore
from dpfreeze.sandbox import NsPort, Sandbox
from dpfreeze.service import FreezeService, ServiceConfig, SystemBackend

pytestmark = pytest.mark.kernel


@asynccontextmanager
async def freeze_service(
    sb: Sandbox, state_dir: Path, monkeypatch: pytest.MonkeyPatch, **config: Any
) -> AsyncIterator[FreezeService]:
    for k, v in sb.env.environ().items():
        monkeypatch.setenv(k, v)  # ovs-ofctl/ovs-vsctl run by the snapshot find the sandbox's OVS
    cfg = ServiceConfig(state_dir=state_dir, socket_path=state_dir / "c.sock", **config)
    svc = FreezeService(cfg, SystemBackend(sb.env))
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        yield svc
        nursery.cancel_scope.cancel()


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.05)
        return
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def ping_stream(
    src: NsPort, addr: str, seconds: int, out: dict[str, tuple[int, int]], name: str, interval: float = 0.05
) -> None:
    """ping for `seconds`; records (transmitted, received)."""
    argv = src.argv(
        "ping",
        "-6" if ":" in addr else "-4",
        "-n",
        "-q",
        "-i",
        str(interval),
        "-w",
        str(seconds),
        "-W",
        "1",
        addr,
    )
    proc = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", proc.stdout.decode())
    assert m, proc.stdout.decode() + proc.stderr.decode()
    out[name] = (int(m.group(1)), int(m.group(2)))


async def n_flows(sb: Sandbox) -> int:
    return len([line for line in (await sb.dpctl("dump-flows")).splitlines() if line.strip()])


async def test_restart_while_frozen_loses_nothing_and_hands_over(
    ovs: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record_property: Callable[..., None]
) -> None:
    a, b = ovs.ports
    await ovs.ping(a, b)
    pings: dict[str, tuple[int, int]] = {}
    async with freeze_service(ovs, tmp_path / "st", monkeypatch, handover_timeout=15) as svc:
        async with trio.open_nursery() as traffic:
            traffic.start_soon(ping_stream, a, b.ipv4, 25, pings, "established")
            await trio.sleep(1)
            frozen = await svc.freeze(120, "ovs-system")
            assert frozen["state"] == "frozen"
            assert await ovsdb.get_flow_restore_wait(ovs.env, timeout=30)
            await ovs.stop_vswitchd("exit")
            assert svc.handover is not None
            handover = svc.handover
            await until(lambda: handover.stats.taken_over, 10, "the upcall takeover")
            # a flow never seen before, started while no daemon runs: IPv6 (ND first, then echo)
            traffic.start_soon(ping_stream, b, a.ipv6, 18, pings, "new", 0.2)
            await until(lambda: handover.stats.misses > 0, 10, "a buffered miss")
            await ovs.start_vswitchd()  # flow-restore-wait is set: it neither flushes nor takes upcalls yet
            doc = await svc.thaw()
        record_property("thaw report", str(doc.get("report")))
        record_property("pings", str(pings))
    report = doc["report"]
    assert doc["state"] == "thawed", doc
    assert report["outcome"] == "new daemon owns the upcalls; flush repaired", report
    assert report["pin"]["reinstalled"] > 0
    assert report["handover"]["replayed"] > 0 and report["handover"]["overflow_packets"] == 0
    owners = report["upcall_owners"]
    assert owners and all(o["process"] == "ovs-vswitchd" for o in owners), owners
    assert not await ovsdb.get_flow_restore_wait(ovs.env, timeout=30)
    sent, received = pings["established"]
    assert sent > 100 and received == sent, pings
    assert pings["new"][1] > 0, pings
    await ovs.ping(a, b, v6=True)


async def test_del_flows_storm_and_kill9_of_the_daemon_then_lease_expiry(
    ovs: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = ovs.ports
    await ovs.ping(a, b)
    before = await n_flows(ovs)
    assert before > 0
    async with freeze_service(ovs, tmp_path / "st", monkeypatch, handover_timeout=2) as svc:
        await svc.freeze(15, "ovs-system")
        await ovs.stop_vswitchd("kill")
        assert svc.handover is not None
        handover = svc.handover
        await until(lambda: handover.stats.taken_over, 10, "the upcall takeover after kill -9")
        for _ in range(5):
            await ovs.dpctl("del-flows")
            await trio.sleep(0.1)
        await trio.sleep(1)
        assert await n_flows(ovs) >= before
        await ovs.ping(a, b, count=2)  # the re-installed kernel flows forward with no daemon at all
        await until(lambda: svc.state.state is State.THAWED, 40, "the lease to expire and the thaw")
    assert svc.state.reason.startswith("done")
    assert svc.state.report["outcome"] == "timed out waiting for the new daemon"
    assert svc.state.report["pin"]["flushes_detected"] >= 1
    assert not await ovsdb.get_flow_restore_wait(ovs.env, timeout=30)


SERVE = (
    "import sys, trio; from pathlib import Path; "
    "from dpfreeze.service import FreezeService, ServiceConfig, SystemBackend; "
    "trio.run(FreezeService(ServiceConfig(Path(sys.argv[1]), Path(sys.argv[2])), SystemBackend()).run)"
)


async def test_killed_service_resumes_and_refusals_change_nothing(ovs: Sandbox, tmp_path: Path) -> None:
    a, b = ovs.ports
    await ovs.ping(a, b)
    before = await n_flows(ovs)
    state_dir, sock = tmp_path / "st", tmp_path / "st" / "c.sock"
    env = {**os.environ, **ovs.env.environ()}

    async def start() -> trio.Process:
        argv = [sys.executable, "-c", SERVE, str(state_dir), str(sock)]
        proc = await trio.lowlevel.open_process(argv, env=env)
        await until(sock.exists, 180, "the service socket")
        return proc

    first = await start()
    try:
        with pytest.raises(control.ControlError, match="cannot thaw while idle"):
            await control.call(str(sock), "thaw")
        assert not (state_dir / "state.json").exists()
        assert (await control.call(str(sock), "freeze", {"ttl": 120}, timeout=60))["state"] == "frozen"
        saved = (state_dir / "state.json").read_bytes()
        with pytest.raises(control.ControlError, match="cannot freeze while frozen"):
            await control.call(str(sock), "freeze", {"ttl": 5})
        assert (state_dir / "state.json").read_bytes() == saved
    finally:
        first.send_signal(signal.SIGKILL)
        await first.wait()
    assert StateStore(state_dir / "state.json").load().state is State.FROZEN
    await ovs.dpctl("del-flows")  # happens while no dpfreeze runs
    second = await start()
    try:
        with trio.move_on_after(120):
            while await n_flows(ovs) < before:
                await trio.sleep(0.2)
        assert await n_flows(ovs) >= before
        status = await control.call(str(sock), "status")
        assert status["state"] == "frozen" and status["pin"]["reinstalled"] >= before
        doc = await control.call(str(sock), "thaw", timeout=60)
        assert doc["state"] == "thawed"
        assert not await ovsdb.get_flow_restore_wait(ovs.env, timeout=30)
    finally:
        second.send_signal(signal.SIGTERM)
        with trio.move_on_after(10):
            await second.wait()
        if second.returncode is None:
            second.kill()
            await second.wait()
    assert not sock.exists()  # a clean SIGTERM shutdown removes the socket
