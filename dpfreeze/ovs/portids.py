"""Who owns a netlink portid: /proc/net/netlink maps portids to socket inodes, /proc/PID/fd maps inodes
to processes.

Why it matters: the kernel neither checks nor reports who holds an upcall pid or who sent a flow request,
and it keeps a dead daemon's pids programmed; this is how `ss -p` tells them apart.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from dpif.model import Datapath, DatapathInfo, Vport

NETLINK_GENERIC = 16



@dataclass(frozen=True)
class SocketQueue:
    """A netlink socket's receive queue as /proc/net/netlink shows it: bytes unread, packets dropped."""

    rmem: int
    drops: int


def _rows(text: str, protocol: int) -> Iterator[list[str]]:
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 10 and cols[1].isdigit() and int(cols[1]) == protocol:
            yield cols


def parse_proc_net_netlink(text: str, protocol: int = NETLINK_GENERIC) -> dict[int, int]:
    """portid -> socket inode, for one netlink protocol, from the text of /proc/net/netlink."""
    return {int(cols[2]) & 0xFFFFFFFF: int(cols[9]) for cols in _rows(text, protocol)}


def parse_socket_queues(text: str, protocol: int = NETLINK_GENERIC) -> dict[int, SocketQueue]:
    """portid -> its receive queue, from the text of /proc/net/netlink."""
    return {int(cols[2]) & 0xFFFFFFFF: SocketQueue(int(cols[4]), int(cols[8]))
            for cols in _rows(text, protocol)}


def socket_queues(proc: Path = Path("/proc")) -> dict[int, SocketQueue]:
    return parse_socket_queues((proc / "net" / "netlink").read_text())


_SOCKET_LINK = re.compile(r"socket:\[(\d+)\]")


def inode_processes(inodes: Iterable[int], proc: Path = Path("/proc")) -> dict[int, tuple[int, str]]:
    """socket inode -> (pid, comm), by scanning /proc/*/fd as `ss -p` does."""
    wanted = set(inodes)
    found: dict[int, tuple[int, str]] = {}
    for piddir in proc.iterdir():
        if not piddir.name.isdigit() or not wanted - found.keys():
            continue
        try:
            fds = list((piddir / "fd").iterdir())
            comm = (piddir / "comm").read_text().strip()
        except OSError:
            continue
        for fd in fds:
            try:
                m = _SOCKET_LINK.fullmatch(os.readlink(fd))
            except OSError:
                continue
            if m and int(m.group(1)) in wanted:
                found.setdefault(int(m.group(1)), (int(piddir.name), comm))
    return found


def live_portids(proc: Path = Path("/proc")) -> dict[int, int]:
    return parse_proc_net_netlink((proc / "net" / "netlink").read_text())


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
    inodes: set[int] = set()
    try:
        fds = list((proc / str(pid) / "fd").iterdir())
    except OSError:
        return set()
    for fd in fds:
        try:
            m = _SOCKET_LINK.fullmatch(os.readlink(fd))
        except OSError:
            continue
        if m:
            inodes.add(int(m.group(1)))
    return {portid for portid, inode in live_portids(proc).items() if inode in inodes}


async def upcall_owners(dp: Datapath, proc: Path = Path("/proc")) -> frozenset[int]:
    """Process ids (not ours) that hold a live upcall pid of `dp` now: the running daemon, if any."""
    info, vports = await dp.info(), await dp.ports()
    owners = portid_owners(upcall_pids(info, vports), proc)
    return frozenset(o["pid"] for o in owners if isinstance(o["pid"], int) and o["pid"] != os.getpid())
