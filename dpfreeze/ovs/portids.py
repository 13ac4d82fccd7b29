"""Who owns a netlink portid: /proc/net/netlink maps portids to socket inodes, /proc/PID/fd maps inodes
to processes.

Why it matters: the kernel neither checks nor reports who holds an upcall pid or who sent a flow request,
and it keeps a dead daemon's pids programmed; this is how `ss -p` tells them apart.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dpif.model import Datapath, DatapathInfo, Vport
from dpif.sockets import generic_portids, proc_net_netlink_rows, socket_fds


@dataclass(frozen=True)
class SocketQueue:
    """A netlink socket's receive queue as /proc/net/netlink shows it: bytes unread, packets dropped."""

    rmem: int
    drops: int


def parse_socket_queues(text: str) -> dict[int, SocketQueue]:
    """portid -> its receive queue, from the text of /proc/net/netlink (NETLINK_GENERIC sockets)."""
    return {int(cols[2]) & 0xFFFFFFFF: SocketQueue(int(cols[4]), int(cols[8]))
            for cols in proc_net_netlink_rows(text)}


def socket_queues(proc: Path = Path("/proc")) -> dict[int, SocketQueue]:
    return parse_socket_queues((proc / "net" / "netlink").read_text())


def inode_processes(inodes: Iterable[int], proc: Path = Path("/proc")) -> dict[int, tuple[int, str]]:
    """socket inode -> (pid, comm), by scanning /proc/*/fd as `ss -p` does.  A socket this process holds
    too (the crash guard holds the daemon's upcall sockets) is the other holder's."""
    wanted = set(inodes)
    found: dict[int, tuple[int, str]] = {}
    ours: dict[int, tuple[int, str]] = {}
    me = os.getpid()
    for piddir in proc.iterdir():
        if not piddir.name.isdigit() or not wanted - found.keys():
            continue
        pid = int(piddir.name)
        held = socket_fds(pid, proc).keys() & wanted
        if not held:
            continue
        try:
            comm = (piddir / "comm").read_text().strip()
        except OSError:
            continue
        for inode in held:
            (ours if pid == me else found).setdefault(inode, (pid, comm))
    return {**ours, **found}


def live_portids(proc: Path = Path("/proc")) -> dict[int, int]:
    return generic_portids(proc)


def upcall_pids(info: DatapathInfo, vports: Sequence[Vport]) -> tuple[int, ...]:
    """The portids the kernel would send misses to now: per-CPU array, else every vport's pids."""
    if info.per_cpu_dispatch:
        return info.per_cpu_pids
    return tuple(p for v in vports for p in v.upcall_pids)


def portid_owners(pids: Iterable[int], proc: Path = Path("/proc")) -> list[dict[str, object]]:
    """One entry per distinct upcall portid: its owning process, or dead."""
    live = live_portids(proc)
    distinct = sorted(set(pids))
    procs = inode_processes((live[p] for p in distinct if p in live), proc)
    report: list[dict[str, object]] = []
    for p in distinct:
        inode = live.get(p)
        owner = procs.get(inode) if inode is not None else None
        report.append(
            {
                "portid": p,
                "alive": inode is not None,
                "pid": owner[0] if owner else None,
                "process": owner[1] if owner else None,
            }
        )
    return report


def process_portids(pid: int, proc: Path = Path("/proc")) -> set[int]:
    """Every NETLINK_GENERIC portid whose socket process `pid` holds now (empty if it is gone)."""
    inodes = socket_fds(pid, proc).keys()
    return {portid for portid, inode in live_portids(proc).items() if inode in inodes}


async def upcall_owners(dp: Datapath, proc: Path = Path("/proc")) -> frozenset[int]:
    """Process ids (not ours) that hold a live upcall pid of `dp` now: the running daemon, if any."""
    info, vports = await dp.info(), await dp.ports()
    owners = portid_owners(upcall_pids(info, vports), proc)
    return frozenset(o["pid"] for o in owners if isinstance(o["pid"], int) and o["pid"] != os.getpid())
