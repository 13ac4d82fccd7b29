"""`dpfreeze demo`: the main job (a package upgrade of OVS under systemd, stock and with dpfreeze, under the
probes), in the test VM booted with systemd."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dpfreeze.command import CommandFailed
from dpfreeze.errors import UserError
from dpfreeze.lab.bench_upgrade import need_kernel_datapath
from dpfreeze.lab.demo import demo


def add_commands(sub: Any) -> None:
    p = sub.add_parser("demo", help="the main job: OVS upgraded by dpkg under systemd, stock and with "
                                    "dpfreeze, under the probes (in a throwaway VM: it replaces packages)")
    p.add_argument("--old-debs", type=Path, nargs="+", required=True, metavar="DEB",
                   help="the older OVS's .deb files, in dpkg's order (put back before each run)")
    p.add_argument("--new-debs", type=Path, nargs="+", required=True, metavar="DEB",
                   help="the installed OVS's .deb files, in dpkg's order (the upgrade measured)")
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="report directory (default demo-out)")
    p.add_argument("--host-out", metavar="DIR",
                   help="what --out is called outside the VM (only for the printed paths)")
    p.set_defaults(handler=cmd_demo)


async def cmd_demo(args: argparse.Namespace) -> int:
    need_kernel_datapath("demo")
    missing = [str(p) for p in [*args.old_debs, *args.new_debs] if not p.is_file()]
    if missing:
        raise UserError(f"no such package file: {', '.join(missing)}")
    try:
        hitless, res = await demo(args.out, args.old_debs, args.new_debs,
                                  progress=lambda line: print(line, file=sys.stderr, flush=True))
    except CommandFailed as exc:
        raise UserError(f"the demo failed: {exc}") from None
    print(res.paths["text"].read_text())
    shown = Path(args.host_out) if args.host_out else args.out
    for what, path in res.paths.items():
        print(f"{what:14} {shown / path.relative_to(args.out)}")
    return 0 if hitless else 1  # the verdict is the exit status: a script can trust it
