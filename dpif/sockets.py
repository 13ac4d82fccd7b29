"""NETLINK_GENERIC sockets, without an event loop: set up, bound, read without blocking.

The edges that wait on them are `dpif.transport` (trio) and `dpif.blocking` (poll, for one-shot
commands); the bytes go to the sans-IO codecs of `dpif.netlink`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import socket
from collections.abc import Collection
from pathlib import Path

NETLINK_GENERIC = 16
SO_RCVBUFFORCE = 33  # Linux; not exported by the socket module
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NETLINK_NO_ENOBUFS = 5
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11

SYS_PIDFD_GETFD = 438  # one number on every architecture (system calls from 424 on are shared)
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
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, NETLINK_GENERIC)
        try:
            _set_rcvbuf(sock, rcvbuf)
            sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            if listener:
                # Losses are counted (sk_drops) and reported as Overrun instead of poisoning the socket.
                sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
            sock.bind((portid, 0))
        except BaseException:
            sock.close()
            raise
        self._own(sock)

    def _own(self, sock: socket.socket) -> None:
        self.sock = sock
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
            n = self.sock.recv_into(self._buf, 0, socket.MSG_DONTWAIT)  # a held socket's file may block
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


class HeldSocket(NetlinkSocket):
    """Another process's socket, held by a copy of its descriptor: the socket lives as long as either holds
    it, so what the kernel queues on it after that process dies waits here instead of being dropped.  The
    open file is shared: its flags are never touched (reads pass MSG_DONTWAIT), and reading it while its
    owner lives would steal the owner's messages."""

    def __init__(self, fd: int) -> None:
        self._own(socket.socket(fileno=fd))
        self._drops = _proc_drops(self.inode) or 0  # what its owner lost is not ours to report


def hold_sockets(pid: int, portids: Collection[int], proc: Path = Path("/proc")) -> list[HeldSocket]:
    """Copies of process `pid`'s NETLINK_GENERIC sockets bound to `portids`.  pidfd_getfd needs Linux 5.6
    and ptrace access to `pid`: root has it unless Yama's ptrace_scope 3 or an LSM forbids (OSError)."""
    inodes = {inode: portid for portid, inode in generic_portids(proc).items() if portid in portids}
    fds = socket_fds(pid, proc)
    pidfd = os.pidfd_open(pid)
    held: list[HeldSocket] = []
    try:
        for inode, fd in fds.items():
            if inode not in inodes:
                continue
            copy = pidfd_getfd(pidfd, fd)
            if os.fstat(copy).st_ino != inode:  # the descriptor was closed and reused meanwhile
                os.close(copy)
                continue
            held.append(HeldSocket(copy))
    except BaseException:
        for s in held:
            s.close()
        raise
    finally:
        os.close(pidfd)
    return held


def pidfd_getfd(pidfd: int, fd: int) -> int:
    """A descriptor of ours for descriptor `fd` of the process `pidfd` refers to (close-on-exec)."""
    libc = ctypes.CDLL(None, use_errno=True)
    copy = libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
    if copy < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(copy)


_SOCKET_LINK = re.compile(r"socket:\[(\d+)\]")


def socket_fds(pid: int, proc: Path = Path("/proc")) -> dict[int, int]:
    """socket inode -> descriptor, for every socket process `pid` holds now (empty if it is gone)."""
    found: dict[int, int] = {}
    try:
        fds = list((proc / str(pid) / "fd").iterdir())
    except OSError:
        return found
    for fd in fds:
        try:
            m = _SOCKET_LINK.fullmatch(os.readlink(fd))
        except OSError:
            continue
        if m:
            found.setdefault(int(m.group(1)), int(fd.name))
    return found


def parse_proc_net_netlink(text: str, protocol: int = NETLINK_GENERIC) -> dict[int, int]:
    """portid -> socket inode, for one netlink protocol, from the text of /proc/net/netlink."""
    return {int(cols[2]) & 0xFFFFFFFF: int(cols[9]) for cols in proc_net_netlink_rows(text, protocol)}


def proc_net_netlink_rows(text: str, protocol: int = NETLINK_GENERIC) -> list[list[str]]:
    """The columns of each socket of one protocol: sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode."""
    return [cols for cols in (line.split() for line in text.splitlines()[1:])
            if len(cols) >= 10 and cols[1].isdigit() and int(cols[1]) == protocol]


def generic_portids(proc: Path = Path("/proc")) -> dict[int, int]:
    """portid -> socket inode of every NETLINK_GENERIC socket now."""
    return parse_proc_net_netlink((proc / "net" / "netlink").read_text())


def _set_rcvbuf(sock: socket.socket, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def _proc_drops(inode: int) -> int | None:
    """sk_drops of our socket: counted even with NETLINK_NO_ENOBUFS, so losses are never silent."""
    try:
        text = Path("/proc/net/netlink").read_text()
    except OSError:
        return None
    want = str(inode)
    return next((int(cols[8]) for cols in proc_net_netlink_rows(text) if cols[9] == want), None)
