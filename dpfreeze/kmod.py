"""Reload the openvswitch kernel module under a frozen datapath: what `ovs-ctl force-reload-kmod` does to the
module (every datapath deleted, the vport modules and openvswitch removed, loaded again), with the
snapshot put back into the new module before any daemon starts.

Why restore before the daemon: a stock reload lets the new daemon re-add the ports in its own order, so
odp port numbers change and every flow is relearned (research/restart-measurements.md); re-creating the
datapath, the vports with their old numbers and the flows first means traffic resumes as soon as the
module is back, and the new daemon, started with flow-restore-wait, adopts what it finds.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from contextlib import suppress
from pathlib import Path

from dpfreeze import command
from dpfreeze.command import CommandFailed
from dpfreeze.errors import DpfreezeError
from dpfreeze.log import kv
from dpfreeze.snapshot import RestoreReport, Snapshot
from dpfreeze.snapshot.recreate import restore_all
from dpif.netlink_datapath import delete_datapath, list_datapaths

LOG = logging.getLogger(__name__)
MODULE = "openvswitch"


class ReloadError(DpfreezeError):
    """The module could not be reloaded, or would take state with it that no snapshot holds."""


def dependents(modules_text: str, module: str = MODULE) -> list[str]:
    """The modules that use `module` (its "used by" column in /proc/modules), to be removed first."""
    for line in modules_text.splitlines():
        cols = line.split()
        if len(cols) >= 4 and cols[0] == module:
            return [m for m in cols[3].split(",") if m and m != "-"]
    return []


async def _run(*argv: str) -> None:
    try:
        await command.run(argv, timeout=60)
    except CommandFailed as exc:
        raise ReloadError(f"{' '.join(argv)}: {exc.why}") from None


async def check_reloadable(snapshotted: Collection[str]) -> None:
    """Refuse before anything changes: a datapath the snapshot lacks would be lost with the module."""
    missing = sorted({d.name for d in await list_datapaths()} - set(snapshotted))
    if missing:
        raise ReloadError(f"reloading {MODULE} would delete datapath(s) {', '.join(missing)}, which the "
                          "freeze did not snapshot")


async def reload_and_restore(snapshot_path: str | Path, proc: Path = Path("/proc")) -> list[RestoreReport]:
    """Delete every datapath, reload the module (and the vport modules that used it), restore them all."""
    snap = Snapshot.load(snapshot_path)
    await check_reloadable([d.name for d in snap.datapaths])
    for d in await list_datapaths():
        await delete_datapath(d.name)
    users = dependents((proc / "modules").read_text())
    try:
        for m in [*users, MODULE]:
            await _run("rmmod", m)
        for m in [MODULE, *reversed(users)]:
            await _run("modprobe", m)
    except ReloadError as exc:
        # Whatever state the failure left the module in, the datapaths come back before it is reported: a
        # failed reload never leaves the host without them.
        for m in [MODULE, *reversed(users)]:
            with suppress(ReloadError):
                await _run("modprobe", m)
        try:
            await restore_all(snap)
        except Exception as again:
            raise ReloadError(f"{exc}; restoring the snapshot after it failed too: {again}") from None
        raise ReloadError(f"{exc} (the module was loaded again and the snapshot restored)") from None
    LOG.info(kv("kmod.reloaded", module=MODULE, with_modules=",".join(users) or "-"))
    return await restore_all(snap)
