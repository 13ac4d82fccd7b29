"""flow-restore-wait, other_config, versions and bridges' protocols: OVSDB transactions of our own.

Why not `ovs-vsctl set`: the change is a mutation of our key alone (a concurrent writer of other_config is
never clobbered), its outcome is typed rather than scraped text, and every wait is bounded by our deadline.
Why not the IDL of OVS's `ovs` library for these: it downloads and parses the whole schema, then a monitor,
in pure Python, which cost 1.8-2.3 s per session under qemu TCG, and an upgrade opened six of them while
new flows waited.  A `transact` of `select`s and `mutate`s names only what it touches: one round trip on a
fresh connection, parsed by the standard json module.

`conversion_losses` asks the running server for its schema (`get_schema`) and selects the columns the
installed schema drops, on the same client.
"""

from __future__ import annotations

import errno
import json
import platform
from dataclasses import dataclass
from typing import Any

import trio

from dpfreeze import command
from dpfreeze.command import CommandFailed
from dpfreeze.errors import DpfreezeError, ungrouped
from dpfreeze.ovs import appctl, ovsenv
from dpfreeze.ovs.ovsenv import OvsEnv, current
from dpif.unixctl import ProtocolError, ReplyReader

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


async def transact(env: OvsEnv, ops: list[dict[str, Any]], timeout: float,
                   what: str = "the transaction") -> list[dict[str, Any]]:
    """One Open_vSwitch transaction on a fresh connection: each operation's result.  OvsdbError when the
    server is missing, silent past `timeout`, or refuses any operation (then none took effect)."""
    results = list(await _call(env, "transact", ["Open_vSwitch", *ops], timeout, what) or ())
    for r in results:
        if isinstance(r, dict) and r.get("error"):
            detail = f"{r['error']}: {r.get('details', '')}".rstrip(": ")
            raise OvsdbError(f"ovsdb-server refused {what}: {detail}")
    return results


async def _call(env: OvsEnv, method: str, params: list[Any], timeout: float, what: str) -> Any:
    """One JSON-RPC request on a fresh connection to ovsdb-server; its result."""
    path = _remote(env).removeprefix("unix:")
    request = json.dumps({"method": method, "params": params, "id": 0}).encode()
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_unix_socket(path)
            async with stream:
                await stream.send_all(request)
                reply = await _reply(stream)
    except trio.TooSlowError:
        raise OvsdbError(f"ovsdb-server did not answer {what} in time") from None
    except OSError as exc:
        raise OvsdbError(f"cannot talk to ovsdb-server at {path}: {exc.strerror or exc}") from None
    except ProtocolError as exc:
        raise OvsdbError(f"ovsdb-server at {path} answered {what} with nonsense: {exc}") from None
    if reply.get("error") is not None:
        raise OvsdbError(f"ovsdb-server refused {what}: {reply['error']}")
    return reply.get("result")


async def _reply(stream: trio.SocketStream) -> dict[str, Any]:
    """The JSON-RPC reply to request id 0 (split from the stream by unixctl's reader: the same JSON-RPC
    framing); answers the server's echo (its keep-alive) on the way."""
    reader = ReplyReader()
    while chunk := await stream.receive_some(1 << 16):
        for msg in reader.feed_objects(chunk):
            if isinstance(msg, dict) and msg.get("method") == "echo":
                await stream.send_all(json.dumps({"result": msg.get("params"), "error": None,
                                                  "id": msg.get("id")}).encode())
            elif isinstance(msg, dict) and msg.get("id") == 0:
                return msg
    raise OSError(errno.ECONNRESET, "ovsdb-server closed the connection")


def atoms(value: Any) -> list[Any]:
    """An OVSDB set in JSON notation (a bare atom, or ["set", [...]]) as a list."""
    if isinstance(value, list) and len(value) == 2 and value[0] == "set":
        return list(value[1])
    return [value]


def pairs(value: Any) -> dict[str, str]:
    """An OVSDB map in JSON notation (["map", [[k, v], ...]]) as a dict."""
    if isinstance(value, list) and len(value) == 2 and value[0] == "map":
        return {str(k): str(v) for k, v in value[1]}
    return {}


async def _root(env: OvsEnv, columns: list[str], timeout: float) -> dict[str, Any]:
    """The one Open_vSwitch row's `columns` (and _uuid)."""
    (result,) = await transact(env, [{"op": "select", "table": "Open_vSwitch", "where": [],
                                      "columns": ["_uuid", *columns]}], timeout, "a select")
    rows = result.get("rows") or []
    if len(rows) != 1:
        raise OvsdbError(f"the Open_vSwitch table has {len(rows)} rows, expected 1 (run `ovs-vsctl init`)")
    return dict(rows[0])


async def bridge_protocols(env: OvsEnv | None = None,
                           timeout: float = DEFAULT_TIMEOUT) -> dict[str, list[str]]:
    """Every bridge, by name, with its Bridge:protocols sorted (empty: OVS's default, OpenFlow10 to 15)."""
    (result,) = await transact(env or current(), [{"op": "select", "table": "Bridge", "where": [],
                                                   "columns": ["name", "protocols"]}], timeout, "a select")
    return dict(sorted((str(row["name"]), sorted(map(str, atoms(row["protocols"]))))
                       for row in result.get("rows") or ()))


async def get_other_config(env: OvsEnv | None = None, timeout: float = DEFAULT_TIMEOUT) -> dict[str, str]:
    """Open_vSwitch:other_config, the global knobs (flow-restore-wait, hw-offload, flow-limit, ...)."""
    return pairs((await _root(env or current(), ["other_config"], timeout))["other_config"])


async def get_flow_restore_wait(env: OvsEnv | None = None, timeout: float = DEFAULT_TIMEOUT) -> bool:
    return (await get_other_config(env, timeout)).get(FRW_KEY) == "true"


async def set_flow_restore_wait(value: bool, env: OvsEnv | None = None,
                                timeout: float = DEFAULT_TIMEOUT) -> bool:
    """True: set other_config:flow-restore-wait=true; False: remove the key (what ovs-ctl does).

    Returns whether the database changed.  Raises OvsdbError (nothing changed) on any failure.  The
    mutation touches our key alone, so a concurrent writer of other_config is never clobbered.
    """
    env = env or current()
    deadline = trio.current_time() + timeout
    row = await _root(env, ["other_config"], timeout)
    present = pairs(row["other_config"]).get(FRW_KEY)
    if (value and present == "true") or (not value and present is None):
        return False
    mutations: list[list[Any]] = [["other_config", "delete", ["set", [FRW_KEY]]]]
    if value:
        mutations.append(["other_config", "insert", ["map", [[FRW_KEY, "true"]]]])
    await transact(env, [{"op": "mutate", "table": "Open_vSwitch", "where": [["_uuid", "==", row["_uuid"]]],
                          "mutations": mutations},
                         {"op": "comment", "comment": f"dpfreeze: {'set' if value else 'clear'} {FRW_KEY}"}],
                   max(deadline - trio.current_time(), 0.001), "the transaction")
    return True


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
    found: dict[str, str | None] = {}

    async def binary() -> None:
        found["binary"] = await first_line(["ovs-vswitchd", "--version"], timeout, env)

    async def running() -> None:
        found["running"] = await appctl.version(env, ovsenv.VSWITCHD, timeout)

    async def db_version() -> None:
        try:
            found["db"] = next(iter(atoms((await _root(env, ["ovs_version"], timeout))["ovs_version"])), None)
        except OvsdbError:
            found["db"] = None

    with ungrouped():
        async with trio.open_nursery() as nursery:  # three sources, three round trips: side by side
            for read in (binary, running, db_version):
                nursery.start_soon(read)
    return Versions(platform.release(), found["binary"], found["running"], found["db"])


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


async def _column_losses(env: OvsEnv, installed: dict[str, Any], timeout: float) -> list[ColumnLoss]:
    running = await _call(env, "get_schema", ["Open_vSwitch"], timeout, "get_schema")
    dropped = dropped_columns(running if isinstance(running, dict) else {}, installed)
    if not dropped:
        return []
    results = await transact(env, [{"op": "select", "table": table, "where": [], "columns": columns}
                                   for table, columns in dropped.items()], timeout, "a select")
    losses = []
    for (table, columns), result in zip(dropped.items(), results, strict=True):
        rows = result.get("rows") or []
        for column in columns:
            if n := sum(1 for row in rows if is_set(row.get(column))):
                losses.append(ColumnLoss(table, column, n))
    return losses


def is_set(value: Any) -> bool:
    """Whether a column's value (JSON notation) is not its type's default: 0, false, "", empty set or map."""
    return value not in (0, "", ["set", []], ["map", []])


async def conversion_losses(env: OvsEnv | None = None,
                            timeout: float = DEFAULT_TIMEOUT) -> tuple[str, list[ColumnLoss]]:
    """(the installed schema's version, the set columns it would drop) — ("", []) when the installed
    schema cannot be read: nothing is known to be lost."""
    env = env or current()
    try:
        installed = json.loads(env.schema.read_text())
    except (OSError, ValueError):
        return "", []
    losses = await _column_losses(env, installed, timeout)
    return str(installed.get("version", "?")), losses
