"""`dpfreeze lab up | down`: a throwaway topology for demos and tests, built on `dpfreeze.lab.sandbox`.

A lab outlives the command that made it, so what it creates is written to a state file *before* each step
(`$DPFREEZE_LAB_DIR/<name>.json`, default /run/dpfreeze/lab).  `down` reads it, tears the sandbox down and
then sweeps every namespace and link carrying the lab's unique name prefix, so even a lab whose `up`
crashed half-way goes away completely.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trio

from dpfreeze.errors import UserError
from dpfreeze.lab.sandbox import NsPort, Sandbox, run
from dpfreeze.ovs.ovsenv import OvsEnv
from dpfreeze.probe import Endpoint

TUNNEL_TYPES = ("vxlan", "geneve")
UNDERLAY = ("172.31.254.1", "172.31.254.2")  # the two tunnel endpoints, on a veth pair in the switch netns
TUNNEL_KEY = 4242
# The userspace datapath moves frames through AF_PACKET, which never completes a checksum that the
# sending namespace left to "hardware": without this, TCP through a netdev bridge is silently dropped.
_TX_CSUM_OFF = ("from pyroute2.ethtool.ethtool import Ethtool; import sys; "
                "Ethtool().set_offload_flag(sys.argv[1], 'tx-checksumming', 0)")


def lab_dir() -> Path:
    return Path(os.environ.get("DPFREEZE_LAB_DIR") or "/run/dpfreeze/lab")


@dataclass
class LabState:
    """Everything `down` needs, saved before each step of `up`."""

    name: str
    prefix: str
    datapath: str
    base: str
    switch_ns: str | None
    env: dict[str, str]
    bridges: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    ports: list[dict[str, Any]] = field(default_factory=list)
    vlans: dict[str, int] = field(default_factory=dict)  # OVS port -> access tag
    tunnel: str | None = None
    links: list[str] = field(default_factory=list)  # extra links in the switch netns (tunnel underlay)

    def save(self) -> Path:
        path = state_path(self.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)
        return path

    def sandbox(self) -> Sandbox:
        env = OvsEnv(**{k: Path(v) for k, v in self.env.items()})
        return Sandbox(Path(self.base), self.prefix, self.datapath, self.switch_ns, env, list(self.bridges),
                       [NsPort(**p) for p in self.ports], list(self.namespaces))

    def endpoints(self) -> list[Endpoint]:
        """The lab's namespaces as probe endpoints."""
        return [Endpoint(p["ifname"], p["netns"], p["mac"], p["ipv4"], p["ipv6"]) for p in self.ports]


def state_path(name: str) -> Path:
    if not name or "/" in name or name.startswith("."):
        raise UserError(f"bad lab name {name!r}")
    return lab_dir() / f"{name}.json"


def load(name: str) -> LabState:
    path = state_path(name)
    try:
        return LabState(**json.loads(path.read_text()))
    except FileNotFoundError:
        raise UserError(f"no lab {name!r} ({path} does not exist)") from None


async def tx_checksum_off(netns: str, iface: str) -> None:
    await run(["ip", "netns", "exec", netns, sys.executable, "-c", _TX_CSUM_OFF, iface])


async def lab_up(name: str = "lab", *, datapath: str = "netdev", namespaces: int = 2,
                 vlans: dict[int, int] | None = None, tunnel: str | None = None) -> LabState:
    """Create the lab; on any failure remove what was made and raise."""
    vlans = vlans or {}
    if datapath not in ("system", "netdev"):
        raise UserError(f"unknown datapath {datapath!r}: system or netdev")
    if not 1 <= namespaces <= 64:
        raise UserError("--namespaces must be 1..64")
    if bad := [i for i in vlans if not 1 <= i <= namespaces]:
        raise UserError(f"--vlan names namespace {bad[0]}, but there are {namespaces}")
    if bad_tags := [t for t in vlans.values() if not 1 <= t <= 4094]:
        raise UserError(f"VLAN tag {bad_tags[0]} is not in 1..4094")
    if tunnel is not None and tunnel not in TUNNEL_TYPES:
        raise UserError(f"unknown tunnel {tunnel!r}: vxlan or geneve")
    if tunnel and datapath != "system":
        raise UserError("a tunnel lab needs --datapath system (the kernel datapath, in the test VM)")
    if tunnel and namespaces < 2:
        raise UserError("a tunnel lab needs at least 2 namespaces (one each side)")
    if state_path(name).exists():
        raise UserError(f"lab {name!r} already exists ({state_path(name)}): run `dpfreeze lab down` first")
    if datapath == "system" and not await _kernel_datapath():
        raise UserError("no openvswitch kernel module here: use --datapath netdev (or run in the test VM)")

    prefix = "lb" + secrets.token_hex(2)
    base = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir="/tmp"))
    here = OvsEnv.from_environ()
    env = OvsEnv(base / "run", base / "db", base / "log", base / "etc", here.pkgdatadir, here.bindir)
    switch_ns = f"{prefix}sw" if datapath == "netdev" else None
    st = LabState(name, prefix, datapath, str(base), switch_ns, {k: str(v) for k, v in asdict(env).items()},
                  tunnel=tunnel)
    st.save()
    sb = st.sandbox()
    try:
        if switch_ns:
            await run(["ip", "netns", "add", switch_ns])
            await run(["ip", "-n", switch_ns, "link", "set", "lo", "up"])
        await sb.start_ovsdb()
        await sb.start_vswitchd()
        nbr = 2 if tunnel else 1
        for _ in range(nbr):
            st.bridges.append(f"{prefix}br{len(st.bridges)}")
            st.save()
            await sb.add_bridge(st.bridges[-1])
        for i in range(1, namespaces + 1):
            st.namespaces.append(f"{prefix}n{i}")
            st.save()
            bridge = st.bridges[0] if not tunnel or i <= (namespaces + 1) // 2 else st.bridges[1]
            p = await sb.add_ns_port(bridge, i)
            st.ports.append(asdict(p))
            st.save()
            if datapath == "netdev":
                await tx_checksum_off(p.netns, p.ifname)
            if i in vlans:
                await sb.vsctl("set", "Port", p.port, f"tag={vlans[i]}")
                st.vlans[p.port] = vlans[i]
                st.save()
        if tunnel:
            await _tunnel(st, sb, tunnel)
        return st
    except BaseException:
        with trio.CancelScope(shield=True):
            await lab_down(name)
        raise


async def _kernel_datapath() -> bool:
    await run(["modprobe", "openvswitch"], check=False)
    return Path("/sys/module/openvswitch").exists()


async def _tunnel(st: LabState, sb: Sandbox, kind: str) -> None:
    """Join the two bridges: an underlay veth pair carries the encapsulated frames between two local IPs."""
    # The datapath asks the kernel to load the tunnel vport module on demand, which fails where there is
    # no usermode modprobe helper (the test VM's busybox init): load it here; already loaded is fine.
    await run(["modprobe", f"vport_{kind}"], check=False)
    u0, u1 = f"{st.prefix}u0", f"{st.prefix}u1"
    st.links += [u0, u1]
    st.save()
    await sb.run("ip", "link", "add", u0, "type", "veth", "peer", "name", u1)
    for dev, ip in ((u0, UNDERLAY[0]), (u1, UNDERLAY[1])):
        await sb.run("ip", "addr", "add", f"{ip}/32", "dev", dev)
        await sb.run("ip", "link", "set", dev, "up")
    for k, br in enumerate(st.bridges):
        local, remote = UNDERLAY[k], UNDERLAY[1 - k]
        port = f"{st.prefix}t{k}"
        await sb.vsctl("add-port", br, port, "--", "set", "Interface", port, f"type={kind}",
                       f"options:remote_ip={remote}", f"options:local_ip={local}",
                       f"options:key={TUNNEL_KEY}")


async def lab_down(name: str = "lab") -> list[str]:
    """Remove the lab completely; returns what is still left (empty on success)."""
    st = load(name)
    await st.sandbox().close()
    for ns in await _netns_with(st.prefix):
        await run(["ip", "netns", "del", ns], check=False)
    for link in await _links_with(st.prefix, None):
        await run(["ip", "link", "del", link], check=False)
    left = [*await _netns_with(st.prefix), *await _links_with(st.prefix, None)]
    if not left:
        state_path(name).unlink(missing_ok=True)
    return left


async def _netns_with(prefix: str) -> list[str]:
    out = (await run(["ip", "netns", "list"])).stdout.decode()
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]


async def _links_with(prefix: str, netns: str | None) -> list[str]:
    argv = ["ip", *(["-n", netns] if netns else []), "-j", "link", "show"]
    links = json.loads((await run(argv)).stdout or b"[]")
    return [lk["ifname"] for lk in links if lk["ifname"].startswith(prefix)]
