"""`dpfreeze preflight [--repair]`: ovs-vswitchd's ExecStartPre; refuse, or repair, a stale freeze.

Why: a flow-restore-wait that no live freeze will clear stops every new flow of the daemon about to start,
and a freeze whose lease ran out while no service ran would be resumed (pin and all) when the service comes
back.  A freeze in progress with a valid lease is the normal restart: the new daemon is meant to start with
flow-restore-wait set, and the thaw after it (ExecStartPost) clears it.

The state is read where `dpfreeze status` reads it: from the running service (which owns the lease and
expires it itself), else from the state file.  A repair goes through the same owner: the service is left
to run its own expiry and hand-over; a persisted state is stepped through the machine's table (expire,
then fail) and saved, as the service would have done had it been running.

With the service running, the whole check runs in it (`in_service`, asked by cli/hooks.py): the command
then imports nothing of this, and a start of ovs-vswitchd waits for one request, not for Python to import
trio and the library (seconds under emulation, after every crash).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import operator
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import trio

from dpfreeze import kernels
from dpfreeze.errors import UserError
from dpfreeze.freeze import control, controlsock, machine
from dpfreeze.freeze.machine import ACTIVE, Event, State, StateStore
from dpfreeze.freeze.service import FRW_TIMEOUT, FreezeService, ServiceConfig, SystemBackend
from dpfreeze.log import kv
from dpfreeze.ovs import ovsdb
from dpfreeze.ovs.ovsenv import OvsEnv
from dpif.model import DpFeature
from dpif.netlink_datapath import list_datapaths

LOG = logging.getLogger(__name__)

STATUS_TIMEOUT = 10.0
# The service's expiry ends with a hand-over that waits for a daemon which cannot start before we return.
SERVICE_THAW_TIMEOUT = 60.0
POLL_INTERVAL = 0.2
REPAIR_DETAIL = "lease expired while no dpfreeze service ran; thawed by preflight"


class FlowRestoreWait(Protocol):
    """flow-restore-wait as preflight needs it (tests substitute a fake)."""

    async def get(self) -> bool: ...

    async def clear(self) -> None: ...


class OvsdbFlowRestoreWait:
    """The real key, through the OVSDB IDL, cleared with the service's retries."""

    def __init__(self, env: OvsEnv) -> None:
        self.env = env

    async def get(self) -> bool:
        try:
            return await ovsdb.get_flow_restore_wait(self.env, timeout=FRW_TIMEOUT)
        except ovsdb.OvsdbError as exc:
            raise UserError(f"cannot read flow-restore-wait: {exc}") from exc

    async def clear(self) -> None:
        try:
            await SystemBackend(self.env).set_flow_restore_wait(False)
        except ovsdb.OvsdbError as exc:
            raise UserError(f"cannot clear flow-restore-wait: {exc}") from exc


def lease_expired(state: State, lease_remaining: float | None) -> bool:
    return state in ACTIVE and lease_remaining is not None and lease_remaining <= 0


def stale_reason(state: State, lease_remaining: float | None, frw: bool) -> str:
    """What is stale, as one line; "" when ovs-vswitchd may start as things are."""
    frw_text = "flow-restore-wait is set" if frw else "flow-restore-wait is clear"
    if lease_expired(state, lease_remaining):
        ago = abs(lease_remaining or 0.0)
        return f"the freeze's lease expired {ago:.0f} s ago (state {state.value}); {frw_text}"
    if frw and state not in ACTIVE:
        return f"flow-restore-wait is set but nothing is frozen (state {state.value})"
    return ""


@dataclass(frozen=True)
class Preflight:
    """What preflight saw; `repaired` lists what --repair changed (the stale line is kept for the log)."""

    state: State
    lease_remaining: float | None
    flow_restore_wait: bool
    service: bool  # the state came from the running service, not the state file
    stale: str
    repaired: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state.value, "lease_remaining": self.lease_remaining,
            "flow_restore_wait": self.flow_restore_wait, "service": self.service, "stale": self.stale,
            "repaired": list(self.repaired),
        }  # fmt: skip

    def text(self) -> str:
        seen = (
            f"state {self.state.value}"
            + (f", lease {self.lease_remaining:.0f} s left" if self.lease_remaining is not None else "")
            + f", flow-restore-wait {'set' if self.flow_restore_wait else 'clear'}"
            + f" (service {'running' if self.service else 'not running'})"
        )
        if self.repaired:
            return f"preflight: repaired: {self.stale}: {'; '.join(self.repaired)}; now {seen}"
        return f"preflight: ok: {seen}"


class Service(Protocol):
    """The running service as preflight asks it: over its socket (`Remote`), or the service itself
    answering a `preflight` request (`InService`)."""

    async def status(self) -> dict[str, Any] | None:
        """Its status document; None when no service runs."""
        ...

    async def crash_check(self) -> None:
        """Let it freeze what a crash left unguarded (see FreezeService.crash_check) before this start goes
        on: systemd runs no ExecStop when the daemon died on its own.  No service: nothing to freeze with."""
        ...


@dataclass(frozen=True)
class Remote:
    """The service over its control socket: what the command asks where the service runs no preflight."""

    config: ServiceConfig

    async def status(self) -> dict[str, Any] | None:
        path = self.config.socket_path
        try:
            return await controlsock.call(str(path), "status", timeout=STATUS_TIMEOUT)
        except (FileNotFoundError, ConnectionRefusedError):
            return None
        except control.ControlError as exc:
            raise UserError(f"dpfreeze service on {path}: {exc}") from exc
        except trio.TooSlowError as exc:
            raise UserError(f"the dpfreeze service on {path} did not answer in time") from exc

    async def crash_check(self) -> None:
        try:
            await controlsock.call(str(self.config.socket_path), "crash-check", timeout=SERVICE_THAW_TIMEOUT)
        except (FileNotFoundError, ConnectionRefusedError):
            return
        except (control.ControlError, trio.TooSlowError) as exc:  # the start must go on: stock's path
            LOG.warning(kv("preflight.crash_check_failed", error=str(exc) or type(exc).__name__))


@dataclass(frozen=True)
class InService:
    """The service asking itself: the state it holds, not its socket."""

    api: FreezeService

    async def status(self) -> dict[str, Any] | None:
        return self.api.status_doc()

    async def crash_check(self) -> None:
        try:
            await self.api.crash_check()
        except Exception as exc:  # the start must go on: stock's path
            LOG.warning(kv("preflight.crash_check_failed", error=str(exc) or type(exc).__name__))


class UnreadableState(UserError):
    """The state file cannot be read: refused as is; --repair moves it aside (no live freeze can own it)."""


def _load(config: ServiceConfig) -> machine.FreezeState:
    try:
        return StateStore(config.state_file).load()
    except machine.StateFileError as exc:
        raise UnreadableState(str(exc)) from exc


def _quarantine(config: ServiceConfig, now: float) -> str:
    return f"moved the unreadable state file to {StateStore(config.state_file).quarantine(now)}"


async def look(
    config: ServiceConfig, frw: FlowRestoreWait, service: Service, *, clock: Callable[[], float] = time.time
) -> Preflight:
    """Read flow-restore-wait, then the freeze state, and judge them (changes nothing).

    In this order because a freeze persists FROZEN before it sets the key: a set key read first is never
    judged against the idle state from before its freeze.
    """
    frw_set = await frw.get()
    doc = await service.status()
    if doc is None:
        persisted = _load(config)
        state, remaining = persisted.state, persisted.lease_remaining(clock())
    else:
        state, remaining = State(doc["state"]), doc.get("lease_remaining")
    return Preflight(state, remaining, frw_set, doc is not None, stale_reason(state, remaining, frw_set))


async def _wait_for_service_thaw(service: Service) -> None:
    """The service expires a lease by itself (within its lease poll); wait until its hand-over ends."""
    with trio.move_on_after(SERVICE_THAW_TIMEOUT):
        while (doc := await service.status()) is not None and lease_expired(
            State(doc["state"]), doc.get("lease_remaining")
        ):
            await trio.sleep(POLL_INTERVAL)
        return
    raise UserError(f"the dpfreeze service did not thaw the expired freeze within {SERVICE_THAW_TIMEOUT:g} s")


def _thaw_persisted(config: ServiceConfig, now: float) -> State:
    """An expired freeze with no service: through the table to THAWED, saved in one atomic write."""
    store = StateStore(config.state_file)
    state = _load(config)
    if not state.expired(now):  # a service came up and moved it on since we looked: its state is newer
        return state.state
    if state.state is State.FROZEN:
        state = machine.step(state, Event.EXPIRE, now=now)
    state = machine.step(state, Event.FAIL, now=now, detail=REPAIR_DETAIL)
    store.save(state)
    return state.state


async def preflight(
    config: ServiceConfig,
    frw: FlowRestoreWait,
    *,
    repair: bool = False,
    clock: Callable[[], float] = time.time,
    service: Service | None = None,
) -> Preflight:
    """Judge the freeze state and flow-restore-wait; with `repair`, make them fit for a start.

    Without `repair` nothing is changed and the caller refuses on `stale`.  A failed repair raises
    UserError; a successful one returns the new state with `repaired` filled in.
    """
    done: list[str] = []
    service = service or Remote(config)
    if repair:
        await service.crash_check()
    try:
        seen = await look(config, frw, service, clock=clock)
    except UnreadableState as exc:
        # A corrupt state file must not keep ovs-vswitchd from starting: without a readable freeze there is
        # no lease to honour, so the repair is the safe default of every failure path (FRW cleared).
        if not repair:
            raise
        done.append(_quarantine(config, clock()))
        seen = replace(await look(config, frw, service, clock=clock), stale=str(exc))
        if not seen.flow_restore_wait:
            return replace(seen, repaired=tuple(done))
    if not seen.stale or not repair:
        return seen
    if lease_expired(seen.state, seen.lease_remaining):
        if seen.service:
            await _wait_for_service_thaw(service)
            done.append("the service expired the freeze and handed over")
        else:
            new = _thaw_persisted(config, clock())
            done.append(f"state file {seen.state.value} -> {new.value}")
    after = await look(config, frw, service, clock=clock)
    if after.flow_restore_wait and after.state not in ACTIVE:
        await frw.clear()
        done.append("cleared flow-restore-wait")
    final = await look(config, frw, service, clock=clock)
    if final.stale:
        raise UserError(f"preflight repair failed: still stale: {final.stale}")
    for what in done:
        LOG.info(kv("preflight.repaired", what=what, stale=seen.stale))
    return replace(final, stale=seen.stale, repaired=tuple(done))


@dataclass(frozen=True)
class Checked:
    """What `dpfreeze preflight` prints and exits with, wherever the check ran."""

    doc: dict[str, Any]
    text: str
    code: int


async def check(config: ServiceConfig, frw: FlowRestoreWait, *, repair: bool,
                service: Service | None = None) -> Checked:
    """The freeze state, then the kernel: with `repair` (ExecStartPre) a kernel problem is a warning only,
    since refusing to start ovs-vswitchd for it would be worse than any upgrade."""
    result = await preflight(config, frw, repair=repair, service=service)
    if result.stale and not repair:
        raise UserError(f"stale freeze: {result.stale} (`dpfreeze preflight --repair` repairs it)")
    kernel = kernels.check(await datapath_features())
    return Checked({**result.to_json(), "kernel": dataclasses.asdict(kernel)},
                   "\n".join([result.text(), *(kernel.lines() if kernel.checked else [])]),
                   1 if kernel.problems and not repair else 0)


async def in_service(api: FreezeService, env: OvsEnv, request: dict[str, Any]) -> dict[str, Any]:
    """A `preflight` request's answer: the check run by the service on itself."""
    try:
        done = await check(api.config, OvsdbFlowRestoreWait(env), repair=request.get("repair", False),
                           service=InService(api))
    except UserError as exc:  # the command's own refusal, word for word
        raise control.ControlError(str(exc)) from exc
    return {"preflight": done.doc, "text": done.text, "code": done.code}


async def datapath_features() -> DpFeature | None:
    """The features the kernel datapaths use (None without the module or a datapath)."""
    if not Path("/sys/module/openvswitch").is_dir():
        return None
    try:
        dps = await list_datapaths()
    except OSError:
        return None
    return DpFeature(functools.reduce(operator.or_, (d.features for d in dps), 0)) if dps else None
