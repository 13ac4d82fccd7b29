"""Which provider serves a datapath name, found the way OVS's tools find the daemon.

"netdev@NAME" is a userspace datapath, reached through the running ovs-vswitchd's control socket
(`ovsenv`); any other name ("ovs-system", "system@ovs-system") is a kernel datapath.  The rest of dpfreeze
holds the `Datapath` it is given and never asks which one it is.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager, suppress

from dpfreeze.ovs import ovsenv
from dpfreeze.ovs.ovsenv import OvsEnv
from dpif.model import Datapath
from dpif.netdev_datapath import is_netdev_name, list_netdev_datapaths, open_netdev_datapath
from dpif.netlink.exchange import FamilyNotFound
from dpif.netlink_datapath import list_datapaths, open_datapath
from dpif.unixctl import UnixctlUnreachable

AUTO = "auto"
KERNEL_DEFAULT = "ovs-system"  # the one kernel datapath ovs-vswitchd makes (it deletes any other at start)


class NoDatapath(Exception):
    """`auto` found no datapath, or more than one: one line saying which."""


def open_any(name: str, env: OvsEnv | None = None) -> AbstractAsyncContextManager[Datapath]:
    if is_netdev_name(name):
        e = env or ovsenv.current()
        return open_netdev_datapath(name, lambda: e.unixctl(ovsenv.VSWITCHD))
    return open_datapath(name.removeprefix("system@"))


async def all_names(env: OvsEnv | None = None) -> list[str]:
    """The kernel's datapaths (if the module is loaded), then the running daemon's userspace ones."""
    names: list[str] = []
    with suppress(FamilyNotFound):
        names += [d.name for d in await list_datapaths()]
    e = env or ovsenv.current()
    with suppress(ovsenv.DaemonNotRunning, UnixctlUnreachable):
        names += await list_netdev_datapaths(lambda: e.unixctl(ovsenv.VSWITCHD))
    return names


async def resolve(name: str, env: OvsEnv | None = None) -> str:
    """A `--datapath` argument: `auto` is ovs-vswitchd's datapath, kernel or userspace, when it has one;
    any other name is taken as given.  A host with both (kernel and userspace bridges) must say which."""
    if name != AUTO:
        return name
    found = [n for n in await all_names(env) if n == KERNEL_DEFAULT or is_netdev_name(n)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise NoDatapath(f"no datapath to freeze: no kernel {KERNEL_DEFAULT} and no userspace datapath in a "
                         "running ovs-vswitchd (is it running?)")
    raise NoDatapath(f"several datapaths ({', '.join(found)}): pass --datapath")
