"""The OpenFlow checkpoint: every bridge's OpenFlow state kept current while nothing is frozen.

Why: after a crash nobody can ask the dead daemon for its tables, and the next one starts with none; the
crash guard's freeze takes them from here, and the thaw gives them to the new daemon as an upgrade does.

Driven by the flow monitor (`ovs-ofctl monitor BRIDGE watch:`, NXST_FLOW_MONITOR): a bridge is dumped again
only after it reported a change, at most once per `interval`, never while a freeze is active (the daemon
being started then has not been given its tables yet).  Groups, meters, the TLV map and port flags come with
each dump.  Kept in memory, and written atomically beside the state file for a service that restarts.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import trio

from dpfreeze import files
from dpfreeze.log import kv
from dpfreeze.ovs import openflow, ovsdb
from dpfreeze.ovs.openflow import BridgeOpenFlow
from dpfreeze.ovs.ovsenv import OvsEnv

LOG = logging.getLogger(__name__)

INTERVAL = 2.0  # at most one dump per bridge per this many seconds
RETRY = 2.0  # no daemon, no database: look again this much later
BRIDGES_EVERY = 10.0  # bridges added or removed are noticed within this


class Changes:
    """A bridge reported changes not dumped yet (set at first: the first dump)."""

    def __init__(self) -> None:
        self._event = trio.Event()
        self._event.set()

    def mark(self) -> None:
        self._event.set()

    async def take(self) -> None:
        """Wait for changes; those reported from now on make the next ones."""
        await self._event.wait()
        self._event = trio.Event()


class Checkpoint:
    def __init__(self, env: OvsEnv, path: Path, paused: Callable[[], bool],
                 interval: float = INTERVAL) -> None:
        self.env, self.path, self.paused, self.interval = env, path, paused, interval
        self.bridges: dict[str, BridgeOpenFlow] = {}
        self.dumps = 0
        try:
            doc = json.loads(path.read_text())
            self.bridges = {b["bridge"]: BridgeOpenFlow.from_json(b) for b in doc["bridges"]}
        except (OSError, ValueError, KeyError, TypeError):
            pass  # none yet, or unreadable: the first dumps make a new one

    def state(self) -> tuple[BridgeOpenFlow, ...]:
        return tuple(self.bridges[b] for b in sorted(self.bridges))

    async def run(self) -> None:
        """Follow the bridges OVSDB lists, re-reading the list every BRIDGES_EVERY seconds."""
        while True:
            try:
                bridges = await ovsdb.bridge_protocols(self.env, 10)
            except ovsdb.OvsdbError:
                await trio.sleep(RETRY)
                continue
            async with trio.open_nursery() as nursery:
                for bridge, protos in bridges.items():
                    nursery.start_soon(self._follow, bridge, protos)
                while True:
                    await trio.sleep(BRIDGES_EVERY)
                    try:
                        if set(await ovsdb.bridge_protocols(self.env, 10)) != set(bridges):
                            break
                    except ovsdb.OvsdbError:
                        pass
                nursery.cancel_scope.cancel()
            for gone in set(self.bridges) - set(bridges):
                del self.bridges[gone]

    async def _follow(self, bridge: str, protos: list[str]) -> None:
        """One bridge's monitor; it ends with its daemon, and is opened again on the next one."""
        while True:
            changed = Changes()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._dumps, bridge, protos, changed, nursery.cancel_scope)
                try:
                    proc = await trio.lowlevel.open_process(
                        ["ovs-ofctl", "monitor", bridge, "watch:"], stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE, env={**os.environ, **self.env.environ()})
                except OSError as exc:
                    LOG.warning(kv("checkpoint.no_monitor", bridge=bridge, error=str(exc)))
                    return
                try:
                    assert proc.stderr is not None
                    async for _ in proc.stderr:  # where ovs-ofctl prints (and flushes) what it receives
                        changed.mark()
                finally:
                    with trio.CancelScope(shield=True):
                        proc.kill()
                        await proc.wait()
                nursery.cancel_scope.cancel()
            await trio.sleep(RETRY)

    async def _dumps(self, bridge: str, protos: list[str], changed: Changes, scope: trio.CancelScope) -> None:
        while True:
            await changed.take()
            while self.paused():
                await trio.sleep(self.interval)
            try:
                self.bridges[bridge] = await openflow.save_bridge(bridge, self.env, 10, protos)
            except openflow.OpenFlowError as exc:  # the daemon went away: its monitor ends too
                LOG.info(kv("checkpoint.dump_failed", bridge=bridge, error=str(exc)))
                scope.cancel()
                return
            self.dumps += 1
            self._write()
            await trio.sleep(self.interval)

    def _write(self) -> None:
        doc = {"bridges": [b.to_json() for b in self.state()]}
        try:
            files.write_atomic(self.path, (json.dumps(doc, indent=1) + "\n").encode())
        except OSError as exc:  # a full disk: the copy in memory still serves
            LOG.warning(kv("checkpoint.not_saved", error=str(exc)))
