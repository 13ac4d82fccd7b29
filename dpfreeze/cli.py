"""The `dpfreeze` command line: a thin dispatcher.

Each feature module registers its own sub-commands through `add_commands(subparsers)`; a handler is a
plain function `(args) -> int` (or a coroutine function, run under trio).  Errors that an operator can act
on become one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from collections.abc import Sequence

import trio

from dpif.netlink.wire import KernelError, WireError

# Modules that contribute sub-commands, in help order.  Each defines add_commands(subparsers).
COMMAND_MODULES: tuple[str, ...] = (
    "dpif.dpctl",
    "dpif.bench",
    "dpfreeze.freeze_cli",
    "dpfreeze.snapshot_cli",
    "dpfreeze.probe.cli",
    "dpfreeze.lab",
    "dpfreeze.bench_upgrade",
    "dpfreeze.demo",
)


class UserError(Exception):
    """A refused command: printed as one line, exit status 1; nothing was changed."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dpfreeze", description="Hitless Open vSwitch upgrades.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (repeatable)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from dpfreeze.log import setup_logging

    setup_logging(args.verbose)
    handler = args.handler
    try:
        result = trio.run(handler, args) if inspect.iscoroutinefunction(handler) else handler(args)
    except (UserError, KernelError, WireError, OSError) as exc:
        print(f"dpfreeze: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
