"""`dpfreeze demo`, the main job, on openvswitch.ko (in the VM): reports written, upgrade hitless."""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

from dpfreeze.lab.demo import demo
from dpfreeze.lab.topology import lab_dir
from dpfreeze.probe.report import report_from_json

pytestmark = pytest.mark.kernel


async def test_demo_keeps_traffic_across_the_restart_and_writes_every_report(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    res, hitless, paths = await demo(tmp_path)
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
    assert res.error == "" and hitless, text
    # Asserted: nothing lost from the freeze until the hand-over is done (the stock procedures lose every
    # new flow there), and every miss taken while no daemon ran went to the new one.  The probe rig's own
    # failures (send errors, receiver drops) would show as losses too: they are reported, not excused.
    window = report_from_json(paths["json"].read_text()).lost_between("dpfreeze begins", "dpfreeze done")
    record_property("restart window (lost, sent)", window)
    record_property("probe rig", {k: report["params"][k] for k in ("send_errors", "send_errnos",
                                                                    "receiver_drops")})
    for name, (lost, sent) in window.items():
        assert sent > 0 and lost == 0, (name, lost, sent, report["params"], text)
    handover = json.loads(paths["upgrade"].read_text())["status"]["report"]["handover"]
    assert handover["taken_over"] and handover["misses"] > 0, handover
    assert handover["replayed"] == handover["misses"] and handover["overflow_packets"] == 0, handover
    assert not list(lab_dir().glob("demo*.json")), "the demo's lab was not torn down"
