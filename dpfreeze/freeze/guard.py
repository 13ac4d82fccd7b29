"""The crash guard's senses: see ovs-vswitchd die within milliseconds, and tell a crash from a stop.

Why the pidfile tells them apart: OVS unlinks it on every orderly way out, `exit()` and the fatal-signal
hooks of SIGTERM, SIGINT and SIGHUP (ovs-ctl stop, ovs-appctl exit, systemctl stop); SIGKILL (kill -9, the
OOM killer), SIGSEGV and SIGABRT (an assertion, the watchdog) leave it behind, naming the dead pid.
But systemd reaps the daemon of a unit and removes its PIDFile= at once, and sometimes before the guard
has looked (seen in CI); the datapath then tells: a crash leaves upcall pids no live socket holds, an
orderly exit resets them.

Why a crash-loop limit: a daemon that dies again and again must not keep the host frozen; past `limit`
deaths within `window` seconds the guard thaws and stays out of the way until the window has passed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import trio

from dpfreeze.ovs.ovsenv import process_alive

POLL = 0.05  # where no pidfd can be had (kernels before 5.3)


async def wait_exit(pid: int) -> None:
    """Return once `pid` has exited: a pidfd turns readable at the very exit; /proc is polled otherwise."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError:
        while process_alive(pid):
            await trio.sleep(POLL)
        return
    try:
        await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)


@dataclass
class CrashLoop:
    """Deaths within a sliding window: `limit` of them is a loop."""

    limit: int = 3
    window: float = 600.0
    deaths: list[float] = field(default_factory=list)

    def record(self, now: float) -> bool:
        """Count one death; True when it makes a loop."""
        self.deaths = [*self.recent(now), now]
        return self.looping(now)

    def recent(self, now: float) -> list[float]:
        return [t for t in self.deaths if now - t < self.window]

    def looping(self, now: float) -> bool:
        return len(self.recent(now)) >= self.limit
