"""`dpfreeze preflight`: decisions on state files and service answers (pure), and the real command against
a private ovsdb-server (netdev)."""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from dpfreeze.errors import UserError
from dpfreeze.freeze import control, controlsock
from dpfreeze.freeze.machine import Event, FreezeState, State, StateStore, step
from dpfreeze.freeze.service import ServiceConfig
from dpfreeze.lab.sandbox import sandbox
from dpfreeze.ovs import ovsdb
from dpfreeze.preflight import REPAIR_DETAIL, preflight, stale_reason

FROZEN_AT, TTL = 1000.0, 60.0
VALID, EXPIRED = FROZEN_AT + 30, FROZEN_AT + TTL + 5


class FakeFrw:
    def __init__(self, value: bool = False, *, sticky: bool = False) -> None:
        self.value, self.sticky, self.clears = value, sticky, 0

    async def get(self) -> bool:
        return self.value

    async def clear(self) -> None:
        self.clears += 1
        self.value = self.value and self.sticky


def frozen() -> FreezeState:
    return step(FreezeState(), Event.FREEZE, now=FROZEN_AT, ttl=TTL, datapath="ovs-system",
                snapshot_path="/x/freeze.snapshot")


def thawed() -> FreezeState:
    return step(step(frozen(), Event.THAW, now=FROZEN_AT + 1), Event.DONE, now=FROZEN_AT + 2)


def handing_over() -> FreezeState:
    return step(frozen(), Event.THAW, now=FROZEN_AT + 1)


def config(base: Path) -> ServiceConfig:
    return ServiceConfig(state_dir=base / "state", socket_path=base / "control.sock")  # nobody listens


def persist(cfg: ServiceConfig, state: FreezeState | None) -> None:
    if state is not None:
        StateStore(cfg.state_file).save(state)


@pytest.mark.parametrize(
    ("state", "remaining", "frw", "stale"),
    [
        (State.IDLE, None, False, ""),
        (State.IDLE, None, True, "flow-restore-wait is set but nothing is frozen (state idle)"),
        (State.THAWED, None, True, "flow-restore-wait is set but nothing is frozen (state thawed)"),
        (State.FROZEN, 30.0, True, ""),
        (State.FROZEN, 30.0, False, ""),
        (State.HANDING_OVER, 30.0, False, ""),
        (State.FROZEN, -5.0, True, "lease expired 5 s ago (state frozen); flow-restore-wait is set"),
        (State.HANDING_OVER, 0.0, False, "expired 0 s ago (state handing_over); flow-restore-wait is clear"),
    ],
)
def test_stale_reason(state: State, remaining: float | None, frw: bool, stale: str) -> None:
    got = stale_reason(state, remaining, frw)
    assert (stale in got) if stale else got == ""


@pytest.mark.parametrize(
    ("name", "state", "clock", "frw"),
    [
        ("fresh", None, VALID, False),
        ("thawed", thawed(), VALID, False),
        ("frozen, valid lease", frozen(), VALID, True),
        ("frozen, valid lease, FRW not set yet", frozen(), VALID, False),
        ("handing over, valid lease", handing_over(), VALID, False),
    ],
)
async def test_fit_to_start_changes_nothing(
    tmp_path: Path, name: str, state: FreezeState | None, clock: float, frw: bool
) -> None:
    cfg = config(tmp_path)
    persist(cfg, state)
    before = cfg.state_file.read_bytes() if state else None
    fake = FakeFrw(frw)
    for repair in (False, True):
        res = await preflight(cfg, fake, repair=repair, clock=lambda: clock)
        assert res.stale == "" and res.repaired == () and not res.service, name
        assert res.text().startswith("preflight: ok: ")
    assert fake.value is frw and fake.clears == 0
    assert (cfg.state_file.read_bytes() if state else cfg.state_file.exists()) == (before or False)


@pytest.mark.parametrize(
    ("state", "frw", "stale", "repaired", "after"),
    [
        (None, True, "nothing is frozen (state idle)", ["cleared flow-restore-wait"], State.IDLE),
        (thawed(), True, "nothing is frozen (state thawed)", ["cleared flow-restore-wait"], State.THAWED),
        (frozen(), True, "lease expired 5 s ago (state frozen)",
         ["state file frozen -> thawed", "cleared flow-restore-wait"], State.THAWED),
        (frozen(), False, "lease expired 5 s ago (state frozen)", ["state file frozen -> thawed"],
         State.THAWED),
        (handing_over(), True, "(state handing_over)",
         ["state file handing_over -> thawed", "cleared flow-restore-wait"], State.THAWED),
    ],
)
async def test_stale_is_refused_unchanged_then_repaired(
    tmp_path: Path, state: FreezeState | None, frw: bool, stale: str, repaired: list[str], after: State
) -> None:
    cfg = config(tmp_path)
    persist(cfg, state)
    before = cfg.state_file.read_bytes() if state else None
    fake = FakeFrw(frw)

    res = await preflight(cfg, fake, clock=lambda: EXPIRED)
    assert stale in res.stale and res.repaired == ()
    assert fake.value is frw and fake.clears == 0
    assert (cfg.state_file.read_bytes() if state else cfg.state_file.exists()) == (before or False)

    res = await preflight(cfg, fake, repair=True, clock=lambda: EXPIRED)
    assert stale in res.stale and list(res.repaired) == repaired
    assert res.state is after and not res.flow_restore_wait and fake.value is False
    assert res.text().startswith(f"preflight: repaired: {res.stale}: ")
    persisted = StateStore(cfg.state_file).load()
    assert persisted.state is after
    if state is not None and state.state is not State.THAWED:  # the table's path, with the reason kept
        assert persisted.error == REPAIR_DETAIL and persisted.lease_expires == 0.0
        assert persisted.snapshot_path == state.snapshot_path
    assert (await preflight(cfg, fake, clock=lambda: EXPIRED)).stale == ""


async def test_corrupt_state_file_is_one_line_and_nothing_changes(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    cfg.state_dir.mkdir()
    cfg.state_file.write_text("{not json")
    fake = FakeFrw(True)
    with pytest.raises(UserError, match=r"state\.json: not JSON"):
        await preflight(cfg, fake)
    assert fake.value is True and cfg.state_file.read_text() == "{not json"


async def test_repair_moves_a_corrupt_state_file_aside_and_clears_frw(tmp_path: Path) -> None:
    """No readable freeze means no lease to honour: the daemon must be able to start, FRW cleared."""
    cfg = config(tmp_path)
    cfg.state_dir.mkdir()
    cfg.state_file.write_text("{not json")
    fake = FakeFrw(True)
    done = await preflight(cfg, fake, repair=True, clock=lambda: VALID)
    assert fake.value is False and fake.clears == 1
    assert not cfg.state_file.exists()
    assert (cfg.state_dir / f"state.json.unreadable-{int(VALID)}").read_text() == "{not json"
    assert done.state is State.IDLE and "not JSON" in done.stale
    assert any("unreadable" in what for what in done.repaired)


async def test_a_repair_that_does_not_take_is_an_error(tmp_path: Path) -> None:
    fake = FakeFrw(True, sticky=True)
    with pytest.raises(UserError, match="preflight repair failed: still stale: flow-restore-wait is set"):
        await preflight(config(tmp_path), fake, repair=True)
    assert fake.clears == 1


@asynccontextmanager
async def fake_service(docs: list[dict[str, Any]]) -> AsyncIterator[ServiceConfig]:
    """A control socket answering `status` with each doc in turn (the last one forever)."""
    base = Path(tempfile.mkdtemp(prefix="dpfpf-", dir="/tmp"))  # unix socket paths are short
    cfg = config(base)
    asked: list[str] = []

    async def handler(req: control.Request) -> dict[str, Any]:
        asked.append(req.cmd)
        if req.cmd == "crash-check":
            return {}  # no crash left anything unguarded
        return docs.pop(0) if len(docs) > 1 else docs[0]

    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(str(cfg.socket_path))
    sock.listen(8)
    try:
        async with trio.open_nursery() as nursery:
            serve = partial(controlsock.serve_stream, handler=handler)
            nursery.start_soon(partial(trio.serve_listeners, serve, [trio.SocketListener(sock)]))
            yield cfg
            # preflight asks the service to change nothing, except what only a crash left (crash-check)
            assert set(asked) <= {"status", "crash-check"}
            nursery.cancel_scope.cancel()
    finally:
        for p in sorted(base.rglob("*"), reverse=True):
            p.unlink() if not p.is_dir() else p.rmdir()
        base.rmdir()


async def test_the_running_service_wins_over_the_state_file() -> None:
    async with fake_service([{"state": "frozen", "lease_remaining": 200.0}]) as cfg:
        persist(cfg, frozen())  # expired on disk: only a dead service's file would be judged
        res = await preflight(cfg, FakeFrw(True), repair=True, clock=lambda: EXPIRED)
    assert res.service and res.state is State.FROZEN and res.stale == "" and res.repaired == ()
    assert "(service running)" in res.text()


async def test_an_expired_lease_is_left_to_the_service_to_expire() -> None:
    docs: list[dict[str, Any]] = [
        {"state": "frozen", "lease_remaining": -1.0},  # preflight's first look
        {"state": "handing_over", "lease_remaining": -1.5},  # the service's own expiry, in progress
        {"state": "thawed", "lease_remaining": None},
    ]
    fake = FakeFrw(True)
    async with fake_service(docs) as cfg:
        res = await preflight(cfg, fake, repair=True)
        assert not cfg.state_file.exists()  # the service's state file is the service's to write
    assert "lease expired 1 s ago (state frozen)" in res.stale
    assert res.repaired == ("the service expired the freeze and handed over", "cleared flow-restore-wait")
    assert res.state is State.THAWED and fake.value is False


# --- the real command against a private ovsdb-server ------------------------------------------------


async def run_preflight(env: dict[str, str], *args: str) -> tuple[int, str]:
    proc = await trio.run_process(
        [sys.executable, "-m", "dpfreeze.cli", "preflight", *args], env={**os.environ, **env},
        capture_stdout=True, capture_stderr=True, check=False,
    )
    return proc.returncode, (proc.stdout + proc.stderr).decode().strip()


async def run_hook_light(env: dict[str, str], hook: str) -> tuple[int, str]:
    code = (f"import sys; from dpfreeze.cli.main import main; rc = main([{hook!r}]);"
            "print('trio imported:', 'trio' in sys.modules); sys.exit(rc)")
    proc = await trio.run_process([sys.executable, "-c", code], env={**os.environ, **env},
                                  capture_stdout=True, capture_stderr=True, check=False)
    return proc.returncode, (proc.stdout + proc.stderr).decode().strip()


@pytest.mark.netdev
async def test_preflight_against_ovsdb_server() -> None:
    async with sandbox("netdev", start_vswitchd=False, isolate=False) as sb:
        env = {**sb.env.environ(), "DPFREEZE_STATE_DIR": str(sb.base / "dpfreeze"),
               "DPFREEZE_SOCKET": str(sb.base / "dpfreeze" / "control.sock")}  # fmt: skip

        assert await run_preflight(env) == (0, "preflight: ok: state idle, flow-restore-wait clear "
                                               "(service not running)")

        await sb.vsctl("--no-wait", "set", "Open_vSwitch", ".", "other_config:flow-restore-wait=true")
        code, out = await run_preflight(env)
        assert code == 1 and out.count("\n") == 0, out
        assert "stale freeze: flow-restore-wait is set but nothing is frozen (state idle)" in out
        assert await ovsdb.get_flow_restore_wait(sb.env) is True

        code, out = await run_preflight(env, "--repair")
        assert code == 0 and "cleared flow-restore-wait" in out, out
        assert await ovsdb.get_flow_restore_wait(sb.env) is False

        # A freeze in progress: the new daemon is meant to start with flow-restore-wait set.
        store = StateStore(sb.base / "dpfreeze" / "state.json")
        live = step(FreezeState(), Event.FREEZE, ttl=300, datapath="ovs-system", snapshot_path="/x")
        store.save(live)
        await ovsdb.set_flow_restore_wait(True, sb.env)
        for args in ((), ("--repair",), ("--json",)):
            code, out = await run_preflight(env, *args)
            assert code == 0 and "stale" not in out.replace('"stale": ""', ""), out
        assert json.loads(out)["flow_restore_wait"] is True
        assert await ovsdb.get_flow_restore_wait(sb.env) is True and store.load() == live

        # The same freeze with its lease run out and no service: refused, then thawed and cleared.
        store.save(step(live, Event.RENEW, now=live.frozen_at - 400, ttl=300))
        code, out = await run_preflight(env)
        assert code == 1 and "lease expired" in out, out
        code, out = await run_preflight(env, "--repair")
        assert code == 0 and "state file frozen -> thawed; cleared flow-restore-wait" in out, out
        assert await ovsdb.get_flow_restore_wait(sb.env) is False and store.load().state is State.THAWED

        # flow-restore-wait set again beside a running (thawed) service: its status is what is judged.
        await ovsdb.set_flow_restore_wait(True, sb.env)
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(trio.run_process, [sys.executable, "-m", "dpfreeze.cli", "serve"],
                                        env={**os.environ, **env}, check=False))
            with trio.fail_after(30):
                while not Path(env["DPFREEZE_SOCKET"]).exists():
                    await trio.sleep(0.05)
            code, out = await run_preflight(env)
            assert code == 1 and "nothing is frozen (state thawed)" in out, out
            code, out = await run_preflight(env, "--repair")
            assert code == 0 and "cleared flow-restore-wait" in out and "(service running)" in out, out
            # Both start hooks, with the service running: one request each, and no trio imported (every
            # start of ovs-vswitchd, after a crash too, waits for ExecStartPre)
            for hook, said in (("preflight", "preflight: ok: state thawed"), ("thaw", "nothing to thaw")):
                code, out = await run_hook_light(env, hook)
                assert code == 0 and out.startswith(said) and out.endswith("trio imported: False"), out
            nursery.cancel_scope.cancel()  # SIGTERM: the service stops and removes its socket
        assert await ovsdb.get_flow_restore_wait(sb.env) is False
