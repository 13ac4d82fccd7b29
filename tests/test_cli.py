"""The CLI dispatcher: the lazy command table stays in step with what the modules register."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dpfreeze.cli import main as cli
from dpfreeze.ovs.ovsenv import proc_stat


def registered(module: str) -> set[str]:
    parser = cli.build_parser((module,))
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


@pytest.mark.parametrize("module", cli.COMMAND_MODULES)
def test_table_lists_every_command_of_each_module(module: str) -> None:
    listed = {name for name, mods in cli.COMMANDS.items() if module in mods}
    assert registered(module) == listed


def test_a_command_imports_only_its_own_modules() -> None:
    code = (
        "import sys; from dpfreeze.cli import main as cli; "
        "cli.build_parser(cli.modules_for(['dpctl', 'show']));"
        "print(sorted(m for m in sys.modules if m.startswith(('dpfreeze.', 'dpif.'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "dpfreeze.cli.dpctl" in out
    for heavy in ("dpfreeze.probe", "dpfreeze.freeze.service", "dpfreeze.snapshot", "scapy"):
        assert heavy not in out


def test_dpctl_runs_without_trio() -> None:
    """One-shot commands run on the blocking netlink edge: importing trio would cost seconds under TCG.
    (Here ovs_datapath is missing or present; either way the command ran and trio was never imported.)"""
    code = (
        "import sys; from dpfreeze.cli.main import main; rc = main(['dpctl', 'dump-dps']);"
        "print(rc, sorted(m for m in sys.modules if m.split('.')[0] in ('trio', 'attrs', 'dpif.transport')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split(" ", 1)[1].strip() == "[]"


def test_unknown_command_is_one_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["no-such-command"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_a_refused_upgrade_is_one_line_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused before the freeze, with the in-process service running: one line, exit 1, no state written."""
    rc = cli.main(["upgrade", "--state-dir", str(tmp_path), "--socket", str(tmp_path / "c.sock"),
                   "--reload-kmod", "--restart-command", "true"])
    err = capsys.readouterr().err
    assert rc == 1 and err.strip().splitlines() == [
        "dpfreeze: error: --reload-kmod replaces the default restart; it takes no --restart-command"]
    assert not (tmp_path / "state.json").exists()
    # the service it forked on stand-by (see freeze.Standby) was dismissed and is gone
    deadline = time.monotonic() + 10
    while _live_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _live_children()


def _live_children() -> list[int]:
    me = str(os.getpid())
    return [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit()
            and (f := proc_stat(int(d.name))) is not None and f[1] == me and f[0] != "Z"]
