"""flow-restore-wait and version facts, through the OVSDB IDL of OVS's own `ovs` Python library.

Why the IDL and not `ovs-vsctl set`: the change is a verified transaction on the one Open_vSwitch row
(`setkey`/`delkey` touch only our key, so a concurrent writer of other_config is not clobbered), its outcome
is a typed status rather than scraped text, and every wait is bounded by our own deadline.

The schema is asked from the server (`get_schema`), so a newer ovsdb-server's schema is never misread.
The `ovs` library blocks; each call runs in a worker thread and stops itself at its deadline.
"""

from __future__ import annotations

import errno
import json
import platform
import time
import uuid
from dataclasses import dataclass
from typing import Any

import ovs.db.idl
import ovs.jsonrpc
import ovs.poller
import ovs.stream
import trio

from dpfreeze import command
from dpfreeze.command import CommandFailed
from dpfreeze.errors import DpfreezeError
from dpfreeze.ovs import appctl, ovsenv
from dpfreeze.ovs.ovsenv import OvsEnv, current

# The IDL names its monitors with uuid.uuid1(), which CPython hands to libuuid: that keeps
# /var/lib/libuuid/clock.txt open per thread and never closes it when the thread ends, so every IDL call in
# a fresh worker thread leaked a descriptor in the long-running service (one per upgrade, found by
# `dpfreeze lab soak`).  Python's own uuid1 opens nothing.
uuid._generate_time_safe = None  # type: ignore[attr-defined]

FRW_KEY = "flow-restore-wait"
DEFAULT_TIMEOUT = 5.0


class OvsdbError(DpfreezeError):
    """ovsdb-server is unreachable, refused the transaction, or did not answer in time."""


@dataclass(frozen=True)
class Versions:
    """What ran when a snapshot was taken: a restore on another kernel/OVS may need care."""

    kernel: str
    vswitchd_binary: str | None  # `ovs-vswitchd --version` of the installed binary
    vswitchd_running: str | None  # `ovs-appctl version` of the running daemon (differs mid-upgrade)
    db_ovs_version: str | None  # Open_vSwitch:ovs_version, as the init scripts record it

    def to_json(self) -> dict[str, str | None]:
        return {"kernel": self.kernel, "vswitchd_binary": self.vswitchd_binary,
                "vswitchd_running": self.vswitchd_running, "db_ovs_version": self.db_ovs_version}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Versions:
        return cls(str(d["kernel"]), d["vswitchd_binary"], d["vswitchd_running"], d["db_ovs_version"])


def _remote(env: OvsEnv) -> str:
    if not env.db_sock.exists():
        raise OvsdbError(f"no ovsdb-server socket at {env.db_sock} (is ovsdb-server running? "
                         f"OVS_RUNDIR={env.rundir})")
    return env.db_remote


def _left_ms(deadline: float, what: str) -> int:
    left = deadline - time.monotonic()
    if left <= 0:
        raise OvsdbError(f"ovsdb-server did not answer {what} in time")
    return max(1, int(left * 1000))


def _get_schema(remote: str, deadline: float) -> dict[str, Any]:
    error, stream = ovs.stream.Stream.open(remote)
    if error:
        raise OvsdbError(f"cannot connect to {remote}: {errno.errorcode.get(error, error)}")
    conn = ovs.jsonrpc.Connection(stream)
    try:
        request = ovs.jsonrpc.Message.create_request("get_schema", ["Open_vSwitch"])
        error = conn.send(request)
        if error:
            raise OvsdbError(f"cannot talk to {remote}: {errno.errorcode.get(error, error)}")
        while True:
            conn.run()
            error, msg = conn.recv()
            if msg is not None and msg.id == request.id:
                if msg.type != ovs.jsonrpc.Message.T_REPLY:
                    raise OvsdbError(f"get_schema refused by {remote}: {msg.error}")
                return dict(msg.result)
            if error and error != errno.EAGAIN:
                raise OvsdbError(f"connection to {remote} lost: {errno.errorcode.get(error, error)}")
            poller = ovs.poller.Poller()
            conn.wait(poller)
            conn.recv_wait(poller)
            poller.timer_wait(_left_ms(deadline, "get_schema"))
            poller.block()
    finally:
        conn.close()


def _open_idl(env: OvsEnv, deadline: float, columns: list[str],
              table: str = "Open_vSwitch") -> ovs.db.idl.Idl:
    remote = _remote(env)
    helper = ovs.db.idl.SchemaHelper(schema_json=_get_schema(remote, deadline))
    helper.register_columns(table, columns)
    return _connect(remote, helper, deadline)


def _connect(remote: str, helper: ovs.db.idl.SchemaHelper, deadline: float) -> ovs.db.idl.Idl:
    """An IDL with its first monitor reply in: the registered columns of every row are readable."""
    idl = ovs.db.idl.Idl(remote, helper)
    try:
        while not idl.has_ever_connected() or idl.change_seqno == 0:
            idl.run()
            if idl.has_ever_connected() and idl.change_seqno != 0:
                break
            poller = ovs.poller.Poller()
            idl.wait(poller)
            poller.timer_wait(_left_ms(deadline, "the initial monitor"))
            poller.block()
    except BaseException:
        idl.close()
        raise
    return idl


def _root_row(idl: ovs.db.idl.Idl) -> Any:
    rows = list(idl.tables["Open_vSwitch"].rows.values())
    if len(rows) != 1:
        raise OvsdbError(f"the Open_vSwitch table has {len(rows)} rows, expected 1 (run `ovs-vsctl init`)")
    return rows[0]


def _read_other_config(env: OvsEnv, timeout: float) -> dict[str, str]:
    idl = _open_idl(env, time.monotonic() + timeout, ["other_config"])
    try:
        return dict(_root_row(idl).other_config)
    finally:
        idl.close()


def _write_frw(env: OvsEnv, value: bool, timeout: float) -> bool:
    """One verified transaction; returns True when it changed the database."""
    deadline = time.monotonic() + timeout
    idl = _open_idl(env, deadline, ["other_config"])
    try:
        while True:
            row = _root_row(idl)
            present = row.other_config.get(FRW_KEY)
            if (value and present == "true") or (not value and present is None):
                return False
            txn = ovs.db.idl.Transaction(idl)
            txn.add_comment(f"dpfreeze: {'set' if value else 'clear'} {FRW_KEY}")
            row.verify("other_config")
            if value:
                row.setkey("other_config", FRW_KEY, "true")
            else:
                row.delkey("other_config", FRW_KEY)
            status = txn.commit()
            while status == ovs.db.idl.Transaction.INCOMPLETE:
                poller = ovs.poller.Poller()
                idl.wait(poller)
                txn.wait(poller)
                poller.timer_wait(_left_ms(deadline, "the transaction"))
                poller.block()
                idl.run()
                status = txn.commit()
            if status == ovs.db.idl.Transaction.SUCCESS:
                return True
            if status != ovs.db.idl.Transaction.TRY_AGAIN:
                raise OvsdbError(f"setting {FRW_KEY} failed: {status} {txn.get_error() or ''}".strip())
            _wait_change(idl, deadline)  # a concurrent writer won the race: retry on fresh contents
    finally:
        idl.close()


def _wait_change(idl: ovs.db.idl.Idl, deadline: float) -> None:
    seqno = idl.change_seqno
    while idl.change_seqno == seqno:
        idl.run()
        if idl.change_seqno != seqno:
            return
        poller = ovs.poller.Poller()
        idl.wait(poller)
        poller.timer_wait(_left_ms(deadline, "a retried transaction"))
        poller.block()


def _read_db_version(env: OvsEnv, timeout: float) -> str | None:
    idl = _open_idl(env, time.monotonic() + timeout, ["ovs_version"])
    try:
        return next(iter(_root_row(idl).ovs_version), None)
    finally:
        idl.close()


def _read_bridge_protocols(env: OvsEnv, timeout: float) -> dict[str, list[str]]:
    idl = _open_idl(env, time.monotonic() + timeout, ["name", "protocols"], table="Bridge")
    try:
        return {row.name: sorted(row.protocols) for row in idl.tables["Bridge"].rows.values()}
    finally:
        idl.close()


async def bridge_protocols(env: OvsEnv | None = None,
                           timeout: float = DEFAULT_TIMEOUT) -> dict[str, list[str]]:
    """Every bridge, by name, with its Bridge:protocols sorted (empty: OVS's default, OpenFlow10 to 15)."""
    bridges = await trio.to_thread.run_sync(_read_bridge_protocols, env or current(), timeout)
    return dict(sorted(bridges.items()))


async def get_other_config(env: OvsEnv | None = None, timeout: float = DEFAULT_TIMEOUT) -> dict[str, str]:
    """Open_vSwitch:other_config, the global knobs (flow-restore-wait, hw-offload, flow-limit, ...)."""
    return await trio.to_thread.run_sync(_read_other_config, env or current(), timeout)


async def get_flow_restore_wait(env: OvsEnv | None = None, timeout: float = DEFAULT_TIMEOUT) -> bool:
    return (await get_other_config(env, timeout)).get(FRW_KEY) == "true"


async def set_flow_restore_wait(value: bool, env: OvsEnv | None = None,
                                timeout: float = DEFAULT_TIMEOUT) -> bool:
    """True: set other_config:flow-restore-wait=true; False: remove the key (what ovs-ctl does).

    Returns whether the database changed.  Raises OvsdbError (nothing changed) on any failure.
    """
    return await trio.to_thread.run_sync(_write_frw, env or current(), value, timeout)


async def first_line(argv: list[str], timeout: float, env: OvsEnv) -> str | None:
    """A tool's first line of output (e.g. a version), or None if it failed, said nothing or is missing
    (the version is then unknown, which the snapshot records as null)."""
    try:
        lines = (await command.run(argv, timeout=timeout, env=env.environ())).text.strip().splitlines()
    except CommandFailed:
        return None
    return lines[0].strip() if lines else None


async def versions(env: OvsEnv | None = None, timeout: float = DEFAULT_TIMEOUT) -> Versions:
    """Kernel release, installed and running ovs-vswitchd versions, and the DB's ovs_version.

    Unknown facts (no daemon running, no database) are None rather than errors: a snapshot is still
    worth taking when ovs-vswitchd is down.
    """
    env = env or current()
    binary = await first_line(["ovs-vswitchd", "--version"], timeout, env)
    running = await appctl.version(env, ovsenv.VSWITCHD, timeout)
    try:
        db_version = await trio.to_thread.run_sync(_read_db_version, env, timeout)
    except OvsdbError:
        db_version = None
    return Versions(platform.release(), binary, running, db_version)


@dataclass(frozen=True)
class ColumnLoss:
    """A column of the running conf.db that the installed schema lacks, and how many rows set it: the
    conversion ovs-ctl runs when ovsdb-server next starts (a downgrade) drops it without a word."""

    table: str
    column: str
    rows: int

    def describe(self, target: str) -> str:
        return (f"conf.db: converting to the installed schema {target} drops {self.table}:{self.column} "
                f"(set on {self.rows} row{'s' if self.rows != 1 else ''})")


def dropped_columns(running: dict[str, Any], installed: dict[str, Any]) -> dict[str, list[str]]:
    """Table -> columns that `running` has and `installed` lacks (a whole table counts with all of its)."""
    out: dict[str, list[str]] = {}
    for table, spec in sorted(running.get("tables", {}).items()):
        kept = installed.get("tables", {}).get(table, {}).get("columns", {})
        gone = sorted(c for c in spec.get("columns", {}) if c not in kept)
        if gone:
            out[table] = gone
    return out


def _read_column_losses(env: OvsEnv, installed: dict[str, Any], timeout: float) -> list[ColumnLoss]:
    deadline = time.monotonic() + timeout
    running = _get_schema(_remote(env), deadline)
    dropped = dropped_columns(running, installed)
    if not dropped:
        return []
    helper = ovs.db.idl.SchemaHelper(schema_json=running)
    for table, columns in dropped.items():
        helper.register_columns(table, columns)
    idl = _connect(_remote(env), helper, deadline)
    try:
        losses = []
        for table, columns in dropped.items():
            rows = list(idl.tables[table].rows.values())
            for column in columns:
                n = sum(1 for row in rows if getattr(row, column))  # default: 0, "", false, empty set or map
                if n:
                    losses.append(ColumnLoss(table, column, n))
        return losses
    finally:
        idl.close()


async def conversion_losses(env: OvsEnv | None = None,
                            timeout: float = DEFAULT_TIMEOUT) -> tuple[str, list[ColumnLoss]]:
    """(the installed schema's version, the set columns it would drop) — ("", []) when the installed
    schema cannot be read: nothing is known to be lost."""
    env = env or current()
    try:
        installed = json.loads(env.schema.read_text())
    except (OSError, ValueError):
        return "", []
    losses = await trio.to_thread.run_sync(_read_column_losses, env, installed, timeout)
    return str(installed.get("version", "?")), losses
