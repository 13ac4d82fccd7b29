"""The JSON-lines control protocol: codec (pure) and one real unix-socket exchange."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import trio

from dpfreeze.freeze import controlsock
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


def test_request_and_response_round_trip() -> None:
    req = Request(7, "freeze", {"ttl": 30})
    assert decode_request(encode_request(req)) == req
    ok = Response(7, True, {"state": "frozen"})
    assert decode_response(encode_response(ok)) == ok
    bad = Response(7, False, error="cannot thaw while idle")
    assert decode_response(encode_response(bad)) == bad
    assert encode_request(req).endswith(b"\n") and encode_request(req).count(b"\n") == 1


@pytest.mark.parametrize(
    "line, message",
    [
        (b"{oops", "not a JSON line"),
        (b"[1]", "JSON object"),
        (b'{"id": 1, "cmd": "rm -rf"}', "unknown command"),
        (b'{"id": "1", "cmd": "status"}', "integer"),
        (b'{"id": true, "cmd": "status"}', "integer"),
        (b'{"id": 1, "cmd": "status", "args": [1]}', "args"),
        (b"\xff\xfe", "not a JSON line"),
    ],
)
def test_bad_requests_are_one_line_errors(line: bytes, message: str) -> None:
    with pytest.raises(ControlError, match=message):
        decode_request(line)


def test_line_decoder_joins_chunks_and_skips_blank_lines() -> None:
    d = LineDecoder()
    assert list(d.feed(b'{"a"')) == []
    assert d.pending
    assert list(d.feed(b':1}\n\n{"b":2}\n{"c"')) == [b'{"a":1}', b'{"b":2}']
    assert list(d.feed(b":3}\n")) == [b'{"c":3}']
    assert not d.pending


def test_line_decoder_refuses_endless_lines() -> None:
    d = LineDecoder(max_line=16)
    with pytest.raises(ControlError, match="longer than 16"):
        list(d.feed(b"x" * 17))


async def _server(path: str, handler: controlsock.Handler, task_status: trio.TaskStatus[None]) -> None:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen(4)
    async with trio.open_nursery() as nursery:
        task_status.started()

        async def serve(stream: trio.SocketStream) -> None:
            await controlsock.serve_stream(stream, handler)

        await trio.serve_listeners(serve, [trio.SocketListener(sock)], handler_nursery=nursery)


async def test_call_over_a_unix_socket(tmp_path) -> None:
    seen: list[Request] = []

    async def handler(req: Request) -> dict[str, Any]:
        seen.append(req)
        if req.cmd == "thaw":
            raise ControlError("cannot thaw while idle")
        return {"state": "idle"}

    path = str(tmp_path / "c.sock")
    async with trio.open_nursery() as nursery:
        await nursery.start(_server, path, handler)
        assert await controlsock.call(path, "status", timeout=5) == {"state": "idle"}
        with pytest.raises(ControlError, match="cannot thaw while idle"):
            await controlsock.call(path, "thaw", timeout=5)
        nursery.cancel_scope.cancel()
    assert [r.cmd for r in seen] == ["status", "thaw"]


async def test_peer_credentials_are_checked(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(controlsock, "peer_allowed", lambda uid: False)

    async def handler(req: Request) -> dict[str, Any]:
        raise AssertionError("an unauthorised request reached the handler")

    path = str(tmp_path / "c.sock")
    async with trio.open_nursery() as nursery:
        await nursery.start(_server, path, handler)
        with pytest.raises(ControlError, match="permission denied"):
            await controlsock.call(path, "status", timeout=5)
        nursery.cancel_scope.cancel()


async def test_a_service_that_dies_mid_call_is_one_control_error(tmp_path) -> None:
    """Its socket closed with our request unread: the kernel resets the connection (ECONNRESET), which
    must reach the caller as the refusal-shaped error its retry logic knows, not a trio exception."""
    path = str(tmp_path / "c.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    async def die_on_request() -> None:
        conn, _ = await trio.to_thread.run_sync(listener.accept)
        await trio.sleep(0.2)  # the request has arrived, unread
        conn.close()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(die_on_request)
        with pytest.raises(ControlError, match="closed the connection without answering"):
            await controlsock.call(path, "thaw", timeout=5)
    listener.close()
