"""The bench's arithmetic and text, pure (no VM): medians and ranges, failures carried to the table."""

from __future__ import annotations

from dpfreeze.lab.bench_upgrade import RunResult, _ctl_mark, _upgrade_mark, markdown, summarize

META = {"date": "2026-11-22 05:00 UTC", "kernel": "6.1.0-56-amd64", "ovs": "ovs-vswitchd 3.1.0",
        "cpu": "QEMU TCG", "runs": 3, "rate": 500.0, "newflow_ms": 20.0}


def run(method: str, k: int, est: int | None, new: int | None, gap: float | None, excess: int | None,
        error: str = "") -> RunResult:
    return RunResult(method, k, error=error, established_sent=None if est is None else 7000,
                     established_lost=est, newflow_sent=None if new is None else 700, newflow_lost=new,
                     largest_gap_ms=gap, excess_misses=excess)


def test_summary_medians_ranges_and_failures() -> None:
    results = [run("stop-start", 1, 152, 93, 306.0, 40), run("stop-start", 2, 689, 121, 1385.0, 55),
               run("stop-start", 3, 164, 100, 330.0, 47),
               run("dpfreeze", 1, 0, 0, 0.0, 2),
               run("dpfreeze", 2, None, None, None, None, error="probes: x"),
               run("dpfreeze", 3, 0, 0, 0.0, 4, error="dpfreeze upgrade: exit 1")]
    s = summarize(results, ["stop-start", "dpfreeze"])
    assert s["stop-start"]["established_lost"] == {"median": 164, "low": 152, "high": 689, "n": 3}
    assert s["stop-start"]["largest_gap_ms"]["median"] == 330.0
    assert s["stop-start"]["failed"] == 0 and s["stop-start"]["established_sent"] == 7000
    assert s["dpfreeze"]["runs"] == 3 and s["dpfreeze"]["failed"] == 2
    assert s["dpfreeze"]["established_lost"]["n"] == 2  # the run without a measurement is left out
    assert s["dpfreeze"]["errors"] == ["dpfreeze upgrade: exit 1", "probes: x"]
    table = markdown(s, META)
    row = "| stop-start | 3 (0) | 164 (152-689) / 7000 | 100 (93-121) / 700 | 330.0 (306.0-1385.0) |"
    assert row in table
    assert "| dpfreeze | 3 (2) | 0 / 7000 | 0 / 700 | 0.0 | 3 (2-4) |" in table
    assert "dpfreeze failed: probes: x" in table and "kernel 6.1.0-56-amd64" in table


def test_a_method_with_no_measurement_at_all() -> None:
    s = summarize([run("ovs-ctl-restart", 1, None, None, None, None, error="ovs-ctl restart: exit 1")],
                  ["ovs-ctl-restart"])
    assert s["ovs-ctl-restart"]["established_lost"] is None
    assert "| ovs-ctl-restart | 1 (1) | — / — | — / — | — | — |" in markdown(s, META)


def test_timeline_marks_from_command_output() -> None:
    assert _ctl_mark(" * Saving flows") == "ovs-ctl: Saving flows"
    assert _ctl_mark("Exiting ovs-vswitchd (150).") == "ovs-ctl: Exiting ovs-vswitchd (150)"
    assert _ctl_mark("") is None
    assert _ctl_mark("2026-11-22T05:01:23Z|00002|timeval|WARN|Unreasonably long 3078ms poll interval") is None
    line = "2026-11-22 04:00:00,000 INFO dpfreeze.upgrade upgrade.step bridges=1 step=freeze"
    assert _upgrade_mark(line) == "upgrade: freeze"
    assert _upgrade_mark("2026 INFO dpfreeze.freeze.service state reason=x state=frozen") == "state: frozen"
    assert _upgrade_mark("2026 INFO dpfreeze.cli.upgrade upgrade.run argv='x'") == "upgrade: restart"
    assert _upgrade_mark("anything else") is None
