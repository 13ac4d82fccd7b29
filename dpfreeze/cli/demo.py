"""`dpfreeze demo`: the main job (lab, probes, hitless upgrade, continuity report), in the VM."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dpfreeze.errors import UserError
from dpfreeze.lab.bench_upgrade import need_kernel_datapath
from dpfreeze.lab.demo import demo
from dpfreeze.lab.sandbox import SandboxError


def add_commands(sub: Any) -> None:
    p = sub.add_parser("demo",
                       help="the main job: lab, probes, hitless upgrade, continuity report (in the VM)")
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="report directory (default demo-out)")
    p.add_argument("--host-out", metavar="DIR",
                   help="what --out is called outside the VM (only for the printed paths)")
    p.set_defaults(handler=cmd_demo)


async def cmd_demo(args: argparse.Namespace) -> int:
    need_kernel_datapath("demo")
    try:
        _, hitless, paths = await demo(args.out)
    except SandboxError as exc:
        raise UserError(f"the lab failed: {exc}") from None
    print(paths["text"].read_text())
    shown = Path(args.host_out) if args.host_out else args.out
    for what, path in paths.items():
        print(f"{what:8} {shown / path.relative_to(args.out)}")
    return 0 if hitless else 1  # the verdict is the exit status: a script can trust it
