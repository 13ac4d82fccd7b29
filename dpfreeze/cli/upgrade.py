"""`dpfreeze upgrade`: a hitless `ovs-ctl restart`.

With the service running (`dpfreeze serve`, as the units install it) the upgrade runs there and this
command only asks for it and runs, in its own process, the commands that start processes (see
freeze/caller.py): it imports neither trio nor the library, so its start-up (seconds of Python under
emulation) is not added to the upgrade.  With no service, or one too old to run upgrades, this process runs
the upgrade itself (`freeze.upgrade_here`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dpfreeze.cli.args import DATAPATH_HELP, common, ttl_option
from dpfreeze.errors import UserError
from dpfreeze.freeze.client import Connection, ServiceLost
from dpfreeze.freeze.control import ControlError
from dpfreeze.log import kv
from dpfreeze.ovs import ovsenv
from dpfreeze.ovs.ovsenv import VSWITCHD, process_age

LOG = logging.getLogger(__name__)
CONNECT_TIMEOUT = 5.0
NOT_HERE = ("unknown command 'upgrade'", "this service runs no upgrades")
ANSWER_MARGIN = 120.0  # beyond the lease: the service bounds every step by it, and itself by this


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("upgrade", help="hitless ovs-vswitchd restart: freeze, restart, restore, thaw")
    common(p)
    ttl_option(p)
    p.add_argument("--datapath", help=DATAPATH_HELP)
    p.add_argument(
        "--restart-command",
        metavar="CMD",
        help="shell command that restarts ovs-vswitchd (default: stop and start it like ovs-ctl)",
    )
    p.add_argument("--reload-kmod", action="store_true",
                   help="also reload the openvswitch module (as ovs-ctl force-reload-kmod), restoring the "
                        "datapath, its port numbers and its flows before the new daemon starts")
    p.add_argument("--report", metavar="FILE", help="also write the JSON report to FILE")
    p.set_defaults(handler=cmd_upgrade)


def cmd_upgrade(args: argparse.Namespace) -> int:
    origin = time.monotonic() - (process_age(os.getpid()) or 0.0)
    try:
        conn = Connection(args.socket, CONNECT_TIMEOUT)
    except OSError:
        return _here(args)
    env = ovsenv.current()
    try:  # what to start again should the service be lost midway
        pid = env.pid(VSWITCHD)
        old_pid, argv = pid, ovsenv.daemon_argv(pid)
    except OSError:
        old_pid, argv = None, []
    with conn:
        request: dict[str, Any] = {"ttl": args.ttl, "reload_kmod": args.reload_kmod, "origin": origin}
        if args.datapath:
            request["datapath"] = args.datapath
        if args.restart_command:
            request["restart_command"] = args.restart_command
        timeout = args.ttl + ANSWER_MARGIN
        try:
            LOG.info(kv("upgrade.asked", service=args.socket))
            answer = conn.request("upgrade", request, timeout=timeout)
            while isinstance(run := answer.get("run"), dict):
                LOG.info(kv("upgrade.run", argv=" ".join(map(str, run.get("argv") or ()))))
                error = run_for_service(run)
                LOG.info(kv("upgrade.ran", error=error))
                answer = conn.request("upgrade-ran", {"error": error}, timeout=timeout)
        except ServiceLost as exc:
            conn.close()
            return _recover(args, old_pid, argv, str(exc))
        except ControlError as exc:
            if str(exc).startswith(NOT_HERE):  # a service of an older dpfreeze, or one an upgrade started
                conn.close()
                return _here(args)
            raise UserError(str(exc)) from None
        except KeyboardInterrupt:
            print("dpfreeze: interrupted: the dpfreeze service ends the upgrade (a thaw into the daemon that "
                  "runs, or a roll-back to the previous one)", file=sys.stderr)
            return 130
    return print_report(args, answer)


def _here(args: argparse.Namespace) -> int:
    import trio

    from dpfreeze.cli import freeze

    freeze.stand_by(args)  # before trio runs: a fork, which trio must not see
    return trio.run(freeze.upgrade_here, args)


def _recover(args: argparse.Namespace, old_pid: int | None, argv: list[str], why: str) -> int:
    import trio

    from dpfreeze.cli import freeze

    return trio.run(freeze.recover_upgrade, args, old_pid, argv, why)


def run_for_service(run: dict[str, Any]) -> str:
    """Run one of the service's commands in this process; "" when it succeeded, else why not (one line)."""
    argv = [str(a) for a in run.get("argv") or ()]
    if not argv:
        return "the service sent an empty command"
    timeout = float(run.get("timeout") or 60.0)
    env = {**os.environ, **{str(k): str(v) for k, v in (run.get("env") or {}).items()}}
    try:
        done = subprocess.run(argv, executable=run.get("executable"), env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return f"{argv[0]}: no answer within {timeout:g} s"
    except OSError as exc:
        return f"{argv[0]}: {exc.strerror or exc}"
    if not done.returncode:
        return ""
    err = done.stderr.decode(errors="replace").strip().splitlines()
    return err[-1].removeprefix(f"{argv[0]}: ") if err else f"exit status {done.returncode}"


def print_warnings(lines: Iterable[str]) -> None:
    for line in lines:
        print(f"dpfreeze: warning: {line}", file=sys.stderr)


def print_report(args: argparse.Namespace, answer: dict[str, Any]) -> int:
    """What the command prints, whichever process ran the upgrade: warnings, then the report (`--report`,
    `--json`, or its text); the exit status."""
    print_warnings(answer.get("warnings") or ())
    report, ok = answer.get("report") or {}, bool(answer.get("ok"))
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    if args.json:
        print(json.dumps(report, indent=1, sort_keys=True))
    else:
        print(answer.get("text") or "", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1
