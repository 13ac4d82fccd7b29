"""The control socket's trio I/O, over `control`'s codec: the service's side and its async callers."""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from dpfreeze.freeze.control import (
    ControlError,
    LineDecoder,
    Request,
    Response,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)

_PEERCRED = struct.Struct("=iII")  # struct ucred: pid, uid, gid


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
