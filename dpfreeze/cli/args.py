"""Options the service's commands share, kept apart so that a command that must start fast (`upgrade`)
parses them without importing the service."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from dpfreeze.freeze import defaults

DATAPATH_HELP = ("ovs-system (kernel), netdev@ovs-netdev (userspace, in ovs-vswitchd), or auto: the daemon's "
                 "one datapath (default)")


def common(p: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    p.add_argument("--socket", default=str(defaults.DEFAULT_SOCKET),
                   help="control socket (env DPFREEZE_SOCKET)")
    p.add_argument(
        "--state-dir",
        default=str(defaults.DEFAULT_STATE_DIR),
        help="state file and freeze snapshot directory (env DPFREEZE_STATE_DIR)",
    )
    if json_flag:
        p.add_argument("--json", action="store_true", help="machine-readable output")


def seconds(maximum: float) -> Callable[[str], float]:
    """An argparse type: a number of seconds in (0, maximum], refused at parse time (nothing changed)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
        if not 0 < value <= maximum:  # also refuses nan
            raise argparse.ArgumentTypeError(f"must be more than 0 and at most {maximum:g} seconds, "
                                             f"got {text}")
        return value

    return parse


def ttl_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ttl",
        type=seconds(defaults.MAX_TTL),
        default=defaults.DEFAULT_TTL,
        help=f"lease in seconds: expiry thaws (default {defaults.DEFAULT_TTL:g})",
    )
