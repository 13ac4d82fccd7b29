"""`dpfreeze demo`, the main job, as the README runs it: in the guest booted with systemd, OVS 2.15 -> 3.1 by
`dpkg -i`, stock and with dpfreeze; every report written, the verdict HITLESS and the exit status 0."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import jsonschema
import ovsdebs
import pytest
import vmharness
from systemdrig import record

from dpfreeze.probe.report import load_schema, report_from_json

pytestmark = [pytest.mark.kernel, pytest.mark.systemd, pytest.mark.kernel_timeout(1300)]


def test_demo_upgrades_by_package_hitlessly_and_shows_stock_beside(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    cache = vmharness.cache_dir() / "ovs"
    argv = ["dpfreeze", "demo", "--old-debs", *ovsdebs.debs(cache / "2.15", "2.15"),
            "--new-debs", *ovsdebs.debs(cache / "3.1", "3.1"), "--out", str(tmp_path)]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=1200, check=False)
    record_property("demo output", res.stdout + res.stderr)
    assert "Traceback" not in res.stderr
    out = {p.name for p in tmp_path.iterdir()}
    assert {"stock.json", "dpfreeze.json", "upgrade.svg", "demo.txt", "demo.json"} <= out, out
    runs = {}
    for who in ("stock", "dpfreeze"):
        text = (tmp_path / f"{who}.json").read_text()
        jsonschema.validate(json.loads(text), load_schema())
        runs[who] = report_from_json(text)
        record(f"{who} 2.15 -> 3.1 (demo)", runs[who], record_property)
    assert (tmp_path / "upgrade.svg").read_text().startswith("<svg")
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert summary["old"].startswith("2.15.") and summary["new"].startswith("3.1."), summary
    assert res.returncode == 0 and summary["hitless"], res.stdout + res.stderr
    assert all(c.lost == 0 for c in runs["dpfreeze"].classes), runs["dpfreeze"].classes
    assert runs["stock"].cls("newflow").lost > 0  # what the demo is for: stock loses new flows here
