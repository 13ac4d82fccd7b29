"""`dpfreeze install-units`: the units in place with the real executable, verified; idempotent; the
uninstall leaves nothing (staged under --root: this host's systemd is not PID 1)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dpfreeze import units
from dpfreeze.cli.main import main as cli

OVS_UNIT = Path("/lib/systemd/system/ovs-vswitchd.service")


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_install_idempotent_and_uninstall_leaves_nothing(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    root.mkdir()
    assert cli(["install-units", "--root", str(root)]) == 0
    first = capsys.readouterr().out
    service = root / "etc/systemd/system/dpfreeze.service"
    dropin = root / "etc/systemd/system/ovs-vswitchd.service.d/dpfreeze.conf"
    assert f"installed {service}" in first and f"installed {dropin}" in first
    exe = units.this_executable()
    assert units.SHIPPED_PATH not in service.read_text() + dropin.read_text() or exe == units.SHIPPED_PATH
    assert f"ExecStart={exe} serve" in service.read_text()
    assert f"ExecStartPre={exe} preflight --repair" in dropin.read_text()
    assert oct(service.stat().st_mode & 0o777) == "0o644"
    assert cli(["install-units", "--root", str(root)]) == 0
    assert capsys.readouterr().out.strip() == "already installed, nothing changed"
    assert cli(["install-units", "--root", str(root), "--uninstall"]) == 0
    assert tree(root) == ["etc", "etc/systemd", "etc/systemd/system"]  # what was there before, empty
    assert cli(["install-units", "--root", str(root), "--uninstall"]) == 0
    assert capsys.readouterr().out.strip().endswith("not installed, nothing changed")


def test_the_executable_is_the_one_really_there(tmp_path: Path) -> None:
    script = tmp_path / "bin" / "dpfreeze"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    assert units.this_executable(str(script)) == str(script)
    on_path = shutil.which("dpfreeze")
    fallback = str(Path(on_path).resolve()) if on_path else f"{units.sys.executable} -m dpfreeze.cli"
    assert units.this_executable("/nonexistent/python") == fallback


@pytest.mark.skipif(shutil.which("systemd-analyze") is None or not OVS_UNIT.exists(),
                    reason="needs systemd-analyze and Debian's ovs-vswitchd.service")
async def test_a_unit_systemd_refuses_is_never_installed_quietly(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    plan = units.Plan(tmp_path, "/bin/true")
    real = units.Plan.targets

    def broken(self: units.Plan) -> dict[Path, str]:
        return {p: t + ("[Service]\nNoSuchSetting=1\n" if p.name == units.SERVICE else "")
                for p, t in real(self).items()}

    monkeypatch.setattr(units.Plan, "targets", broken)
    with pytest.raises(units.UnitsError, match="NoSuchSetting"):
        await units.install(plan)
    assert not (tmp_path / "etc").exists()  # refused before anything was written
