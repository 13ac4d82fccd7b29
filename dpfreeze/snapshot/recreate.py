"""A snapshot's kernel datapath made again from nothing: after a module reload (`kmod`), a datapath deleted
or a module unloaded under a freeze (the service), or by hand (`dpfreeze snapshot restore`)."""

from __future__ import annotations

import errno
import logging

from dpfreeze.log import kv
from dpfreeze.snapshot import DatapathSnapshot, RestoreReport, Snapshot, restore
from dpif.model import VportType
from dpif.netlink.wire import KernelError
from dpif.netlink_datapath import create_datapath, list_datapaths, open_datapath

LOG = logging.getLogger(__name__)


async def open_or_create(dsnap: DatapathSnapshot) -> bool:
    """Create the datapath (with the snapshot's features) when the kernel has none by that name."""
    if dsnap.name in {d.name for d in await list_datapaths()}:
        return False
    local = next((v for v in dsnap.vports if v.port_no == 0 and v.type == VportType.INTERNAL), None)
    pid = local.upcall_pids[0] if local and local.upcall_pids else 0
    features = dsnap.info.features
    try:
        await create_datapath(dsnap.name, features=features, upcall_pid=pid, ifindex=dsnap.info.ifindex)
    except KernelError as exc:
        if exc.code not in (errno.EBUSY, errno.EEXIST):
            raise
        LOG.warning(kv("snapshot.ifindex_taken", datapath=dsnap.name, ifindex=dsnap.info.ifindex))
        await create_datapath(dsnap.name, features=features, upcall_pid=pid)
    return True


async def restore_all(snap: Snapshot) -> list[RestoreReport]:
    """Every datapath of the snapshot, created where missing, its vports and flows put back with their
    numbers."""
    reports = []
    for dsnap in snap.datapaths:
        await open_or_create(dsnap)
        async with open_datapath(dsnap.name) as dp:
            reports.append(await restore(dp, snap))
    return reports
