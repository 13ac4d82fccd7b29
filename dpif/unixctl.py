"""ovs-appctl's protocol: JSON-RPC 1.0 requests and replies on a daemon's unixctl socket.

The codec half (`encode_request`, `ReplyReader`) is pure, like `dpif/netlink`; `UnixctlClient` is the
trio edge.  Many requests may be sent before the first reply is read (the daemon answers them in order),
which is how thousands of `dpctl/add-flow` calls cost one round trip instead of one each.
"""

from __future__ import annotations

import errno
import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

DEFAULT_TIMEOUT = 30.0
RECV_SIZE = 1 << 20
_NON_SPACE = re.compile(r"\S")


class UnixctlError(OSError):
    """The daemon refused a command; the message is its error text, on one line."""

    def __init__(self, method: str, message: str) -> None:
        self.method = method
        self.message = " ".join(message.split())
        super().__init__(errno.EINVAL, f"{method}: {self.message}")

    def __str__(self) -> str:
        return f"{self.method}: {self.message}"


class UnixctlUnreachable(OSError):
    """No daemon answers on that socket (not running, restarting, or the socket is stale)."""

    def __init__(self, path: Path | str, why: str) -> None:
        super().__init__(errno.ECONNREFUSED, f"cannot reach {path}: {why}")


class ProtocolError(ValueError):
    """The peer sent something that is not a JSON-RPC reply."""


@dataclass(frozen=True)
class Reply:
    id: int
    result: str | None
    error: str | None


def encode_request(id: int, method: str, params: Sequence[str]) -> bytes:
    return json.dumps({"id": id, "method": method, "params": list(params)}).encode()


class ReplyReader:
    """Splits a byte stream into JSON-RPC replies (OVS writes the objects back to back, unframed)."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._decoder = json.JSONDecoder()
        self._pending = b""

    def feed(self, data: bytes) -> list[Reply]:
        return [_reply(obj) for obj in self.feed_objects(data)]

    def feed_objects(self, data: bytes) -> list[object]:
        """The JSON objects completed by `data`, as decoded (an OVSDB client reads results that are not
        text, and the server's own requests, `echo`, between them)."""
        text = self._pending + data
        self._pending = b""
        try:
            self._parts.append(text.decode())
        except UnicodeDecodeError as exc:  # a multi-byte character cut by the read
            if exc.start < len(text) - 3:
                raise ProtocolError(f"invalid UTF-8 in reply: {exc}") from None
            self._parts.append(text[: exc.start].decode())
            self._pending = text[exc.start :]
        first = next((m for part in self._parts if (m := _NON_SPACE.search(part))), None)
        if first is not None and (head := first.group()) != "{":
            raise ProtocolError(f"not a JSON-RPC reply: starts with {head!r}")
        out: list[object] = []
        # Join and decode only when the stream may have reached the end of an object: a reply of
        # megabytes arrives in many reads, and re-scanning it after each would be quadratic.
        while self._parts and self._parts[-1].rstrip().endswith("}"):
            s = "".join(self._parts).lstrip()
            try:
                obj, end = self._decoder.raw_decode(s)
            except json.JSONDecodeError:
                self._parts = [s]
                break
            except RecursionError:
                raise ProtocolError("reply nested too deeply") from None
            rest = s[end:]
            self._parts = [rest] if rest.strip() else []
            out.append(obj)
        return out

    @property
    def partial(self) -> bool:
        """Part of a reply has been read."""
        return any(p.strip() for p in self._parts) or bool(self._pending)

    def finish(self) -> None:
        if self.partial:
            raise ProtocolError("connection closed in the middle of a reply")


def _reply(obj: object) -> Reply:
    if not isinstance(obj, dict) or "id" not in obj or not isinstance(obj["id"], int):
        raise ProtocolError(f"not a JSON-RPC reply: {str(obj)[:80]}")
    result, error = obj.get("result"), obj.get("error")
    if error is not None and not isinstance(error, str):
        error = json.dumps(error)
    if result is not None and not isinstance(result, str):
        result = json.dumps(result)
    return Reply(obj["id"], result, error)


class UnixctlClient:
    """One connection to one daemon, as ovs-appctl makes one per command."""

    def __init__(self, stream: trio.SocketStream, path: Path | str) -> None:
        self.stream = stream
        self.path = path
        self._ids = itertools.count()

    async def call(self, method: str, *params: str, timeout: float = DEFAULT_TIMEOUT) -> str:
        result = (await self.call_many([(method, params)], timeout=timeout))[0]
        if isinstance(result, UnixctlError):
            raise result
        return result

    async def call_many(
        self, calls: Sequence[tuple[str, Sequence[str]]], *, timeout: float = DEFAULT_TIMEOUT
    ) -> list[str | UnixctlError]:
        """Send every request, then read every reply: one result or error per call, in order."""
        ids = [next(self._ids) for _ in calls]
        methods = {i: method for i, (method, _) in zip(ids, calls, strict=True)}
        data = b"".join(encode_request(i, m, params) for i, (m, params) in zip(ids, calls, strict=True))
        replies: dict[int, Reply] = {}
        reader = ReplyReader()
        failure: list[BaseException] = []  # the first one, raised as itself (not in an exception group)

        async def send() -> None:  # the daemon answers while we still send
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                failure.append(UnixctlUnreachable(self.path, f"sending: {exc or type(exc).__name__}"))
                nursery.cancel_scope.cancel()

        async def receive() -> None:
            try:
                while len(replies) < len(calls):
                    chunk = await self.stream.receive_some(RECV_SIZE)
                    if not chunk:  # a daemon exiting mid-answer is gone, not confused
                        where = " in the middle of a reply" if reader.partial else ""
                        raise UnixctlUnreachable(self.path, f"the daemon closed the connection{where}")
                    for reply in reader.feed(chunk):
                        if reply.id not in methods:
                            raise ProtocolError(f"reply to unknown request {reply.id}")
                        replies[reply.id] = reply
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                failure.append(UnixctlUnreachable(self.path, f"receiving: {exc or type(exc).__name__}"))
            except (UnixctlUnreachable, ProtocolError, OSError) as exc:
                failure.append(exc)
            nursery.cancel_scope.cancel()

        with trio.fail_after(timeout):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                nursery.start_soon(receive)
        if failure:
            raise failure[0]
        out: list[str | UnixctlError] = []
        for i in ids:
            r = replies[i]
            out.append(UnixctlError(methods[i], r.error) if r.error is not None else r.result or "")
        return out

    async def aclose(self) -> None:
        await self.stream.aclose()


async def connect(path: Path | str, *, timeout: float = 5.0) -> UnixctlClient:
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_unix_socket(str(path))
    except (OSError, trio.TooSlowError) as exc:
        raise UnixctlUnreachable(path, getattr(exc, "strerror", None) or "timed out") from None
    return UnixctlClient(stream, path)


async def call(path: Path | str, method: str, *params: str, timeout: float = DEFAULT_TIMEOUT) -> str:
    """One command, as `ovs-appctl -t PATH METHOD PARAMS...`: its text output, or UnixctlError."""
    client = await connect(path)
    try:
        return await client.call(method, *params, timeout=timeout)
    finally:
        await client.aclose()
