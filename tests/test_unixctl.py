"""The unixctl codec: replies split anywhere, several per read, errors, and garbage refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from dpif.unixctl import (
    ProtocolError,
    Reply,
    ReplyReader,
    UnixctlError,
    UnixctlUnreachable,
    call,
    encode_request,
)


def stream(*replies: dict[str, object]) -> bytes:
    return b"".join(json.dumps(r).encode() for r in replies)


def test_request_is_json_rpc_1() -> None:
    assert json.loads(encode_request(7, "dpctl/show", ["netdev@ovs-netdev"])) == {
        "id": 7, "method": "dpctl/show", "params": ["netdev@ovs-netdev"]}


@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=30))
def test_replies_split_at_any_byte_come_out_whole_and_in_order(cuts: list[int]) -> None:
    texts = ["port 1: br0 (tap)\n", "}{ not a boundary }", "ünïcode ✓ " * 20, ""]
    data = stream(*({"id": i, "result": t, "error": None} for i, t in enumerate(texts)))
    reader, got, pos = ReplyReader(), [], 0
    for n in cuts * 50:
        if pos >= len(data):
            break
        got += reader.feed(data[pos : pos + n])
        pos += n
    got += reader.feed(data[pos:])
    reader.finish()
    assert got == [Reply(i, t, None) for i, t in enumerate(texts)]


def test_error_reply_keeps_the_daemons_text() -> None:
    (r,) = ReplyReader().feed(stream({"id": 0, "result": None, "error": "ovs-vswitchd: no such dp\n"}))
    assert r.error == "ovs-vswitchd: no such dp\n"
    assert str(UnixctlError("dpctl/show", r.error)) == "dpctl/show: ovs-vswitchd: no such dp"


@pytest.mark.parametrize("data", [b"[1, 2]", b'{"result": "x"}', b'{"id": "a", "result": "x"}'])
def test_what_is_not_a_reply_is_refused(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        ReplyReader().feed(data)


def test_a_reply_cut_by_the_end_of_the_stream_is_an_error() -> None:
    reader = ReplyReader()
    assert reader.feed(b'{"id": 0, "result": "par') == []
    with pytest.raises(ProtocolError):
        reader.finish()


def test_invalid_utf8_is_refused_not_buffered_forever() -> None:
    with pytest.raises(ProtocolError):
        ReplyReader().feed(b'{"id": 0, "result": "\xff\xfe\xfd\xfc\xfb"}')


async def _serve_once(path: Path, answer: bytes, nursery: trio.Nursery) -> None:
    """A unix socket that reads one request, writes `answer` and hangs up."""
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(str(path))
    sock.listen(1)

    async def once() -> None:
        conn, _ = await sock.accept()
        with conn:
            await conn.recv(65536)
            if answer:
                await conn.send(answer)
        sock.close()

    nursery.start_soon(once)


@pytest.mark.parametrize(("answer", "error"), [
    (b"", UnixctlUnreachable),  # hung up mid-call: a daemon restarting
    (b'{"id": 0, "result": "half', UnixctlUnreachable),
    (b'{"id": 99, "result": "x", "error": null}', ProtocolError),
])
async def test_a_broken_conversation_raises_one_plain_error(tmp_path: Path, answer: bytes,
                                                            error: type[Exception]) -> None:
    """Never an exception group: callers (the restorer's poll) catch OSError to retry."""
    path = tmp_path / "d.ctl"
    async with trio.open_nursery() as nursery:
        await _serve_once(path, answer, nursery)
        with pytest.raises(error):
            await call(path, "version", timeout=5)


async def test_no_daemon_is_unreachable(tmp_path: Path) -> None:
    with pytest.raises(UnixctlUnreachable, match="cannot reach"):
        await call(tmp_path / "none.ctl", "version")


async def test_a_daemon_that_never_answers_has_no_version(tmp_path: Path) -> None:
    """What the upgrade's new-daemon poll asks: a hung daemon is "not answering", not an error."""
    from dpfreeze.ovs import appctl
    from dpfreeze.ovs.ovsenv import OvsEnv

    env = OvsEnv.from_environ({"OVS_RUNDIR": str(tmp_path)})
    env.pidfile("ovs-vswitchd").write_text("4242\n")
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(str(env.unixctl("ovs-vswitchd")))
    sock.listen(1)
    async with trio.open_nursery() as nursery:
        async def hold() -> None:
            conn, _ = await sock.accept()
            with conn:
                await trio.sleep_forever()

        nursery.start_soon(hold)
        assert await appctl.version(env, "ovs-vswitchd", timeout=0.3) is None
        nursery.cancel_scope.cancel()
    sock.close()
