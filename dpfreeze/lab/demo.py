"""`dpfreeze demo`: the main job, end to end, on the real kernel datapath.

lab up (private OVS, two namespaces, the bench's OpenFlow table) -> continuity probes -> `dpfreeze upgrade`
in the middle of the traffic -> probes stopped -> the continuity report (JSON, text, SVG timeline) and the
upgrade's own report in the out directory.  A few seconds of traffic: it runs under qemu TCG.  It is the
bench's dpfreeze leg run once, so the demo and the benchmark measure the same thing.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import trio
from rich.console import Console

from dpfreeze.lab.bench_upgrade import BenchSpec, RunResult, lab_ctx, measure
from dpfreeze.probe import Report
from dpfreeze.probe.render import table, timeline

# Lighter traffic than the bench: the demo must give a clean answer on a slow or shared TCG host too.
SPEC = BenchSpec(runs=1, methods=("dpfreeze",), rate=200.0, newflow_ms=50.0, lead_s=1.0, settle_s=1.0,
                 tail_s=1.0)


BEGIN, END = "dpfreeze begins", "dpfreeze done"


def verdict(res: RunResult, report: Report | None) -> tuple[bool, str]:
    """Hitless or not, and the line that says so: every probe class counts (established, new flows, TCP,
    ARP, ND) from the moment dpfreeze begins to the end of its hand-over, and the TCP connection must
    survive.  Losses outside that window (the probe rig's own, at the edges of the run) are named too."""
    if res.error:
        return False, f"upgrade FAILED: {res.error}"
    if report is None or not {BEGIN, END} <= {e.name for e in report.events}:
        return False, "NOT measured: the probes gave no report of the whole upgrade"
    window = report.lost_between(BEGIN, END)
    problems = [f"{lost} {name} lost" for name, (lost, _) in window.items() if lost]
    problems += [f"the TCP connection {'broke' if c.tcp.connected else 'never connected'}"
                 for c in report.classes if c.tcp is not None and not c.tcp.survived]
    outside = [f"{c.lost - window[c.name][0]} {c.name}" for c in report.classes if c.lost > window[c.name][0]]
    aside = f"; outside the upgrade: {', '.join(outside)} lost" if outside else ""
    if not problems:
        return True, ("HITLESS: 0 lost in every class (established, new flows, TCP, ARP, ND) from the freeze "
                      f"to the end of the hand-over, TCP survived{aside}")
    gaps = [c.largest_gap_ms for c in report.classes if c.name == "established"]
    gap = f" (largest established gap {gaps[0]:.1f} ms)" if gaps else ""
    return False, f"NOT hitless: {', '.join(problems)} during the upgrade{gap}{aside}"


def render(report: Report | None, res: RunResult) -> str:
    """The text report: probe table, timeline of events and losses, the verdict."""
    console = Console(file=io.StringIO(), width=120, record=True)
    if report is not None:
        console.print(table(report))
        for line in timeline(report):
            console.print(line, highlight=False, markup=False)
    console.print(f"upcall storm: {res.excess_misses} misses beyond the new flows' own and the replays "
                  f"({res.missed} missed, {res.expected_misses} new flows, {res.replayed} replayed)",
                  highlight=False, markup=False)
    console.print(verdict(res, report)[1], highlight=False, markup=False)
    return console.export_text()


async def demo(out: Path) -> tuple[RunResult, bool, dict[str, Path]]:
    from dpfreeze.lab.topology import lab_down

    out.mkdir(parents=True, exist_ok=True)
    name = f"demo{os.getpid()}"
    scratch = Path(tempfile.mkdtemp(prefix="dpfz-demo-"))
    try:
        _, ctx = await lab_ctx(name, out, scratch)
        res, report = await measure(ctx, SPEC, "dpfreeze", 1, out, stem="continuity")
        upgrade: dict[str, Any] | None = ctx.extra.get("upgrade")
    finally:
        with trio.CancelScope(shield=True):
            await lab_down(name)
        shutil.rmtree(scratch, ignore_errors=True)
    paths = {"text": out / "continuity.txt"}
    paths["text"].write_text(render(report, res))
    if report is not None:
        paths["json"], paths["plot"] = out / "continuity.json", out / "continuity.svg"
    if upgrade is not None:
        paths["upgrade"] = out / "upgrade.json"
        paths["upgrade"].write_text(json.dumps(upgrade, indent=1) + "\n")
    return res, verdict(res, report)[0], paths
