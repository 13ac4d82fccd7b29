"""`dpfreeze bench upgrade` on openvswitch.ko (in the VM): one stop/start leg over a filled datapath.

The bench runs in-process (Python start-up under TCG costs seconds); the methods themselves run as
processes, as in production.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from dpfreeze.lab.bench_upgrade import BenchSpec, bench
from dpfreeze.lab.topology import lab_dir

pytestmark = pytest.mark.kernel


async def test_stop_start_leg_is_measured_and_every_new_flow_takes_an_upcall(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    lines: list[str] = []
    doc = await bench(BenchSpec(runs=1, methods=("stop-start",), settle_s=1.0, flows=2000), tmp_path,
                      lines.append)
    record_property("bench", "\n".join(lines))
    (run,) = doc["runs"]
    assert run["error"] == "", run
    # --flows: the datapath held the fill when the run began (the restart's flush took it)
    assert run["flows_before"] >= 2000, run
    assert run["established_sent"] > 0 and run["newflow_sent"] > 0, run
    # While no daemon owns the upcall sockets every new flow is dropped: the bench sees the restart.
    assert run["newflow_lost"] > 0, run
    # Every delivered new flow went through an upcall: the bench's table makes each its own megaflow.
    assert run["missed"] >= run["newflow_sent"] - run["newflow_lost"], run
    saved = json.loads((tmp_path / "bench-upgrade.json").read_text())
    assert saved["summary"]["stop-start"]["newflow_lost"]["median"] == run["newflow_lost"]
    assert "| stop-start | 1 (0) |" in (tmp_path / "bench-upgrade.md").read_text()
    assert (tmp_path / run["report"]).exists() and (tmp_path / "ovs-ctl.log").exists()
    assert not list(lab_dir().glob("bench*.json")), "the bench's lab was not torn down"
