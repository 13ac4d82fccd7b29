"""The systemd units: `systemd-analyze verify` accepts them, and every dpfreeze command they run parses."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from importlib.resources import files
from pathlib import Path

import pytest

from dpfreeze.cli.main import build_parser

UNITS = files("dpfreeze") / "systemd"
DROPIN = "ovs-vswitchd-dpfreeze.conf"
INSTALLED = "/usr/local/bin/dpfreeze"
OVS_UNIT = Path("/lib/systemd/system/ovs-vswitchd.service")

needs_verify = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")


def _stage(tmp_path: Path, extra: str = "") -> list[str]:
    """The units as installed, with the dpfreeze path pointing at an executable that exists here."""
    exe = shutil.which("dpfreeze") or shutil.which("true") or "/bin/true"
    (tmp_path / "ovs-vswitchd.service.d").mkdir()
    (tmp_path / "dpfreeze.service").write_text(UNITS.joinpath("dpfreeze.service").read_text()
                                               .replace(INSTALLED, exe) + extra)
    (tmp_path / "ovs-vswitchd.service.d" / "dpfreeze.conf").write_text(
        UNITS.joinpath(DROPIN).read_text().replace(INSTALLED, exe))
    shutil.copy(OVS_UNIT, tmp_path / "ovs-vswitchd.service")
    return [str(tmp_path / "dpfreeze.service"), str(tmp_path / "ovs-vswitchd.service")]


def _verify(units: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", "verify", "--man=no", *units], capture_output=True, text=True,
                          timeout=60, check=False)


@needs_verify
@pytest.mark.skipif(not OVS_UNIT.exists(), reason="Debian's ovs-vswitchd.service is not installed")
def test_systemd_analyze_verify_passes(tmp_path: Path) -> None:
    res = _verify(_stage(tmp_path))
    assert res.returncode == 0, res.stderr
    assert str(tmp_path) not in res.stderr, res.stderr  # not even a warning about our files


@needs_verify
@pytest.mark.skipif(not OVS_UNIT.exists(), reason="Debian's ovs-vswitchd.service is not installed")
def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    res = _verify(_stage(tmp_path, extra="[Service]\nNoSuchSetting=1\n"))
    assert "NoSuchSetting" in res.stderr


def _dpfreeze_commands() -> list[str]:
    out = []
    for name in ("dpfreeze.service", DROPIN):
        for line in UNITS.joinpath(name).read_text().splitlines():
            key, _, value = line.partition("=")
            if key.startswith("Exec") and INSTALLED in value:
                out.append(value.lstrip("-"))
    return out


@pytest.mark.parametrize("command", _dpfreeze_commands())
def test_unit_commands_parse(command: str) -> None:
    argv = shlex.split(command)
    assert argv[0] == INSTALLED
    args = build_parser().parse_args(argv[1:])
    assert callable(args.handler)


def test_units_name_every_hook() -> None:
    hooks = {line.partition("=")[0] for line in UNITS.joinpath(DROPIN).read_text().splitlines()
             if line.startswith("Exec") and INSTALLED in line}
    assert hooks == {"ExecStop", "ExecStartPre", "ExecStartPost", "ExecReload"}
