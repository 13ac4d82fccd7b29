"""`dpfreeze lab soak`, short: upgrades back to back through one running service, nothing lost, nothing
grown.  The 50-upgrade run that docs/reliability.md records is the same command with `--upgrades 50`."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kernel, pytest.mark.own_boot, pytest.mark.kernel_timeout(900)]


def test_upgrades_in_a_row_lose_nothing_and_leak_nothing(
        tmp_path: Path, record_property: Callable[[str, object], None]) -> None:
    res = subprocess.run(["dpfreeze", "lab", "soak", "--upgrades", "3", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=850, check=False)
    record_property("table", res.stdout + res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    doc = json.loads((tmp_path / "soak.json").read_text())
    assert [s["ok"] for s in doc["samples"]] == [True] * 3, doc["samples"]
    assert doc["ok"] and res.returncode == 0, doc["verdict"]
    assert doc["growth"]["service_fds"] <= 0, doc["growth"]
