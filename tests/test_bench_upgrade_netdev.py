"""`dpfreeze bench upgrade --datapath netdev` on the host: one short run per method, end to end.

The stock method runs Debian's ovs-ctl inside the lab's switch namespace (with the modprobe shim: no
openvswitch.ko here), dpfreeze restarts through the same ovs-ctl and restores the frozen userspace
datapath into the new daemon before the thaw.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from dpfreeze.lab.bench_upgrade import BenchSpec, bench
from dpfreeze.lab.topology import lab_dir

pytestmark = pytest.mark.netdev

METHODS = ("baseline", "ovs-ctl-restart", "dpfreeze")


async def test_netdev_bench_measures_each_method_and_dpfreeze_restores_before_the_thaw(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record_property: Callable[[str, object], None]
) -> None:
    monkeypatch.setenv("DPFREEZE_LAB_DIR", str(tmp_path / "labs"))
    out = tmp_path / "out"
    lines: list[str] = []
    spec = BenchSpec(runs=1, methods=METHODS, datapath="netdev", lead_s=0.5, settle_s=1.0, tail_s=0.5)
    doc = await bench(spec, out, lines.append)
    record_property("bench", "\n".join(lines))
    runs = {r["method"]: r for r in doc["runs"]}
    assert sorted(runs) == sorted(METHODS), doc["runs"]
    for method, run in runs.items():
        assert run["error"] == "", run
        assert run["established_sent"] > 0 and run["newflow_sent"] > 0, run
        assert run["established_lost"] is not None and run["newflow_lost"] is not None, run
        assert run["missed"] is not None and run["excess_misses"] is not None, run
        assert (out / run["report"]).exists(), run
        assert doc["summary"][method]["established_lost"]["n"] == 1, doc["summary"][method]
    # ovs-ctl restart puts flow-restore-wait on the new daemon: the datapath did see the new flows' misses.
    assert runs["ovs-ctl-restart"]["missed"] > 0, runs["ovs-ctl-restart"]
    dpf = runs["dpfreeze"]
    restorer = dpf["restorer"]
    assert restorer["outcome"] == "snapshot restored into the new daemon's datapath", restorer
    assert restorer["flows_restored"] > 0 and restorer["failures"] == 0, restorer
    upgrade = json.loads((out / dpf["upgrade_report"]).read_text())
    assert upgrade["ok"], upgrade
    assert [s["step"] for s in upgrade["steps"]] == ["freeze", "restart-command", "new-daemon",
                                                     "restore-openflow", "thaw"]
    assert upgrade["new_pid"] != upgrade["old_pid"]
    assert "ovs-ctl" in (out / "ovs-ctl.log").read_text()
    assert doc["meta"]["datapath"] == "netdev" and not doc["meta"]["in_vm"]
    table = (out / "bench-upgrade.md").read_text()
    assert "--datapath netdev" in table and "natively on the host" in table, table
    for method in METHODS:
        assert f"| {method} | 1 (0) |" in table, table
    assert not list(lab_dir().glob("bench*.json")), "the bench's lab was not torn down"
