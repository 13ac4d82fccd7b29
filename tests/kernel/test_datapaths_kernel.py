"""A host with a kernel datapath, and one with kernel and userspace bridges in the same daemon (in the VM)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import trio

from dpfreeze.cli import snapshot as snapshot_cli
from dpfreeze.lab.sandbox import Sandbox
from dpfreeze.ovs import datapaths
from dpfreeze.snapshot import Snapshot

pytestmark = pytest.mark.kernel


async def test_auto_is_the_kernel_datapath_until_a_userspace_bridge_joins_it(
    ovs: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in ovs.env.environ().items():
        monkeypatch.setenv(k, v)
    assert await datapaths.resolve("auto", ovs.env) == "ovs-system"
    a, b = ovs.ports
    await ovs.ping(a, b)
    if not Path("/dev/net/tun").exists():  # the userspace datapath's own port is a tap device
        await trio.run_process(["modprobe", "tun"])
    await ovs.vsctl("add-br", f"{ovs.prefix}nd", "--", "set", "Bridge", f"{ovs.prefix}nd",
                    "datapath_type=netdev")
    assert sorted(await datapaths.all_names(ovs.env)) == ["netdev@ovs-netdev", "ovs-system"]
    with pytest.raises(datapaths.NoDatapath, match="several datapaths"):
        await datapaths.resolve("auto", ovs.env)
    # `snapshot save` with no -d takes both, each through its own provider.
    path = tmp_path / "both.snap"
    args = argparse.Namespace(datapath=None, file=str(path), no_openflow=True)
    assert await snapshot_cli.cmd_save(args) == 0
    snap = Snapshot.load(path)
    kernel, user = snap.datapath("ovs-system"), snap.datapath("netdev@ovs-netdev")
    assert kernel.info.ifindex > 0 and len(kernel.flows) > 0
    assert user.info.ifindex == 0 and {v.name for v in user.vports} == {"ovs-netdev", f"{ovs.prefix}nd"}
