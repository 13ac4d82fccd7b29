"""`ovs-appctl -t TARGET COMMAND...` without starting a process.

The control socket is found as ovs-appctl finds it (`ovsenv`), and spoken to with `dpif.unixctl`.  Why not
the tool: an upgrade polls the new daemon and stops the old one with these commands, and a process
start-up costs tens of milliseconds natively and a large part of a second under emulation, each time.
"""

from __future__ import annotations

import trio

from dpfreeze.ovs.ovsenv import OvsEnv
from dpif.unixctl import call


async def appctl(env: OvsEnv, target: str, command: str, *args: str, timeout: float = 5.0) -> str:
    """The command's output; UnixctlError if the daemon refuses it, OSError if none answers."""
    return await call(env.unixctl(target), command, *args, timeout=timeout)


async def version(env: OvsEnv, target: str, timeout: float = 5.0) -> str | None:
    """`ovs-appctl version`'s first line, None if the daemon does not answer (in time, or sensibly)."""
    try:
        text = await appctl(env, target, "version", timeout=timeout)
    except (OSError, ValueError, trio.TooSlowError):
        return None
    return text.splitlines()[0].strip() if text.strip() else None
