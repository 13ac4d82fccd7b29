"""`dpfreeze serve | freeze | renew | thaw | status | preflight | upgrade`: thin front ends over the service.

freeze/renew/thaw need the running service (the pin lives there); status and preflight fall back to the
state file when the service is down; upgrade starts a service of its own when none is running.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NoReturn

import trio

from dpfreeze import files
from dpfreeze.cli.args import DATAPATH_HELP, common, seconds, ttl_option
from dpfreeze.cli.hooks import emit, show_thawed
from dpfreeze.cli.upgrade import print_report, print_warnings
from dpfreeze.errors import UserError
from dpfreeze.freeze import control, controlsock, machine
from dpfreeze.freeze.caller import Caller
from dpfreeze.freeze.checkpoint import Checkpoint
from dpfreeze.freeze.defaults import MAX_TTL
from dpfreeze.freeze.service import (
    FreezeService,
    ServiceConfig,
    SystemBackend,
    render_status,
)
from dpfreeze.ovs import datapaths, ovsenv
from dpfreeze.preflight import OvsdbFlowRestoreWait, check, in_service
from dpfreeze.upgrade import (
    VSWITCHD,
    Orphan,
    daemon_line,
    finish_crash,
    finish_orphaned,
    kept_binary_dir,
    plan_from_start,
    recover_lost_service,
    run_upgrade,
    schema_warnings,
    serve_upgrade,
    thaw_in_service,
    thaw_started,
)


class RemoteApi:
    """The service behind its control socket."""

    def __init__(self, path: Path, timeout: float = 120.0) -> None:
        self.path, self.timeout = str(path), timeout

    async def _call(self, cmd: str, **args: Any) -> dict[str, Any]:
        try:
            return await controlsock.call(self.path, cmd, args, timeout=self.timeout)
        except control.ControlError as exc:
            raise UserError(str(exc)) from exc
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise UserError(f"no dpfreeze service on {self.path} (start it with `dpfreeze serve`)") from exc

    async def freeze(self, ttl: float, datapath: str) -> dict[str, Any]:
        return await self._call("freeze", ttl=ttl, datapath=datapath)

    async def renew(self, ttl: float) -> dict[str, Any]:
        return await self._call("renew", ttl=ttl)

    async def thaw(self, *, wait: bool = True) -> dict[str, Any]:
        return await self._call("thaw", wait=wait)

    async def take_upcalls(self) -> dict[str, Any]:
        return await self._call("take-upcalls")

    async def detach(self) -> dict[str, Any]:
        return await self._call("detach")

    async def reattach(self) -> dict[str, Any]:
        return await self._call("reattach")

    async def status(self) -> dict[str, Any]:
        return await self._call("status")


def _config(args: argparse.Namespace) -> ServiceConfig:
    return ServiceConfig(state_dir=Path(args.state_dir), socket_path=Path(args.socket))


async def cmd_serve(args: argparse.Namespace) -> int:
    config = dataclasses.replace(_config(args), crash_ttl=args.crash_ttl)
    service, env = FreezeService(config, SystemBackend()), ovsenv.current()
    orphaned = crashed = None
    if args.orphan:
        orphan = Orphan.from_json(args.orphan)

        async def orphaned(api: FreezeService) -> str:
            return await finish_orphaned(api, env, orphan)
    checkpoint = None
    if args.guard:
        async def crashed(api: FreezeService, dead: int) -> str:
            return await finish_crash(api, env, dead)
        checkpoint = Checkpoint(env, config.state_dir / "openflow.checkpoint",
                                paused=lambda: service.state.state in machine.ACTIVE)
    async def upgrader(api: FreezeService, request: dict[str, Any], caller: Caller) -> dict[str, Any]:
        return await serve_upgrade(api, env, request, caller, config.state_dir)

    async def preflighted(api: FreezeService, request: dict[str, Any]) -> dict[str, Any]:
        return await in_service(api, env, request)

    async def thawed(api: FreezeService, request: dict[str, Any]) -> dict[str, Any]:
        return await thaw_in_service(api, env, request)

    try:
        await service.run(hold_fd=args.hold_fd, orphaned=orphaned, crashed=crashed, checkpoint=checkpoint,
                          upgrader=upgrader if args.hold_fd is None else None,  # that one exits when idle
                          hooks={"preflight": preflighted, "thaw-started": thawed})
    except machine.TransitionRefused as exc:
        raise UserError(str(exc)) from exc
    return 0


async def cmd_freeze(args: argparse.Namespace) -> int:
    api = RemoteApi(Path(args.socket))
    doc = await api.freeze(args.ttl, await _datapath(args.datapath))
    if args.take_upcalls:
        doc = await api.take_upcalls()
    emit(doc, args.json, render_status(doc) + await daemon_line("frozen with", ovsenv.current()))
    print_warnings(await schema_warnings())
    return 0


async def cmd_renew(args: argparse.Namespace) -> int:
    doc = await RemoteApi(Path(args.socket)).renew(args.ttl)
    emit(doc, args.json, render_status(doc))
    return 0


async def cmd_thaw(args: argparse.Namespace) -> int:
    """`dpfreeze thaw` where the service does not run it itself (cli/hooks.py)."""
    done = await thaw_started(RemoteApi(Path(args.socket)), ovsenv.current(), openflow=not args.no_openflow,
                              timeout=args.openflow_timeout, wait=not args.no_wait)
    show_thawed(done.to_json(), args.json)
    return done.code


async def cmd_status(args: argparse.Namespace) -> int:
    try:
        doc = await RemoteApi(Path(args.socket), timeout=10).status()
        doc["service"] = "running"
    except UserError:
        try:
            state = machine.StateStore(_config(args).state_file).load()
        except machine.StateFileError as exc:
            raise UserError(str(exc)) from exc
        doc = {k: v for k, v in state.to_json().items() if k != "dpfreeze_state"}
        doc["lease_remaining"] = state.lease_remaining()
        doc["service"] = "not running"
    emit(doc, args.json, f"service: {doc['service']}\n" + render_status(doc))
    return 0


async def cmd_preflight(args: argparse.Namespace) -> int:
    """`dpfreeze preflight` where no service answers a `preflight` request (cli/hooks.py)."""
    done = await check(_config(args), OvsdbFlowRestoreWait(ovsenv.current()), repair=args.repair)
    emit(done.doc, args.json, done.text)
    return done.code


SERVICE_START_TIMEOUT = 120.0  # a fresh process imports trio and the codec: seconds under qemu TCG


class Standby:
    """A fork of `dpfreeze upgrade`, made before trio runs, that waits to be told to become its service.

    Why: a service started as a new process imports Python, trio and dpfreeze all over again, 7 s of an
    upgrade in a loaded qemu TCG guest (0.3 s natively), all before the freeze; the fork has them already.
    Told nothing (a service already runs, the upgrade was refused, the command was killed), it sees the
    end of its socket and exits.  Once told, it is exactly what a started `dpfreeze serve` is."""

    def __init__(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.sock, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.pid = os.fork()
        if self.pid == 0:
            self.sock.close()
            _stand_by(child)
        child.close()
        self.returncode: int | None = None

    def become_service(self, argv: list[str], hold_r: int, log_fd: int) -> None:
        """`dpfreeze ARGV --hold-fd HOLD_R`, logging to `log_fd`, in a session of its own."""
        socket.send_fds(self.sock, [json.dumps(argv).encode()], [hold_r, log_fd])
        self.sock.close()

    def dismiss(self) -> None:
        self.sock.close()
        self.poll()

    def poll(self) -> int | None:
        if self.returncode is None:
            with contextlib.suppress(ChildProcessError):
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


def _stand_by(sock: socket.socket) -> NoReturn:
    """The fork's life: wait for the word (the command's Ctrl-C is not for it), then serve, then exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        msg, fds, _, _ = socket.recv_fds(sock, 1 << 16, 2)
    except OSError:
        os._exit(0)
    if not msg or len(fds) != 2:
        os._exit(0)
    hold_r, log_fd = fds
    os.setsid()
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    sock.close()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from dpfreeze.cli.main import main

    rc = main([*json.loads(msg), "--hold-fd", str(hold_r)])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


def stand_by(args: argparse.Namespace) -> None:
    """Before trio runs: fork the standby service `upgrade` may need (see Standby)."""
    args.standby = Standby()


class _StartedService(RemoteApi):
    """The service `upgrade` started for itself: started again (it resumes the freeze from its state file)
    if it dies under the command, so that the command still ends the freeze it began."""

    def __init__(self, args: argparse.Namespace, orphan: Orphan) -> None:
        super().__init__(Path(args.socket))
        self.args, self.orphan = args, orphan
        self.proc: subprocess.Popen[bytes] | Standby | None = None
        self.hold_w = -1

    async def start(self) -> None:
        state_dir = Path(self.args.state_dir)
        log_path = state_dir / "service.log"
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
        try:
            files.private_dir(state_dir)
            log_fd = os.open(log_path, flags, 0o600)
        except OSError as exc:
            raise UserError(f"cannot start the dpfreeze service: {log_path}: {exc.strerror}") from None
        hold_r, hold_w = os.pipe()
        serve = ["-v", "serve", "--socket", self.args.socket, "--state-dir", self.args.state_dir,
                 "--orphan", self.orphan.to_json()]
        standby, self.args.standby = getattr(self.args, "standby", None), None  # a fork serves once
        try:
            with open(log_fd, "ab") as log:
                if standby is not None:
                    standby.become_service(serve, hold_r, log.fileno())
                    self.proc = standby
                else:
                    self.proc = subprocess.Popen(
                        [sys.executable, "-m", "dpfreeze.cli", *serve, "--hold-fd", str(hold_r)],
                        stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(hold_r,),
                        start_new_session=True)
        except BaseException:
            os.close(hold_w)
            raise
        finally:
            os.close(hold_r)  # the service's copy is its own; ours would keep its end of the pipe open
        self.close()
        self.hold_w = hold_w
        await _wait_started(RemoteApi(Path(self.path)), self.proc, log_path)

    def close(self) -> None:
        if self.hold_w >= 0:
            os.close(self.hold_w)
            self.hold_w = -1

    async def _call(self, cmd: str, **args: Any) -> dict[str, Any]:
        try:
            return await super()._call(cmd, **args)
        except UserError:
            if not await self._died():
                raise  # a refusal by a live service
        assert self.proc is not None
        print(f"dpfreeze: the service exited (status {self.proc.returncode}); starting it again",
              file=sys.stderr)
        await self.start()
        if cmd == "thaw":  # the resumed service carries on a hand-over the dead one began
            status = await super()._call("status")
            with trio.move_on_after(self.timeout):
                while status.get("state") == machine.State.HANDING_OVER.value:
                    await trio.sleep(0.2)
                    status = await super()._call("status")
            if status.get("state") != machine.State.FROZEN.value:
                return status
        return await super()._call(cmd, **args)

    async def _died(self) -> bool:
        """Whether the service exited: its socket closes a moment before it can be collected."""
        with trio.move_on_after(2):
            while self.proc is not None and self.proc.poll() is None:
                await trio.sleep(0.05)
        return self.proc is not None and self.proc.poll() is not None


@asynccontextmanager
async def _service_api(args: argparse.Namespace, orphan: Orphan) -> AsyncIterator[RemoteApi]:
    """The running service, or one started for this command that outlives it while a freeze lasts.

    Why a process of its own and not the service in this one: the lease must outlive a command killed with
    SIGKILL or Ctrl-C mid-upgrade.  The started service holds the read end of a pipe whose write end only
    this process has: when this process ends, however it ends, the service sees the end of the pipe and
    finishes the upgrade (`finish_orphaned`: a thaw into whichever daemon runs, or a rollback), then exits.
    """
    remote = RemoteApi(Path(args.socket))
    try:
        await remote.status()
    except UserError:
        pass
    else:
        yield remote
        return
    started = _StartedService(args, orphan)
    try:
        await started.start()
        yield started
    finally:
        started.close()


async def _wait_started(remote: RemoteApi, proc: subprocess.Popen[bytes] | Standby, log_path: Path) -> None:
    with trio.move_on_after(SERVICE_START_TIMEOUT):
        while True:
            if proc.poll() is not None:  # e.g. another upgrade's service took the socket first
                last = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["?"]
                raise UserError(f"the dpfreeze service did not start: {last[0]}")
            with contextlib.suppress(UserError):
                await remote.status()
                return
            await trio.sleep(0.1)
    proc.kill()
    raise UserError(f"the dpfreeze service did not answer within {SERVICE_START_TIMEOUT:g} s ({log_path})")


async def _datapath(arg: str) -> str:
    try:
        return await datapaths.resolve(arg)
    except datapaths.NoDatapath as exc:
        raise UserError(str(exc)) from None


async def recover_upgrade(args: argparse.Namespace, old_pid: int | None, argv: list[str], why: str) -> int:
    """The service running this command's upgrade was lost midway (cli/upgrade.py): recover, say so."""
    done = await recover_lost_service(RemoteApi(Path(args.socket), timeout=30), ovsenv.current(), old_pid,
                                      argv)
    print(f"dpfreeze: error: the dpfreeze service was lost mid-upgrade ({why}): {done}", file=sys.stderr)
    return 1


async def upgrade_here(args: argparse.Namespace) -> int:
    """`dpfreeze upgrade` with no service that runs it (cli/upgrade.py): this process runs the upgrade,
    with a service of its own for the freeze (started from the fork `stand_by` made, if any)."""
    try:
        return await _upgrade(args)
    finally:
        if (standby := getattr(args, "standby", None)) is not None:  # unused: refused, or a service ran
            standby.dismiss()


async def _upgrade(args: argparse.Namespace) -> int:
    # The profile starts with this process: its own start-up (the interpreter, the imports) is a phase.
    origin, env = time.monotonic() - (ovsenv.process_age(os.getpid()) or 0.0), ovsenv.current()
    plan, before, warnings = await plan_from_start(  # every refusal before a service is started
        env, origin, ttl=args.ttl, datapath=args.datapath or datapaths.AUTO,
        restart_command=args.restart_command, reload_kmod=args.reload_kmod)
    print_warnings(warnings)
    kept_in = kept_binary_dir(Path(args.state_dir))
    orphan = Orphan(plan.old_pid, plan.argv, kept_in / VSWITCHD, os.getpgid(0))
    start = time.monotonic()
    async with _service_api(args, orphan) as api:
        before.add("service", start)
        rep = await run_upgrade(api, env, plan, rollback_dir=kept_in, origin=origin, before=before)
    return print_report(args, {"ok": rep.ok, "report": rep.to_json(), "text": rep.text()})


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the freeze service (control socket, pin, hand-over, lease)")
    common(p, json_flag=False)
    p.add_argument("--hold-fd", type=int, metavar="FD", help=argparse.SUPPRESS)  # `upgrade` without a service
    p.add_argument("--orphan", metavar="JSON", help=argparse.SUPPRESS)  # and how to finish its upgrade
    p.add_argument("--guard", action="store_true",
                   help="crash guard: freeze within milliseconds when ovs-vswitchd dies unplanned (kill -9, "
                        "OOM, segfault), thaw into the daemon its supervisor starts next")
    p.add_argument("--crash-ttl", type=seconds(MAX_TTL), default=ServiceConfig.crash_ttl,
                   help=f"lease of a crash freeze (default {ServiceConfig.crash_ttl:g})")
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser("freeze", help="snapshot, set flow-restore-wait, pin flows, take over upcalls")
    common(p)
    ttl_option(p)
    p.add_argument("--datapath", default=datapaths.AUTO, help=DATAPATH_HELP)
    p.add_argument("--take-upcalls", action="store_true",
                   help="own the upcalls now, not when the old daemon's sockets die: for a caller that stops "
                   "the daemon next (ExecStop), so the misses of its exit are kept for the new one")
    p.set_defaults(handler=cmd_freeze)

    p = sub.add_parser("renew", help="extend the lease of the freeze in progress")
    common(p)
    ttl_option(p)
    p.set_defaults(handler=cmd_renew)

    p = sub.add_parser("status", help="state, lease, pinned flows, upcalls, owners of the upcall pids")
    common(p)
    p.set_defaults(handler=cmd_status)
