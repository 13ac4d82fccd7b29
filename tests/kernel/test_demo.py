"""`dpfreeze demo`, the main job, on openvswitch.ko (in the VM): reports written, upgrade hitless."""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

from dpfreeze.demo import demo
from dpfreeze.lab import lab_dir

pytestmark = pytest.mark.kernel


async def test_demo_upgrades_hitlessly_and_writes_every_report(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    res, paths = await demo(tmp_path)
    text = paths["text"].read_text()
    record_property("demo report", text)
    assert set(paths) == {"text", "json", "plot", "upgrade"}, (paths, res)
    schema = json.loads(resources.files("dpfreeze").joinpath("data/probe-report.schema.json").read_text())
    report = json.loads(paths["json"].read_text())
    jsonschema.validate(report, schema)
    assert paths["plot"].read_text().startswith("<svg")
    events = [e["name"] for e in report["events"]]
    assert events[0] == "dpfreeze begins" and "upgrade: thaw" in events, events
    assert json.loads(paths["upgrade"].read_text())["ok"] is True
    assert res.error == "", text
    assert res.established_lost == 0 and res.newflow_lost == 0, text
    assert "HITLESS" in text
    assert not list(lab_dir().glob("demo*.json")), "the demo's lab was not torn down"
