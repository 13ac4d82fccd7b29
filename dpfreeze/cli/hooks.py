"""`dpfreeze preflight | thaw`: the drop-in's ExecStartPre and ExecStartPost, on every start of ovs-vswitchd.

Why apart from cli/freeze.py: systemd starts the daemon only once ExecStartPre has returned, after every
crash too, new flows wait for ExecStartPost's thaw, and each hook was a Python start that imported trio
and the library: 4-6 s under qemu TCG, ten times a bare `python3 -c pass`.  With the service running,
each is one request over the control socket, with nothing imported but the control codec, and the service
runs the check or the thaw itself.  With no service, or one started before these requests existed, the
command runs in its own process as it always did (cli/freeze.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from dpfreeze.cli.args import common, seconds
from dpfreeze.errors import UserError
from dpfreeze.freeze.client import Connection, ServiceLost
from dpfreeze.freeze.control import ControlError

CONNECT_TIMEOUT = 5.0
# The service's crash check may freeze, and a repair wait for its own expiry: both bounded at 60 s there.
PREFLIGHT_TIMEOUT = 180.0
THAW_MARGIN = 120.0  # beyond the OpenFlow restore's own bound: the hand-over's (service.thaw's) and more


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("thaw", help="clear flow-restore-wait, repair the new daemon's flush, hand over")
    common(p)
    p.add_argument("--no-wait", action="store_true", help="return once the thaw has started")
    p.add_argument("--no-openflow", action="store_true",
                   help="do not restore the snapshot's OpenFlow state into the daemon first")
    p.add_argument("--openflow-timeout", type=seconds(3600), default=60.0, metavar="S",
                   help="how long to wait for the daemon and the restore (default 60)")
    p.set_defaults(handler=cmd_thaw)

    p = sub.add_parser("preflight", help="ExecStartPre: refuse a stale flow-restore-wait or expired lease")
    common(p)
    p.add_argument("--repair", action="store_true", help="clear it and thaw the expired freeze instead")
    p.set_defaults(handler=cmd_preflight)


def emit(doc: dict[str, Any], as_json: bool, text: str) -> None:
    print(json.dumps(doc, indent=1, sort_keys=True) if as_json else text)


def cmd_preflight(args: argparse.Namespace) -> int:
    answer = _ask(args, "preflight", {"repair": args.repair}, PREFLIGHT_TIMEOUT)
    if answer is None or "preflight" not in answer:
        return _here(args)
    emit(answer["preflight"], args.json, answer["text"])
    return int(answer["code"])


def cmd_thaw(args: argparse.Namespace) -> int:
    request = {"openflow": not args.no_openflow, "openflow_timeout": args.openflow_timeout,
               "wait": not args.no_wait}
    answer = _ask(args, "thaw-started", request, args.openflow_timeout + THAW_MARGIN)
    if answer is None or "thaw" not in answer:
        return _here(args)
    show_thawed(answer, args.json)
    return int(answer["code"])


def show_thawed(answer: dict[str, Any], as_json: bool) -> None:
    """A thaw's output (upgrade.Thawed), wherever it ran."""
    for line in answer["said"]:
        print(line)
    if answer["failed"]:
        print(f"dpfreeze: {answer['failed']}", file=sys.stderr)
    emit(answer["thaw"], as_json, answer["text"])


def _ask(args: argparse.Namespace, cmd: str, request: dict[str, Any],
         timeout: float) -> dict[str, Any] | None:
    """The service's answer; None where the command must run here: no service answers, or it is one
    started before this dpfreeze was installed (it refuses the request, or a service of an older
    release answers an unknown request with its status)."""
    try:
        with Connection(args.socket, CONNECT_TIMEOUT) as conn:
            return conn.request(cmd, request, timeout=timeout)
    except ServiceLost:
        return None
    except ControlError as exc:
        if str(exc).startswith(f"unknown command {cmd!r}"):
            return None
        raise UserError(str(exc)) from None
    except OSError:
        return None


def _here(args: argparse.Namespace) -> int:
    """The command in this process, with trio and the library (cli/freeze.py)."""
    import trio

    from dpfreeze.cli import freeze

    handler = freeze.cmd_preflight if args.command == "preflight" else freeze.cmd_thaw
    return int(trio.run(handler, args) or 0)
