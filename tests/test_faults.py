"""Pure parts of the fault matrix (`dpfreeze lab faults`): what the operator read, the losses of a cell,
the table and its place in docs/reliability.md."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpfreeze.lab import faults
from dpfreeze.lab.faults import CellResult, Matrix
from dpfreeze.lab.soak import Sample, Soak
from dpfreeze.probe.report import Bucket, ClassReport, Report


def test_the_operator_reads_the_error_line_not_the_verbose_log() -> None:
    lines = ["2026-12-05 03:01:02,123 INFO dpfreeze.upgrade upgrade.step step=freeze",
             "dpfreeze: the service exited (status -9); starting it again",
             "dpfreeze: error: cannot freeze while frozen"]
    assert faults.said(lines, "rc 1") == ("dpfreeze: error: cannot freeze while frozen", 1, False)


def test_a_report_is_read_by_its_first_line_and_its_recovery() -> None:
    lines = ["upgrade FAILED: ovs-vswitchd 3.1.0 (pid 1) -> 3.1.0 (pid 2)", "  freeze: 1.000 s",
             "  error: UpgradeError: restart command failed", "  recovery: rolled back: started the previous"]
    first, errors, traceback = faults.said(lines, "rc 1")
    assert first == "upgrade FAILED: ovs-vswitchd 3.1.0 (pid 1) -> 3.1.0 (pid 2) / recovery: rolled back: " \
                    "started the previous"
    assert (errors, traceback) == (0, False)
    assert faults.said([], "killed") == ("(nothing: killed)", 0, False)
    assert faults.said(["Traceback (most recent call last):", "KeyError: 1"], "rc 1")[2]


def _report(lost_at: dict[float, int]) -> Report:
    buckets = [Bucket(t, 10, lost_at.get(t, 0), 1.0) for t in (0.0, 500.0, 1000.0, 1500.0, 2000.0)]
    cls = ClassReport("newflow", 50.0, 50, 50 - sum(lost_at.values()), sum(lost_at.values()), 0, 0, 0.0,
                      None, buckets=buckets)
    return Report("s", 1, "now", 0, 2500.0, [cls], [], {})


def test_a_cells_losses_are_the_buckets_between_its_marks() -> None:
    rep = _report({500.0: 3, 2000.0: 1})
    assert faults.lost_between(rep, 0.0, 1500.0) == {"newflow": 3}
    assert faults.lost_between(rep, 1000.0, 2500.0) == {"newflow": 1}
    assert faults.forwards_at_end(rep, 2000.0, 1000.0)  # 1000-2000 ms: all delivered
    assert not faults.forwards_at_end(rep, 2500.0)  # the last bucket lost one
    assert not faults.forwards_at_end(rep, 100000.0)  # nothing sent there proves nothing


def _result(**kw: object) -> CellResult:
    base: dict[str, object] = dict(group="kill -9 of `dpfreeze upgrade`", name="stopped", exit="killed",
                                   said="(nothing: killed)", lines=0, traceback=False, frw_cleared_s=3.5,
                                   daemon=True, forwards=True, lost={"newflow": 0, "established": 0})
    return CellResult(**{**base, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize("change", [dict(frw_cleared_s=None), dict(daemon=False), dict(forwards=False),
                                    dict(traceback=True), dict(lines=2), dict(injected=False)])
def test_a_cell_holds_the_rule_only_when_every_part_of_it_held(change: dict[str, object]) -> None:
    assert _result().held
    assert not _result(**change).held


def test_the_table_round_trips_and_lands_between_the_markers(tmp_path: Path) -> None:
    matrix = Matrix([_result(), _result(name="thaw", frw_cleared_s=None, said="a | b")],
                    {"kernel": "6.1", "ovs": "3.1.0", "date": "today"})
    again = Matrix.from_json(matrix.to_json())
    assert again == matrix
    table = faults.markdown(again)
    assert "| kill -9 of `dpfreeze upgrade` | stopped | killed | (nothing: killed) | 3.5 s | yes |" in table
    assert "a \\| b" in table and "**broken**" in table and "1 of 2 cells held the rule." in table
    doc = tmp_path / "reliability.md"
    doc.write_text(f"# x\n\n{faults.MARKERS[0]}\nold table\n{faults.MARKERS[1]}\n\n## after\n")
    faults.update_doc(doc, table)
    text = doc.read_text()
    assert "old table" not in text and table in text and text.endswith("\n## after\n")
    faults.update_doc(doc, table)  # again: the same document
    assert doc.read_text() == text
    doc.write_text("no markers\n")
    with pytest.raises(ValueError):
        faults.update_doc(doc, table)


def test_every_cell_of_the_issue_is_in_the_matrix() -> None:
    names = {f"{c.group}: {c.name}" for c in faults.cells()}
    for phase in faults.PHASES:
        assert f"kill -9 of `dpfreeze upgrade`: {phase}" in names
        assert f"kill -9 of the service `upgrade` started: {phase}" in names
    for needed in ("kill -9 of the old ovs-vswitchd", "kill -9 of the new ovs-vswitchd",
                   "ovsdb-server restarted",
                   "datapath deleted, then rmmod", "delete storm", "state directory: full",
                   "state directory: read-only", "state file: corrupt", "state file: truncated",
                   "state file: non-UTF-8", "state file: foreign", "two upgrades", "snapshot file"):
        assert any(needed in n for n in names), needed


def _samples(fds: list[int], rss: list[int], lost: int = 0) -> Soak:
    return Soak([Sample(i + 1, 20.0, True, f, r, 90, 30000, 12, {"newflow": lost if i == 2 else 0})
                 for i, (f, r) in enumerate(zip(fds, rss, strict=True))], {"date": "today"})


def test_a_soak_judges_growth_on_the_service_between_its_first_and_last_fifth() -> None:
    steady = _samples([20] * 10, [40000] * 5 + [41000] * 5)
    assert steady.growth()["service_fds"] == 0 and steady.growth()["service_rss_kb"] == 1000
    assert steady.verdict() == (True, "10 upgrades, nothing lost, nothing grew")
    leaking = _samples(list(range(20, 30)), [40000 + 2000 * i for i in range(10)], lost=3)
    ok, line = leaking.verdict()
    assert not ok and "3 packets lost" in line and "descriptors grew by 8" in line and "memory grew" in line
    table = leaking.markdown()
    assert "| service descriptors | 20 | 29 | 8 |" in table and "Verdict: FAILED" in table
    assert json.loads(leaking.to_json())["ok"] is False
