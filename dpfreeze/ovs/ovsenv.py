"""Where OVS lives: the directories and sockets, resolved exactly as OVS's own tools resolve them.

The rules mirror lib/dirs.c (an unset or empty variable means the default; OVS_DBDIR falls back to
$OVS_SYSCONFDIR/openvswitch when OVS_SYSCONFDIR is set at all) with Debian's configure defaults, and
ovs-appctl's target lookup (<rundir>/<name>.pid -> <rundir>/<name>.<pid>.ctl).  Every dpfreeze module asks
here, so a private OVS started with OVS_* variables is found by dpfreeze the way ovs-vsctl finds it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULTS = {
    "OVS_RUNDIR": "/var/run/openvswitch",
    "OVS_LOGDIR": "/var/log/openvswitch",
    "OVS_SYSCONFDIR": "/etc",
    "OVS_PKGDATADIR": "/usr/share/openvswitch",
    "OVS_BINDIR": "/usr/bin",
}
DEFAULT_DBDIR = "/etc/openvswitch"
VSWITCHD = "ovs-vswitchd"


def proc_stat(pid: int, proc: Path = Path("/proc")) -> list[str] | None:
    """/proc/PID/stat's fields after the parenthesised command name (state, ppid, ...; field 3 on is
    index 0 on), None if there is no such process."""
    try:
        return (proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_alive(pid: int, proc: Path = Path("/proc")) -> bool:
    """True unless the process is gone or a zombie: a daemon that exited is not running, even while its
    parent (a non-reaping init, as in many containers) has not collected it yet."""
    fields = proc_stat(pid, proc)
    return fields is not None and fields[0] != "Z"


def process_age(pid: int, proc: Path = Path("/proc")) -> float | None:
    """Seconds since the process started; None if there is no such process."""
    fields = proc_stat(pid, proc)
    if fields is None:
        return None
    ticks = int(fields[19])  # field 22, starttime: clock ticks since boot
    return time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")


VSWITCHD = "ovs-vswitchd"


def daemon_argv(pid: int, proc: Path = Path("/proc")) -> list[str]:
    """A running daemon's own command line, to start the new binary exactly as the old one ran."""
    raw = (proc / str(pid) / "cmdline").read_bytes()
    return [a.decode() for a in raw.split(b"\0") if a]


class DaemonNotRunning(OSError):
    """The daemon's pidfile is missing or unreadable: it is not running under this rundir."""


@dataclass(frozen=True)
class OvsEnv:
    rundir: Path
    dbdir: Path
    logdir: Path
    sysconfdir: Path
    pkgdatadir: Path
    bindir: Path

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> OvsEnv:
        env = os.environ if environ is None else environ

        def get(name: str) -> Path:
            return Path(env.get(name) or DEFAULTS[name])

        dbdir = env.get("OVS_DBDIR") or (
            f"{env['OVS_SYSCONFDIR']}/openvswitch" if "OVS_SYSCONFDIR" in env else DEFAULT_DBDIR
        )
        return cls(
            get("OVS_RUNDIR"),
            Path(dbdir),
            get("OVS_LOGDIR"),
            get("OVS_SYSCONFDIR"),
            get("OVS_PKGDATADIR"),
            get("OVS_BINDIR"),
        )

    def environ(self) -> dict[str, str]:
        """The OVS_* variables that make OVS's tools (and child processes) use these directories."""
        return {
            "OVS_RUNDIR": str(self.rundir), "OVS_DBDIR": str(self.dbdir), "OVS_LOGDIR": str(self.logdir),
            "OVS_SYSCONFDIR": str(self.sysconfdir), "OVS_PKGDATADIR": str(self.pkgdatadir),
            "OVS_BINDIR": str(self.bindir),
        }  # fmt: skip

    @property
    def db_sock(self) -> Path:
        """ovsdb-server's socket as ovs-vsctl's default --db (unix:<rundir>/db.sock)."""
        return self.rundir / "db.sock"

    @property
    def db_remote(self) -> str:
        return f"unix:{self.db_sock}"

    @property
    def db_file(self) -> Path:
        return self.dbdir / "conf.db"

    @property
    def schema(self) -> Path:
        return self.pkgdatadir / "vswitch.ovsschema"

    def pidfile(self, daemon: str) -> Path:
        return self.rundir / f"{daemon}.pid"

    def pid(self, daemon: str) -> int:
        try:
            return int(self.pidfile(daemon).read_text().split()[0])
        except (OSError, ValueError, IndexError) as exc:
            raise DaemonNotRunning(f"{daemon}: no readable pidfile {self.pidfile(daemon)}") from exc

    def started(self, daemon: str, proc: Path = Path("/proc")) -> float | None:
        """time.time() at which the daemon's running process started; None if it does not run."""
        try:
            age = process_age(self.pid(daemon), proc)
        except DaemonNotRunning:
            return None
        return None if age is None else time.time() - age

    def unixctl(self, target: str) -> Path:
        """The control socket ovs-appctl -t TARGET would use (an absolute TARGET is taken as is)."""
        if target.startswith("/"):
            return Path(target)
        return self.rundir / f"{target}.{self.pid(target)}.ctl"


def current() -> OvsEnv:
    return OvsEnv.from_environ()
