"""Installing dpfreeze's systemd units: the service and the ovs-vswitchd drop-in, pointed at the dpfreeze
executable that is really there, verified, loaded and enabled; and removing them without a trace.

The shipped units (dpfreeze/systemd/) name /usr/local/bin/dpfreeze; what is installed names the path
this dpfreeze runs from (pip may have put it in a venv, /usr/bin or ~/.local/bin).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from dpfreeze import command
from dpfreeze.command import CommandFailed
from dpfreeze.errors import DpfreezeError

SHIPPED_PATH = "/usr/local/bin/dpfreeze"
SERVICE = "dpfreeze.service"
DROPIN_DIR = "ovs-vswitchd.service.d"
DROPIN = "dpfreeze.conf"
OVS_UNIT = "ovs-vswitchd.service"
TIMEOUT = 60.0


class UnitsError(DpfreezeError):
    """The units could not be installed or removed; the message says which step failed."""


@dataclass(frozen=True)
class Plan:
    """Where the units go and what they run."""

    root: Path  # "/" on the machine itself; another directory stages them (an image, a package, a test)
    executable: str  # what the units run for `dpfreeze`

    @property
    def unit_dir(self) -> Path:
        return self.root / "etc/systemd/system"

    def targets(self) -> dict[Path, str]:
        """Each file to install and its text."""
        shipped = files("dpfreeze") / "systemd"
        return {path: shipped.joinpath(name).read_text().replace(SHIPPED_PATH, self.executable)
                for path, name in ((self.unit_dir / SERVICE, SERVICE),
                                   (self.unit_dir / DROPIN_DIR / DROPIN, "ovs-vswitchd-dpfreeze.conf"))}


def this_executable(argv0: str = sys.argv[0]) -> str:
    """The `dpfreeze` being run, as a command line for the units: the console script it was started as,
    else the one on PATH, else this interpreter running the package."""
    for candidate in (argv0, shutil.which("dpfreeze")):
        if candidate and Path(candidate).name == "dpfreeze" and os.access(candidate, os.X_OK):
            return str(Path(candidate).resolve())
    return f"{shlex.quote(sys.executable)} -m dpfreeze.cli"


def systemd_running(run: Path = Path("/run/systemd/system")) -> bool:
    """sd_booted(): systemd is PID 1 here, so systemctl can reload and enable."""
    return run.is_dir()


async def _systemctl(*args: str) -> None:
    try:
        await command.run(["systemctl", *args], timeout=TIMEOUT)
    except CommandFailed as exc:
        raise UnitsError(f"systemctl {' '.join(args)}: {exc.why}") from None


async def install(plan: Plan, *, verify: bool = True, activate: bool = True) -> list[str]:
    """Write the units (only what differs), verify them, reload systemd, enable and start the service.
    Returns one line per thing done; idempotent."""
    if verify:
        await _verify(plan)  # before anything is written: a unit systemd refuses is never installed
    done = []
    for path, text in plan.targets().items():
        if path.exists() and path.read_text() == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        tmp = path.with_name(path.name + ".dpfreeze-new")
        tmp.write_text(text)
        tmp.chmod(0o644)
        tmp.replace(path)
        done.append(f"installed {path}")
    if activate and plan.root == Path("/") and systemd_running():
        await _systemctl("daemon-reload")
        await _systemctl("enable", "--now", SERVICE)
        done.append(f"enabled and started {SERVICE}; ovs-vswitchd's stop, start and reload now go through it")
    elif activate and plan.root == Path("/"):
        done.append("systemd is not running here: run `systemctl daemon-reload && systemctl enable --now "
                    f"{SERVICE}` once it is")
    return done or ["already installed, nothing changed"]


async def _verify(plan: Plan) -> None:
    """systemd-analyze verify of the service, and of ovs-vswitchd.service with the drop-in applied: staged
    side by side in a scratch directory (where verify reads a unit's drop-ins), so that any warning about
    our files, not only an error, refuses them."""
    if shutil.which("systemd-analyze") is None:
        return
    system_dirs = (plan.root / "lib/systemd/system", plan.root / "usr/lib/systemd/system",
                   Path("/lib/systemd/system"))
    ovs_unit = next((d / OVS_UNIT for d in system_dirs if (d / OVS_UNIT).exists()), None)
    with tempfile.TemporaryDirectory(prefix="dpfreeze-units-") as scratch:
        stage = Path(scratch)
        texts = {path.relative_to(plan.unit_dir): text for path, text in plan.targets().items()}
        (stage / SERVICE).write_text(texts[Path(SERVICE)])
        units = [str(stage / SERVICE)]
        if ovs_unit is not None:
            (stage / DROPIN_DIR).mkdir()
            (stage / DROPIN_DIR / DROPIN).write_text(texts[Path(DROPIN_DIR, DROPIN)])
            shutil.copy(ovs_unit, stage / OVS_UNIT)
            units.append(str(stage / OVS_UNIT))
        try:
            done = await command.run(["systemd-analyze", "verify", "--man=no", *units], timeout=TIMEOUT,
                                     check=False)
        except CommandFailed as exc:
            raise UnitsError(f"systemd-analyze verify: {exc.why}") from None
        ours = [line for line in done.stderr.decode(errors="replace").splitlines() if scratch in line]
    if done.returncode or ours:
        raise UnitsError("systemd-analyze verify refused the units: "
                         + (ours[0].replace(scratch, str(plan.unit_dir)) if ours else done.why))


async def uninstall(plan: Plan, *, activate: bool = True) -> list[str]:
    """Stop and disable the service, remove both files (and the drop-in directory if it is left empty),
    reload systemd.  Idempotent; nothing of dpfreeze's is left in the unit directories."""
    done = []
    live = activate and plan.root == Path("/") and systemd_running()
    if live and (plan.unit_dir / SERVICE).exists():
        await _systemctl("disable", "--now", SERVICE)
        done.append(f"stopped and disabled {SERVICE}")
    for path in plan.targets():
        if path.exists() or path.is_symlink():
            path.unlink()
            done.append(f"removed {path}")
    dropin_dir = plan.unit_dir / DROPIN_DIR
    if dropin_dir.is_dir() and not any(dropin_dir.iterdir()):
        dropin_dir.rmdir()
        done.append(f"removed {dropin_dir}")
    if live and done:
        await _systemctl("daemon-reload")
    return done or ["not installed, nothing changed"]
