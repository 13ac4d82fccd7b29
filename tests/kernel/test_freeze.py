"""Freeze, hand-over and thaw against openvswitch.ko and a real ovs-vswitchd, with real traffic (VM)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from servicetools import freeze_service, until

from dpfreeze.freeze import control, controlsock
from dpfreeze.freeze.machine import State, StateStore
from dpfreeze.freeze.service import CRASH
from dpfreeze.lab.sandbox import NsPort, Sandbox
from dpfreeze.ovs import ovsdb

pytestmark = pytest.mark.kernel

FLUSH_REPAIRED = "new daemon owns the upcalls; flush repaired"


@asynccontextmanager
async def pinging(src: NsPort, addr: str, interval: float = 0.05) -> AsyncIterator[list[int]]:
    """ping while the body runs, however long the restart takes; then [transmitted, received]."""
    argv = src.argv("ping", "-6" if ":" in addr else "-4", "-n", "-q", "-i", str(interval), addr)
    proc = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    result: list[int] = []
    try:
        yield result
        await trio.sleep(2)  # the last replies
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.stdout is not None
        out = b""
        with trio.fail_after(30):
            while chunk := await proc.stdout.receive_some(65536):
                out += chunk
            await proc.wait()
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out.decode())
    assert m, out.decode()
    result += [int(m.group(1)), int(m.group(2))]


async def n_flows(sb: Sandbox) -> int:
    return len([line for line in (await sb.dpctl("dump-flows")).splitlines() if line.strip()])


async def test_restart_while_frozen_loses_nothing_and_hands_over(
    ovs: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record_property: Callable[..., None]
) -> None:
    a, b = ovs.ports
    await ovs.ping(a, b)
    async with freeze_service(ovs, tmp_path / "st", monkeypatch, handover_timeout=30) as svc, \
            pinging(a, b.ipv4) as established:  # fmt: skip
        assert (await svc.freeze(300, "ovs-system"))["state"] == "frozen"
        assert await ovsdb.get_flow_restore_wait(ovs.env, timeout=30)
        await ovs.stop_vswitchd("exit")
        assert svc.handover is not None
        handover = svc.handover
        await until(lambda: handover.stats.taken_over, 30, "the upcall takeover")
        # a flow never seen before, started while no daemon runs: IPv6 (ND first, then echo)
        async with pinging(b, a.ipv6, 0.2) as new:
            await until(lambda: handover.stats.misses > 0, 30, "a buffered miss")
            await ovs.start_vswitchd()  # flow-restore-wait is set: it neither flushes nor takes upcalls yet
            doc = await svc.thaw()
    record_property("thaw report", str(doc.get("report")))
    record_property("pings", f"established {established}, new {new}")
    report = doc["report"]
    assert doc["state"] == "thawed", doc
    assert report["outcome"] == FLUSH_REPAIRED, report
    assert report["pin"]["reinstalled"] > 0
    assert report["handover"]["replayed"] > 0 and report["handover"]["overflow_packets"] == 0
    owners = report["upcall_owners"]
    assert owners and all(o["process"] == "ovs-vswitchd" for o in owners), owners
    assert not await ovsdb.get_flow_restore_wait(ovs.env, timeout=30)
    sent, received = established
    # 40 pings at 50 ms: pinging spanned the freeze and the restart (which now take seconds, not tens)
    assert sent > 40 and received == sent, established
    assert new[1] > 0, new
    await ovs.ping(a, b, v6=True)


async def test_the_crash_guard_without_systemd_hands_a_kill_9_to_the_next_daemon(
    ovs: Sandbox, tmp_path: Path, record_property: Callable[..., None]
) -> None:
    """`dpfreeze serve --guard`, the command as an operator (or a container's entry point) starts it, where
    nothing but the operator restarts the daemon: the guard freezes at the kill, the kernel flows forward
    meanwhile, and once a new daemon has run steadily it gets the checkpointed OpenFlow state and the
    freeze; SIGTERM then ends the service cleanly."""
    a, b = ovs.ports
    await ovs.ping(a, b)
    state_dir, sock, log = tmp_path / "st", tmp_path / "st" / "c.sock", tmp_path / "serve.log"
    argv = [str(Path(sys.executable).with_name("dpfreeze")), "serve", "--guard",
            "--state-dir", str(state_dir), "--socket", str(sock)]
    with log.open("ab") as stderr:  # OVS found as its own tools find it: OVS_RUNDIR and the rest
        proc = await trio.lowlevel.open_process(argv, env={**os.environ, **ovs.env.environ()}, stderr=stderr)

    async def status() -> dict[str, Any]:
        return await controlsock.call(str(sock), "status", {}, timeout=60)

    try:
        await until((state_dir / "openflow.checkpoint").exists, 180, "the checkpoint's first save")
        async with pinging(a, b.ipv4) as established:
            await ovs.stop_vswitchd("kill")
            frozen = await until_status(status, lambda d: d["state"] == "frozen", 30, "the crash freeze")
            assert CRASH in frozen["reason"], frozen
            await trio.sleep(2)  # no daemon at all: the pinned kernel flows forward
            await ovs.start_vswitchd()  # the supervisor's restart, with flow-restore-wait set
            doc = await until_status(status, lambda d: d["state"] == "thawed", 120, "the thaw")
        record_property("thaw report", str(doc.get("report")))
    finally:
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(60):
            code = await proc.wait()
        record_property("serve log", log.read_text()[-3000:])
    assert code == 0, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text()
    assert doc["reason"].startswith("done"), doc
    assert doc["report"]["outcome"].startswith("new daemon owns the upcalls"), doc["report"]
    assert not await ovsdb.get_flow_restore_wait(ovs.env, timeout=30)
    sent, received = established
    assert sent > 40 and received == sent, established
    await ovs.ping(a, b, v6=True)


async def until_status(status: Callable[[], Any], ok: Callable[[dict[str, Any]], bool], timeout: float,
                       what: str) -> dict[str, Any]:
    """The service's status once `ok` holds, asked over its socket every 0.1 s for up to `timeout`."""
    with trio.move_on_after(timeout):
        while not ok(doc := await status()):
            await trio.sleep(0.1)
        return doc
    raise AssertionError(f"no {what} within {timeout:g} s: {doc}")


async def test_del_flows_storm_and_kill9_of_the_daemon_then_lease_expiry(
    ovs: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = ovs.ports
    await ovs.ping(a, b)
    before = await n_flows(ovs)
    assert before > 0
    async with freeze_service(ovs, tmp_path / "st", monkeypatch, handover_timeout=2) as svc:
        await svc.freeze(45, "ovs-system")
        await ovs.stop_vswitchd("kill")
        assert svc.handover is not None
        handover = svc.handover
        await until(lambda: handover.stats.taken_over, 30, "the upcall takeover after kill -9")
        for _ in range(5):
            await ovs.dpctl("del-flows")
            await trio.sleep(0.1)
        await trio.sleep(1)
        assert await n_flows(ovs) >= before
        await ovs.ping(a, b, count=2)  # the re-installed kernel flows forward with no daemon at all
        await until(lambda: svc.state.state is State.THAWED, 120, "the lease to expire and the thaw")
    assert svc.state.reason.startswith("done")
    assert svc.state.report["outcome"] == "timed out waiting for the new daemon"
    assert svc.state.report["pin"]["flushes_detected"] >= 1
    assert not await ovsdb.get_flow_restore_wait(ovs.env, timeout=30)


# `dpfreeze serve` without the CLI's other command modules (each import costs seconds under TCG).
SERVE = (
    "import sys, trio; from pathlib import Path; from dpfreeze.log import setup_logging; "
    "from dpfreeze.freeze.service import FreezeService, ServiceConfig, SystemBackend; setup_logging(1); "
    "trio.run(FreezeService(ServiceConfig(Path(sys.argv[1]), Path(sys.argv[2])), SystemBackend()).run)"
)


async def test_killed_service_resumes_and_refusals_change_nothing(
    ovs: Sandbox, tmp_path: Path, record_property: Callable[..., None]
) -> None:
    a, b = ovs.ports
    state_dir, sock, log = tmp_path / "st", tmp_path / "st" / "c.sock", tmp_path / "serve.log"
    env = {**os.environ, **ovs.env.environ()}

    async def start() -> trio.Process:
        with log.open("ab") as stderr:
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-c", SERVE, str(state_dir), str(sock)], env=env, stderr=stderr
            )
        await until(sock.exists, 180, "the service socket")
        return proc

    async def call(cmd: str, **args: Any) -> dict[str, Any]:
        return await controlsock.call(str(sock), cmd, args, timeout=120)

    first = await start()
    try:
        with pytest.raises(control.ControlError, match="cannot thaw while idle"):
            await call("thaw")
        assert not (state_dir / "state.json").exists()
        await ovs.ping(a, b)  # fresh flows: the daemon's revalidators delete idle ones before the freeze
        frozen = await call("freeze", ttl=300)
        assert frozen["state"] == "frozen"
        pinned = frozen["counters"]["flows"]
        assert pinned > 0
        saved = (state_dir / "state.json").read_bytes()
        with pytest.raises(control.ControlError, match="cannot freeze while frozen"):
            await call("freeze", ttl=5)
        assert (state_dir / "state.json").read_bytes() == saved
        await ovs.stop_vswitchd("exit")
    finally:
        first.send_signal(signal.SIGKILL)
        await first.wait()
    try:
        assert StateStore(state_dir / "state.json").load().state is State.FROZEN
        await ovs.dpctl("del-flows")  # while neither the daemon nor dpfreeze runs
        second = await start()
        try:
            with trio.move_on_after(120):
                while await n_flows(ovs) < pinned:
                    await trio.sleep(0.2)
            assert await n_flows(ovs) >= pinned
            with trio.move_on_after(60):
                while not (await call("status"))["handover"]["taken_over"]:  # the dead service's pids
                    await trio.sleep(0.2)
            status = await call("status")
            assert status["state"] == "frozen" and status["handover"]["taken_over"], status
            await ovs.start_vswitchd()
            doc = await call("thaw")
            assert doc["state"] == "thawed" and doc["report"]["outcome"] == FLUSH_REPAIRED, doc
            assert not await ovsdb.get_flow_restore_wait(ovs.env, timeout=30)
            await ovs.ping(a, b)
        finally:
            second.send_signal(signal.SIGTERM)
            with trio.move_on_after(30):
                await second.wait()
            if second.returncode is None:
                second.kill()
                await second.wait()
        assert not sock.exists()  # a clean SIGTERM shutdown removes the socket
    finally:
        record_property("service log", log.read_text(errors="replace")[-6000:])
