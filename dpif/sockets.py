"""NETLINK_GENERIC sockets, without an event loop: set up, bound, read without blocking.

The edges that wait on them are `dpif.transport` (trio) and `dpif.blocking` (poll, for one-shot
commands); the bytes go to the sans-IO codecs of `dpif.netlink`.
"""

from __future__ import annotations

import errno
import os
import socket

NETLINK_GENERIC = 16
SO_RCVBUFFORCE = 33  # Linux; not exported by the socket module
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NETLINK_NO_ENOBUFS = 5
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11

RECV_SIZE = 256 * 1024  # >= 32 KiB: the kernel sizes later dump chunks from our largest recv
RCVBUF = 4 * 1024 * 1024  # what ovs-vswitchd uses
DEFAULT_TIMEOUT = 10.0


class Overrun(Exception):
    """A listener or upcall socket lost messages; carries how many, if known."""

    def __init__(self, dropped: int | None) -> None:
        super().__init__(f"netlink socket overrun ({dropped if dropped is not None else 'unknown'} dropped)")
        self.dropped = dropped


class NetlinkSocket:
    """One non-blocking NETLINK_GENERIC socket.  `portid` is what the kernel actually bound."""

    def __init__(self, *, portid: int = 0, listener: bool = False, rcvbuf: int = RCVBUF) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, NETLINK_GENERIC)
        try:
            _set_rcvbuf(self.sock, rcvbuf)
            self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            if listener:
                # Losses are counted (sk_drops) and reported as Overrun instead of poisoning the socket.
                self.sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
            self.sock.bind((portid, 0))
        except BaseException:
            self.sock.close()
            raise
        self.portid: int = self.sock.getsockname()[0]
        self.inode = os.fstat(self.sock.fileno()).st_ino
        self.rcvbuf = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self._drops = 0
        self._buf = bytearray(RECV_SIZE)
        self._view = memoryview(self._buf)

    def close(self) -> None:
        self.sock.close()

    def add_membership(self, group: int) -> None:
        self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)

    def send_nowait(self, data: bytes | bytearray) -> bool:
        """Send one datagram; False when the socket would block (the caller waits and tries again)."""
        try:
            self.sock.send(data)
            return True
        except BlockingIOError:
            return False

    def recv_nowait(self) -> bytes | None:
        """One datagram, or None when the queue is empty.  ENOBUFS (listener overrun) raises Overrun.

        Received into one reusable buffer and copied out at its exact size: recv(RECV_SIZE) would allocate
        and shrink 256 KiB per datagram, and a batch's acks are one datagram each (fragmentation, RSS).
        """
        try:
            n = self.sock.recv_into(self._buf)
            return bytes(self._view[:n])
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                raise Overrun(None) from exc
            raise

    def new_drops(self) -> int:
        """Messages the kernel dropped on this socket since the last call (sk_drops, /proc/net/netlink)."""
        total = _proc_drops(self.inode)
        if total is None:
            return 0
        delta, self._drops = total - self._drops, total
        return max(delta, 0)


class UpcallSocket(NetlinkSocket):
    """A socket to program as an upcall pid.  `portid` may be chosen (e.g. to squat a dead daemon's)."""

    def __init__(self, portid: int = 0) -> None:
        super().__init__(portid=portid, listener=True)


def _set_rcvbuf(sock: socket.socket, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def _proc_drops(inode: int) -> int | None:
    """sk_drops of our socket: counted even with NETLINK_NO_ENOBUFS, so losses are never silent."""
    try:
        with open("/proc/net/netlink", "rb") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return None
    want = b"%d" % inode
    for line in lines:
        cols = line.split()  # sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode (left-justified, padded)
        if len(cols) >= 10 and cols[9] == want:
            return int(cols[8])
    return None
