"""A stand-in for `dpif.sockets.NetlinkSocket`, for driving both netlink edges (trio and blocking) from
bytes: what it answers to each send is queued at once, so an edge that has to wait on it has asked for
something that will never come, and the wait fails instead of hanging."""

from __future__ import annotations

from typing import Any

import pytest

from dpif.blocking import BlockingClient
from dpif.transport import GenlClient

Client = GenlClient | BlockingClient
EDGES = pytest.mark.parametrize("edge", [GenlClient, BlockingClient])


class FakeNetlinkSock:
    never = "waiting for an answer that will never come"

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.queue: list[bytes] = []
        self.closed = False

    def answer(self, data: bytes) -> list[bytes]:
        """The datagrams the kernel would queue for what was sent."""
        raise NotImplementedError

    def send_nowait(self, data: bytes | bytearray) -> bool:
        self.sent.append(bytes(data))
        self.queue += self.answer(bytes(data))
        return True

    def recv_nowait(self) -> bytes | None:
        return self.queue.pop(0) if self.queue else None

    @property
    def sock(self) -> Any:  # what an edge waits on when the queue is empty
        raise AssertionError(self.never)

    def close(self) -> None:
        self.closed = True
