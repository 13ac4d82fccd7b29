"""The control protocol: one JSON object per line over a unix stream socket.

Request  {"id": 1, "cmd": "freeze", "args": {"ttl": 60}}
Response {"id": 1, "ok": true, "result": {...}}  or  {"id": 1, "ok": false, "error": "one line"}

The codec (`LineDecoder`, `encode_*`, `decode_*`) is pure; `call()` and `serve_stream()` add trio I/O.
Why JSON lines: a human can drive the service with `socat - UNIX:/run/dpfreeze/control.sock`, and a
half-written line can never be mistaken for a complete command.
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import trio

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
}
COMMANDS = frozenset(ARGS)
_PEERCRED = struct.Struct("=iII")  # struct ucred: pid, uid, gid


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


# --- I/O -------------------------------------------------------------------------------------------


def peer_credentials(sock: socket.socket | trio.socket.SocketType) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, gid = _PEERCRED.unpack(raw)
    return pid, uid, gid


def peer_allowed(uid: int) -> bool:
    """Root, or the user the service itself runs as (so an unprivileged test service is usable)."""
    return uid in (0, os.geteuid())


async def call(
    path: str, cmd: str, args: dict[str, Any] | None = None, *, timeout: float = 30.0
) -> dict[str, Any]:
    """One request to the service; its result, or ControlError with the service's one-line refusal."""
    with trio.fail_after(timeout):
        stream = await trio.open_unix_socket(path)
        async with stream:
            try:
                await stream.send_all(encode_request(Request(1, cmd, args or {})))
                decoder = LineDecoder()
                while True:
                    data = await stream.receive_some(65536)
                    if not data:
                        raise ControlError("the service closed the connection without answering")
                    for line in decoder.feed(data):
                        resp = decode_response(line)
                        if not resp.ok:
                            raise ControlError(resp.error)
                        return resp.result
            except trio.BrokenResourceError as exc:  # the service died mid-call (found by the fault matrix)
                why = exc.__cause__ or exc
                raise ControlError(f"the service closed the connection without answering ({why})") from exc


Handler = Callable[[Request], Awaitable[dict[str, Any]]]


async def serve_stream(stream: trio.SocketStream, handler: Handler, *, idle_timeout: float = 60.0) -> None:
    """Answer requests on one accepted connection until the peer closes it (or stays idle too long).

    The handler raises ControlError (or any exception listed by the service) to refuse; the refusal
    text goes back to the client and the connection stays usable.
    """
    _, uid, _ = peer_credentials(stream.socket)
    async with stream:
        if not peer_allowed(uid):
            refusal = Response(0, False, error=f"permission denied for uid {uid}")
            await stream.send_all(encode_response(refusal))
            return
        decoder = LineDecoder()
        while True:
            data = b""
            with trio.move_on_after(idle_timeout):
                data = await stream.receive_some(65536)
            if not data:
                return
            try:
                lines = list(decoder.feed(data))
            except ControlError as exc:
                await stream.send_all(encode_response(Response(0, False, error=str(exc))))
                return
            for line in lines:
                await stream.send_all(await _answer(line, handler))


async def _answer(line: bytes, handler: Handler) -> bytes:
    try:
        req = decode_request(line)
    except ControlError as exc:
        return encode_response(Response(0, False, error=str(exc)))
    try:
        return encode_response(Response(req.id, True, await handler(req)))
    except ControlError as exc:
        return encode_response(Response(req.id, False, error=str(exc)))
