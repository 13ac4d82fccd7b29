"""`dpfreeze install-units [--uninstall]`: dpfreeze's systemd units in place, in one step."""

from __future__ import annotations

import argparse
from pathlib import Path

from dpfreeze import units


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("install-units", help="install (or --uninstall) dpfreeze.service and the ovs-vswitchd "
                       "drop-in, verified, loaded and enabled")
    p.add_argument("--uninstall", action="store_true", help="stop, disable and remove them; leaves nothing")
    p.add_argument("--root", type=Path, default=Path("/"),
                   help="install under this directory instead (an image or package staging); no systemctl")
    p.add_argument("--no-enable", action="store_true",
                   help="write and verify only: no daemon-reload, no enable")
    p.set_defaults(handler=cmd_install_units)


async def cmd_install_units(args: argparse.Namespace) -> int:
    plan = units.Plan(args.root, units.this_executable())
    if args.uninstall:
        lines = await units.uninstall(plan, activate=not args.no_enable)
    else:
        lines = await units.install(plan, activate=not args.no_enable)
    print("\n".join(lines))
    return 0
