"""rtnetlink requests without an event loop: the blocking edge of the `dpif.netlink.rtnl` codec.

One request on a fresh NETLINK_ROUTE socket, its replies read to the end; called from a worker thread
(a snapshot reads internal ports' configuration this way).
"""

from __future__ import annotations

import ctypes
import socket
import struct

from dpif.netlink.wire import NLMSG_DONE, NLMSG_ERROR, KernelError, iter_messages, parse_error

NETLINK_ROUTE = 0
CLONE_NEWNET = 0x40000000
RECV_BUFFER = 1 << 16


def _socket(netns: str | None) -> socket.socket:
    """A NETLINK_ROUTE socket of `netns` (a name under /run/netns) or of this thread's namespace.  A socket
    keeps the namespace it was made in, so this thread enters `netns` just for the socket() call."""
    if netns is None:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/thread-self/ns/net", "rb") as home, open(f"/run/netns/{netns}", "rb") as there:
        if libc.setns(there.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"cannot enter network namespace {netns}")
        try:
            return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        finally:
            if libc.setns(home.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "cannot return to this thread's network namespace")


def exchange(request: bytes, timeout: float = 5.0, netns: str | None = None) -> list[memoryview]:
    """Send one request on a fresh NETLINK_ROUTE socket (of `netns`, if given); the payloads of its
    replies (a dump's, or one answer).  A kernel error is raised as KernelError (ENODEV: no such device).
    Blocking: call it from a worker thread."""
    seq = struct.unpack_from("=I", request, 8)[0]
    payloads: list[memoryview] = []
    with _socket(netns) as sock:
        sock.settimeout(timeout)
        sock.send(request)
        while True:
            for msg in iter_messages(sock.recv(RECV_BUFFER)):
                if msg.seq != seq:
                    continue
                if msg.type == NLMSG_DONE:
                    return payloads
                if msg.type == NLMSG_ERROR:
                    if (err := parse_error(msg)) is not None:
                        raise err
                    return payloads  # the ACK after a single answer
                payloads.append(msg.payload)


__all__ = ["KernelError", "exchange"]
