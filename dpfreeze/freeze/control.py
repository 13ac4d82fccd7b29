"""The control protocol: one JSON object per line over a unix stream socket.

Request  {"id": 1, "cmd": "freeze", "args": {"ttl": 60}}
Response {"id": 1, "ok": true, "result": {...}}  or  {"id": 1, "ok": false, "error": "one line"}

This module is the codec (`LineDecoder`, `encode_*`, `decode_*`), pure and without trio, so that a command
can speak it without trio's start-up (`client`); `controlsock` adds the service's trio I/O.
Why JSON lines: a human can drive the service with `socat - UNIX:/run/dpfreeze/control.sock`, and a
half-written line can never be mistaken for a complete command.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from dpfreeze.errors import DpfreezeError

MAX_LINE = 1 << 20
# Each command and the arguments it takes, with their JSON types, as data: a request is checked against
# this before any of it reaches the service (numbers are finite and never booleans).
ARGS: dict[str, dict[str, type]] = {
    "freeze": {"ttl": float, "datapath": str},
    "renew": {"ttl": float},
    "thaw": {"wait": bool},
    "status": {},
    "take-upcalls": {},
    "detach": {},
    "reattach": {},
    "crash-check": {},
    # The unit's start hooks, run by the service (preflight.in_service, upgrade.thaw_in_service)
    "preflight": {"repair": bool},
    "thaw-started": {"openflow": bool, "openflow_timeout": float, "wait": bool},
    # An upgrade run by the service (upgrade.serve_upgrade): each answer is the next command for the caller
    # to run in its own process ({"run": ...}, answered by "upgrade-ran") or the report ({"report": ...}).
    "upgrade": {"ttl": float, "datapath": str, "restart_command": str, "reload_kmod": bool, "origin": float},
    "upgrade-ran": {"error": str},
}
COMMANDS = frozenset(ARGS)


class ControlError(DpfreezeError):
    """A malformed or refused control message (one line, safe to show to the operator)."""


@dataclass(frozen=True)
class Request:
    id: int
    cmd: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Response:
    id: int
    ok: bool
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def _line(doc: dict[str, Any]) -> bytes:
    data = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode() + b"\n"
    if len(data) > MAX_LINE:
        raise ControlError(f"control message of {len(data)} bytes exceeds {MAX_LINE}")
    return data


def encode_request(req: Request) -> bytes:
    return _line({"id": req.id, "cmd": req.cmd, "args": req.args})


def encode_response(resp: Response) -> bytes:
    doc: dict[str, Any] = {"id": resp.id, "ok": resp.ok}
    if resp.ok:
        doc["result"] = resp.result
    else:
        doc["error"] = resp.error
    return _line(doc)


def _object(line: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ControlError(f"not a JSON line: {exc}") from exc
    except RecursionError:
        raise ControlError("not a JSON line: nested too deeply") from None
    if not isinstance(doc, dict):
        raise ControlError("a control message must be a JSON object")
    return doc


def decode_request(line: bytes) -> Request:
    doc = _object(line)
    rid, cmd, args = doc.get("id", 0), doc.get("cmd"), doc.get("args", {})
    if not isinstance(rid, int) or isinstance(rid, bool):
        raise ControlError("request id must be an integer")
    if not isinstance(cmd, str) or cmd not in COMMANDS:
        raise ControlError(f"unknown command {cmd!r} (expected one of {', '.join(sorted(COMMANDS))})")
    if not isinstance(args, dict):
        raise ControlError("request args must be a JSON object")
    return Request(rid, cmd, {name: _arg(cmd, name, value) for name, value in args.items()})


def _arg(cmd: str, name: str, value: Any) -> Any:
    kind = ARGS[cmd].get(name)
    if kind is None:
        raise ControlError(f"{cmd} takes no argument {name!r}")
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ControlError(f"{cmd}: {name} must be a finite number, got {json.dumps(value)[:40]}")
        return float(value)
    if not isinstance(value, kind):
        raise ControlError(f"{cmd}: {name} must be a {'boolean' if kind is bool else 'string'}, "
                           f"got {json.dumps(value)[:40]}")
    return value


def decode_response(line: bytes) -> Response:
    doc = _object(line)
    rid, ok = doc.get("id"), doc.get("ok")
    if not isinstance(rid, int) or not isinstance(ok, bool):
        raise ControlError("response needs an integer id and a boolean ok")
    if ok:
        result = doc.get("result", {})
        if not isinstance(result, dict):
            raise ControlError("response result must be a JSON object")
        return Response(rid, True, result)
    return Response(rid, False, error=str(doc.get("error", "unknown error")))


class LineDecoder:
    """Splits a byte stream into lines, refusing any line longer than MAX_LINE."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._buf = bytearray()
        self._max = max_line

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._buf += data
        while (nl := self._buf.find(b"\n")) >= 0:
            line = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            if line.strip():
                yield line
        if len(self._buf) > self._max:
            raise ControlError(f"control line longer than {self._max} bytes")

    @property
    def pending(self) -> bool:
        return bool(self._buf.strip())
