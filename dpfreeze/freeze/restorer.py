"""The freeze of a userspace (netdev) datapath: restore it into the new daemon, since nothing survives.

A userspace datapath lives in ovs-vswitchd and dies with it: there is nothing to pin and no upcall to
take while no daemon runs, so that gap stays an outage.  What can still be won is the time after the new
daemon starts: under flow-restore-wait it adds its ports but handles no upcalls (misses are dropped) until
the OpenFlow tables are back and the flag is cleared.  The restorer watches for a daemon started after the
freeze, waits for its datapath to have the snapshot's ports, and puts the snapshot's flows into it, renumbered
by port name (`portmap`), so established traffic forwards from that moment instead of from the clear.
At the clear the daemon flushes its datapath and re-learns from its restored tables (in-process upcalls).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from dpfreeze.freeze.pin import PinSet
from dpfreeze.log import kv
from dpfreeze.snapshot import DatapathSnapshot, RestoreReport, restore
from dpif.model import Datapath

LOG = logging.getLogger(__name__)

PORTS_WAIT = 2.0  # seconds to wait for the new daemon to add every port the snapshot had


@dataclass
class RestorerStats:
    daemon_seen_after_s: float | None = None  # restorer start -> first answer of a new daemon
    restored_after_s: float | None = None  # that answer -> the flows are in
    report: list[str] = field(default_factory=list)
    flows_restored: int = 0
    failures: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


class Restorer:
    def __init__(
        self,
        dp: Datapath,
        pins: PinSet,
        *,
        frozen_at: float,
        daemon_started: Callable[[], float | None],
        poll_interval: float = 0.02,
    ) -> None:
        self.dp = dp
        self.snapshot = DatapathSnapshot(pins.datapath, pins.vports, pins.flows)
        self.frozen_at = frozen_at  # time.time() of the freeze: daemons started later are new
        self.daemon_started = daemon_started  # time.time() the running daemon started, None if none runs
        self.poll_interval = poll_interval
        self.stats = RestorerStats()
        self.done = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Until the flows are in a new daemon's datapath (then return), or cancelled by the thaw."""
        task_status.started()
        wanted = {v.name for v in self.snapshot.vports}
        first_answer: float | None = None
        t0 = time.monotonic()
        while True:
            await trio.sleep(self.poll_interval)
            started = self.daemon_started()
            if started is None or started <= self.frozen_at:
                continue
            try:
                present = {v.name for v in await self.dp.ports()}
            except OSError:  # the new daemon is not serving its control socket yet
                continue
            now = time.monotonic()
            if first_answer is None:
                first_answer = now
                self.stats.daemon_seen_after_s = round(now - t0, 3)
            if not wanted <= present and now - first_answer < PORTS_WAIT:
                continue
            try:
                report = await restore(self.dp, self.snapshot)  # idempotent: present flows are skipped
            except OSError as exc:  # the daemon went away (a crash loop): wait for the next one
                LOG.warning(kv("restorer.retry", error=str(exc)))
                first_answer = None
                continue
            self._record(report, time.monotonic() - first_answer)
            self.done.set()
            return

    def _record(self, report: RestoreReport, seconds: float) -> None:
        self.stats.restored_after_s = round(seconds, 3)
        self.stats.report = report.lines()
        self.stats.flows_restored = report.flows_added
        self.stats.failures = len(report.failures)
        LOG.info(kv("restorer.restored", flows=report.flows_added, failures=len(report.failures),
                    renumbered=len(report.ports_renumbered), seconds=self.stats.restored_after_s))
