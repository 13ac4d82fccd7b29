"""The command an upgrade run inside the service belongs to, at the other end of its control connection.

Why the upgrade's commands go back to it: a process started by the service would live in the service's
cgroup, and under systemd the new ovs-vswitchd must live in the unit whose ExecReload runs `dpfreeze
upgrade` (or in the operator's session).  So the service does the upgrade's work and the caller runs
exactly the commands that start processes (the restart command, the daemon, a rollback), each answered by
its outcome.  The caller gone (killed, Ctrl-C), `CallerGone` tells the upgrade to finish as an orphan.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import trio

from dpfreeze.errors import DpfreezeError


class CallerGone(DpfreezeError):
    """The command whose upgrade this is closed its connection: nothing can be run in its process."""


class Caller:
    """One control connection's upgrade: the upgrade task sends what to answer next (a command to run, or
    the report), the connection's handler sends back what the caller's run gave."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        try:
            self.group = os.getpgid(pid)  # its restart command, if it outlives it, is in this group
        except OSError:
            self.group = pid
        self._answers_in, self._answers = trio.open_memory_channel[dict[str, Any] | Exception](0)
        self._ran_in, self._ran = trio.open_memory_channel[str](1)
        self.busy = False

    async def run(self, argv: list[str], *, timeout: float, env: dict[str, str],
                  executable: str | None = None) -> str:
        """Have the caller run `argv` (within `timeout` s, `env` added to its own); "" when it succeeded,
        else why not, in one line."""
        try:
            await self._answers_in.send({"run": {"argv": argv, "timeout": timeout, "env": env,
                                                 "executable": executable}})
            return await self._ran.receive()
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.EndOfChannel):
            raise CallerGone(f"the command that began the upgrade (pid {self.pid}) is gone") from None

    async def finish(self, answer: dict[str, Any] | Exception) -> None:
        """The last answer: the report, or the refusal; nobody to give it to is no error."""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._answers_in.send(answer)

    async def next_answer(self) -> dict[str, Any] | Exception:
        """For the connection: what to answer the caller's last request with."""
        return await self._answers.receive()

    async def ran(self, error: str) -> None:
        await self._ran_in.send(error)

    def gone(self) -> None:
        """The connection closed: an upgrade waiting on the caller learns it at once."""
        self._answers.close()
        self._ran_in.close()
