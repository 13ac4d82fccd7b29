"""`dpfreeze lab up|down`: throwaway OVS topologies for demos and tests."""

from __future__ import annotations

import argparse
import json
from typing import Any

from dpfreeze.errors import UserError
from dpfreeze.lab.sandbox import SandboxError
from dpfreeze.lab.topology import TUNNEL_TYPES, asdict, lab_down, lab_up, state_path


def _vlan(text: str) -> tuple[int, int]:
    try:
        i, tag = text.split("=")
        return int(i), int(tag)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAMESPACE_INDEX=TAG, got {text!r}") from None


def add_commands(sub: Any) -> None:
    p = sub.add_parser("lab", help="throwaway OVS topologies for demos and tests")
    lab_sub = p.add_subparsers(dest="lab_command", metavar="ACTION", required=True)
    up = lab_sub.add_parser("up", help="create a private OVS, bridge(s) and namespaces on veth ports")
    up.add_argument("--name", default="lab", help="lab name (state file <lab dir>/<name>.json)")
    up.add_argument("--datapath", choices=("system", "netdev"), default="netdev",
                    help="kernel datapath (needs openvswitch.ko) or userspace (default)")
    up.add_argument("--namespaces", type=int, default=2, metavar="K", help="number of namespaces (default 2)")
    up.add_argument("--vlan", type=_vlan, action="append", default=[], metavar="I=TAG",
                    help="make namespace I's port an access port of VLAN TAG (repeatable)")
    up.add_argument("--tunnel", choices=TUNNEL_TYPES, help="two bridges joined by a tunnel (kernel only)")
    up.add_argument("--json", action="store_true", help="print the lab state as JSON")
    up.set_defaults(handler=_up)
    down = lab_sub.add_parser("down", help="remove everything the lab created")
    down.add_argument("--name", default="lab")
    down.set_defaults(handler=_down)


async def _up(args: argparse.Namespace) -> int:
    try:
        st = await lab_up(args.name, datapath=args.datapath, namespaces=args.namespaces,
                          vlans=dict(args.vlan), tunnel=args.tunnel)
    except SandboxError as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print(json.dumps(asdict(st), indent=2))
        return 0
    print(f"lab {st.name}: {st.datapath} datapath, bridges {' '.join(st.bridges)}, "
          f"state {state_path(st.name)}")
    for p in st.ports:
        tag = st.vlans.get(p["port"])
        print(f"  {p['netns']}:{p['ifname']}  {p['ipv4']}  {p['ipv6']}  {p['mac']}  -> {p['bridge']} port "
              f"{p['port']}" + (f" vlan {tag}" if tag else ""))
    where = f" (daemons in netns {st.switch_ns})" if st.switch_ns else ""
    print(f"OVS tools: export OVS_RUNDIR={st.env['rundir']}{where}")
    return 0


async def _down(args: argparse.Namespace) -> int:
    try:
        left = await lab_down(args.name)
    except SandboxError as exc:
        raise UserError(str(exc)) from None
    if left:
        raise UserError(f"lab {args.name}: could not remove {' '.join(left)}")
    return 0
