"""`dpfreeze bench checkpoint`: what the crash guard's OpenFlow checkpoint costs on a busy bridge.

One private OVS, N OpenFlow rules, a controller-like churn (`churn` rules changed per second, in one
`add-flows` a second).  Two windows of the same length: the churn alone, then the churn with the
checkpoint following the bridge.  The checkpoint's cost is the difference: CPU seconds of this process, of
its children (the ovs-ofctl it runs) and of ovs-vswitchd, and the memory the copy holds.  Also measured:
how stale the copy gets (from a change to the dump that holds it).
"""

from __future__ import annotations

import json
import os
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import trio

from dpfreeze.freeze.checkpoint import Checkpoint
from dpfreeze.lab.sandbox import Sandbox, sandbox
from dpfreeze.ovs.ovsenv import VSWITCHD, proc_stat


@dataclass(frozen=True)
class CheckpointSpec:
    rules: int = 20_000
    churn: int = 100  # rules changed per second
    seconds: float = 30.0
    datapath: str = "netdev"


@dataclass(frozen=True)
class Window:
    cpu_self_s: float
    cpu_children_s: float
    cpu_vswitchd_s: float
    dumps: int = 0
    max_staleness_s: float | None = None


def rule(i: int, gen: int) -> str:
    """Rule i of the table; a later `gen` replaces it (same match: the table keeps its size)."""
    ip = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
    return f"cookie={gen:#x},table=0,priority=5,udp,nw_dst={ip},actions=drop"


def _cpu(pid: int) -> tuple[float, float, float]:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    fields = proc_stat(pid) or []
    tick = os.sysconf("SC_CLK_TCK")
    daemon = (int(fields[11]) + int(fields[12])) / tick if len(fields) > 12 else 0.0
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime, daemon


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _add_flows(sb: Sandbox, bridge: str, lines: list[str], scratch: Path) -> None:
    path = scratch / "flows"
    path.write_text("\n".join(lines) + "\n")
    await sb.run("ovs-ofctl", "add-flows", bridge, str(path), timeout=600)


async def _window(sb: Sandbox, bridge: str, spec: CheckpointSpec, scratch: Path, gen0: int,
                  checkpoint: Checkpoint | None) -> Window:
    pid = sb.env.pid(VSWITCHD)
    stale: list[float] = []
    pending: dict[str, float] = {}  # rule -> when it was changed, until the copy holds it
    before = _cpu(pid)
    dumps0 = checkpoint.dumps if checkpoint else 0
    deadline = trio.current_time() + spec.seconds
    gen = gen0
    while trio.current_time() < deadline:
        gen += 1
        start = (gen * spec.churn) % spec.rules
        lines = [rule(i % spec.rules, gen) for i in range(start, start + spec.churn)]
        await _add_flows(sb, bridge, lines, scratch)
        now = time.monotonic()
        if checkpoint is not None:
            pending[f"cookie={gen:#x},"] = now
            held = " ".join(checkpoint.bridges[bridge].flows) if bridge in checkpoint.bridges else ""
            for key, t in list(pending.items()):
                if key in held:
                    stale.append(now - t)
                    del pending[key]
        await trio.sleep(1.0)
    after = _cpu(pid)
    return Window(after[0] - before[0], after[1] - before[1], after[2] - before[2],
                  (checkpoint.dumps - dumps0) if checkpoint else 0, max(stale) if stale else None)


async def bench_checkpoint(spec: CheckpointSpec, out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    async with sandbox(spec.datapath) as sb:
        bridge = await sb.add_bridge()
        scratch = sb.base
        await _add_flows(sb, bridge, [rule(i, 0) for i in range(spec.rules)], scratch)
        alone = await _window(sb, bridge, spec, scratch, 1, None)
        rss0 = _rss_mb()
        cp = Checkpoint(sb.env, scratch / "openflow.checkpoint", paused=lambda: False)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cp.run)
            with trio.fail_after(600):
                while bridge not in cp.bridges:
                    await trio.sleep(0.1)
            followed = await _window(sb, bridge, spec, scratch, 1_000_000, cp)
            copy_mb = _rss_mb() - rss0
            nursery.cancel_scope.cancel()
        held = len(cp.bridges[bridge].flows)
        saved = cp.path.stat().st_size if cp.path.exists() else None
    doc = {"spec": asdict(spec), "churn_alone": asdict(alone), "with_checkpoint": asdict(followed),
           "flows_held": held, "copy_mb": round(copy_mb, 1), "file_bytes": saved}
    (out / "bench-checkpoint.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / "bench-checkpoint.md").write_text(markdown(doc))
    return doc


def markdown(doc: dict[str, Any]) -> str:
    s, a, b = doc["spec"], doc["churn_alone"], doc["with_checkpoint"]
    secs = s["seconds"]

    def pct(key: str) -> str:
        return f"{100 * (b[key] - a[key]) / secs:.1f} %"
    stale = f"{b['max_staleness_s']:.1f} s" if b["max_staleness_s"] is not None else "n/a"
    return (f"`dpfreeze bench checkpoint`: {s['rules']} OpenFlow rules, {s['churn']} changed per second, "
            f"{secs:g} s windows, {s['datapath']} datapath.\n\n"
            "| cost of the checkpoint (with it minus the churn alone) | |\n|---|---|\n"
            f"| CPU, the service (of one core) | {pct('cpu_self_s')} |\n"
            f"| CPU, the ovs-ofctl it runs | {pct('cpu_children_s')} |\n"
            f"| CPU, ovs-vswitchd answering its dumps | {pct('cpu_vswitchd_s')} |\n"
            f"| memory of the copy (RSS growth once it runs) | {doc['copy_mb']:.1f} MB |\n"
            f"| dumps in the window | {b['dumps']} |\n"
            f"| copy at most this far behind a change | {stale} |\n"
            f"| rules held; file | {doc['flows_held']}; {doc['file_bytes']} bytes |\n")
