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


def losses_in_restart_window(report: dict[str, object]) -> dict[str, list[dict[str, float]]]:
    """Loss intervals of the established and new-flow classes from the daemon's stop to the end of the
    hand-over: the window that stock restarts lose traffic in and that dpfreeze answers for."""
    t = {e["name"]: e["t_ms"] for e in report["events"]}  # type: ignore[attr-defined]
    start, end = t["upgrade: freeze"], t["dpfreeze done"]
    return {
        c["name"]: [i for i in c["loss_intervals"] if i["end_ms"] > start and i["start_ms"] < end]
        for c in report["classes"]  # type: ignore[attr-defined]
        if c["name"] in ("established", "newflow")
    }


async def test_demo_upgrade_is_hitless_across_the_restart_and_writes_every_report(
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
    # Asserted: nothing lost while the daemon is stopped, restarted and handed over, and every miss taken
    # while no daemon ran went to the new one.  Losses outside that window (TCG stalls, seen by the
    # baseline too) stay in the report and the demo's verdict, which is why "HITLESS" is not asserted.
    assert losses_in_restart_window(report) == {"established": [], "newflow": []}, text
    handover = json.loads(paths["upgrade"].read_text())["status"]["report"]["handover"]
    assert handover["taken_over"] and handover["misses"] > 0, handover
    assert handover["replayed"] == handover["misses"] and handover["overflow_packets"] == 0, handover
    assert not list(lab_dir().glob("demo*.json")), "the demo's lab was not torn down"
