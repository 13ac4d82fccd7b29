"""The `dpfreeze` command line: a thin dispatcher.

Each feature module registers its own sub-commands through `add_commands(subparsers)`; a handler is a
plain function `(args) -> int` or a coroutine function, run under trio (imported only then: the one-shot
`dpctl` commands start without it).  Errors that an operator can act on become one line on stderr and a
non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import sys
from collections.abc import Sequence

from dpfreeze.errors import DpfreezeError

# Which modules define each top-level command (each module has add_commands(subparsers)).  Only the
# modules of the command being run are imported: under qemu TCG every import costs seconds.
COMMANDS: dict[str, tuple[str, ...]] = {
    "dpctl": ("dpfreeze.cli.dpctl",),
    "bench": ("dpfreeze.cli.bench",),
    **dict.fromkeys(("serve", "freeze", "renew", "status"), ("dpfreeze.cli.freeze",)),
    **dict.fromkeys(("preflight", "thaw"), ("dpfreeze.cli.hooks",)),
    "upgrade": ("dpfreeze.cli.upgrade",),
    "snapshot": ("dpfreeze.cli.snapshot",),
    "install-units": ("dpfreeze.cli.units",),
    "probe": ("dpfreeze.cli.probe",),
    "lab": ("dpfreeze.cli.lab",),
    "demo": ("dpfreeze.cli.demo",),
}
COMMAND_MODULES: tuple[str, ...] = tuple(dict.fromkeys(m for mods in COMMANDS.values() for m in mods))


def build_parser(modules: Sequence[str] = COMMAND_MODULES) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dpfreeze", description="Hitless Open vSwitch upgrades.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (repeatable)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in modules:
        importlib.import_module(name).add_commands(sub)
    return parser


def modules_for(argv: Sequence[str]) -> tuple[str, ...]:
    """The modules needed to parse `argv`: those of its command, or all of them (help, typos)."""
    command = next((a for a in argv if not a.startswith("-")), None)
    return COMMANDS.get(command or "", COMMAND_MODULES)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(modules_for(argv)).parse_args(argv)
    from dpfreeze.log import setup_logging

    setup_logging(args.verbose)
    handler = args.handler
    try:
        if inspect.iscoroutinefunction(handler):
            import trio

            if before := getattr(args, "before_trio", None):  # e.g. a fork, which trio must not see
                before(args)
            result = trio.run(handler, args)
        else:
            result = handler(args)
    except BaseException as exc:  # every failure is one line for the operator; -v logs the traceback
        if isinstance(exc, SystemExit):
            raise
        if interrupted(exc):
            print("dpfreeze: interrupted", file=sys.stderr)
            return 130
        print(f"dpfreeze: error: {one_line(exc)}", file=sys.stderr)
        logging.getLogger("dpfreeze").debug("traceback", exc_info=exc)
        return 1
    return int(result or 0)


def interrupted(exc: BaseException) -> bool:
    """Ctrl-C, alone or inside the exception group of a nursery it cancelled."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(lambda e: isinstance(e, KeyboardInterrupt)) is not None
    return isinstance(exc, KeyboardInterrupt)


def one_line(exc: BaseException) -> str:
    """What the operator reads: an expected error's own message; anything else named by its type; a group
    (nurseries wrap their children's errors) as its members, each in one line."""
    from dpif.netlink.wire import KernelError, WireError  # here: not every command imports the codec

    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(dict.fromkeys(one_line(e) for e in exc.exceptions))
    if isinstance(exc, DpfreezeError | KernelError | WireError | OSError):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

