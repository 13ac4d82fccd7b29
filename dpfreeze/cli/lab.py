"""`dpfreeze lab up|down`: throwaway OVS topologies for demos and tests."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
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
    faults = lab_sub.add_parser(
        "faults", help="the never-worse-than-stock rule, fault by fault, under the probes (root, kernel "
        "datapath: a throwaway VM; it kills daemons and unloads the module)")
    faults.add_argument("--out", type=Path, default=Path("faults-out"), help="faults.json, faults.md, logs")
    faults.add_argument("--only", action="append", default=[], metavar="TEXT",
                        help="only the cells whose fault or phase contains TEXT (repeatable)")
    faults.add_argument("--doc", type=Path, metavar="MD",
                        help="also put the table into MD between its fault-matrix markers")
    faults.add_argument("--render", type=Path, metavar="JSON",
                        help="run nothing: the table of an earlier run's faults.json (with --doc: into MD)")
    faults.set_defaults(handler=_faults)
    soak = lab_sub.add_parser("soak", help="N upgrades in a row under the probes: what leaks, what is lost "
                              "(root, kernel datapath: a throwaway VM)")
    soak.add_argument("--upgrades", type=int, default=50, metavar="N", help="how many (default 50)")
    soak.add_argument("--out", type=Path, default=Path("soak-out"), help="soak.json, soak.md, logs")
    soak.add_argument("--doc", type=Path, metavar="MD", help="also put the table into MD between its soak "
                      "markers")
    soak.set_defaults(handler=_soak)


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


async def _faults(args: argparse.Namespace) -> int:
    from dpfreeze.lab import faults

    if args.render:
        try:
            matrix = faults.Matrix.from_json(args.render.read_text())
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{args.render}: not a faults.json: {exc}") from None
    else:
        try:
            matrix = await faults.run_matrix(args.out, args.only)
        except SandboxError as exc:
            raise UserError(str(exc)) from None
    table = faults.markdown(matrix)
    if args.doc:
        try:
            faults.update_doc(args.doc, table)
        except (OSError, ValueError) as exc:
            raise UserError(str(exc)) from None
    print(table, end="")
    return 0 if all(r.held for r in matrix.results) else 1


async def _soak(args: argparse.Namespace) -> int:
    from dpfreeze.lab import faults, soak

    if args.upgrades < 1:
        raise UserError("--upgrades: at least 1")
    try:
        result = await soak.run_soak(args.out, args.upgrades)
    except SandboxError as exc:
        raise UserError(str(exc)) from None
    table = result.markdown()
    if args.doc:
        try:
            faults.update_doc(args.doc, table, soak.MARKERS)
        except (OSError, ValueError) as exc:
            raise UserError(str(exc)) from None
    print(table, end="")
    return 0 if result.verdict()[0] else 1


async def _down(args: argparse.Namespace) -> int:
    try:
        left = await lab_down(args.name)
    except SandboxError as exc:
        raise UserError(str(exc)) from None
    if left:
        raise UserError(f"lab {args.name}: could not remove {' '.join(left)}")
    return 0
