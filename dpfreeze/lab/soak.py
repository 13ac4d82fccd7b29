"""`dpfreeze lab soak`: many upgrades in a row under traffic, looking for what grows.

One lab on the kernel datapath, one `dpfreeze serve` running throughout (as systemd runs it), then N
`dpfreeze upgrade` commands back to back under one probe run.  After each: the service's open descriptors
and resident memory, the new ovs-vswitchd's, the datapath's flow count, and what the probes lost during
that upgrade.  Growth is judged on the service, the process that lives through every upgrade: the last
fifth of the runs against the first fifth.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import trio

from dpfreeze.lab.bench_upgrade import BENCH_FLOW, DaemonReaper, lab_ctx
from dpfreeze.lab.faults import Rig, dpfreeze_argv, lost_between, meta, sh, vswitchd_pid
from dpfreeze.ovs.ovsenv import process_alive
from dpfreeze.probe import ProbeSpec, Report, Timeline, run_probes

CLASSES = ("established", "newflow", "tcp", "arp", "nd")
MARKERS = ("<!-- soak: begin (dpfreeze lab soak --doc) -->", "<!-- soak: end -->")


@dataclass
class Sample:
    run: int
    seconds: float
    ok: bool
    service_fds: int
    service_rss_kb: int
    vswitchd_fds: int
    vswitchd_rss_kb: int
    datapath_flows: int
    lost: dict[str, int]


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd")) if pid else 0


def fd_targets(pid: int) -> dict[int, str]:
    """What each open descriptor of `pid` is (a socket's inode, a file's path): what grew, named."""
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd") if pid else ():
        with contextlib.suppress(OSError):
            out[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
    return out


def rss_kb(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@dataclass
class Soak:
    samples: list[Sample]
    meta: dict[str, str]

    def growth(self) -> dict[str, float]:
        """Mean of the last fifth minus mean of the first fifth, per resource (at least one run each)."""
        k = max(1, len(self.samples) // 5)
        first, last = self.samples[:k], self.samples[-k:]
        out = {}
        for name in ("service_fds", "service_rss_kb", "vswitchd_fds", "datapath_flows"):
            mean = [sum(getattr(s, name) for s in part) / len(part) for part in (first, last)]
            out[name] = round(mean[1] - mean[0], 1)
        return out

    def verdict(self) -> tuple[bool, str]:
        g = self.growth()
        lost = sum(sum(s.lost.values()) for s in self.samples)
        failed = [s.run for s in self.samples if not s.ok]
        problems = []
        if failed:
            problems.append(f"upgrades {failed} failed")
        if lost:
            problems.append(f"{lost} packets lost")
        if g["service_fds"] > 0:
            problems.append(f"the service's descriptors grew by {g['service_fds']:g}")
        if g["service_rss_kb"] > 8192:  # allocator noise is a few MB at most; a leak per run adds up
            problems.append(f"the service's memory grew by {g['service_rss_kb'] / 1024:.1f} MB")
        if problems:
            return False, "; ".join(problems)
        return True, f"{len(self.samples)} upgrades, nothing lost, nothing grew"

    def to_json(self) -> str:
        ok, line = self.verdict()
        return json.dumps({"meta": self.meta, "samples": [asdict(s) for s in self.samples],
                           "growth": self.growth(), "ok": ok, "verdict": line}, indent=1) + "\n"

    def markdown(self) -> str:
        m, g = self.meta, self.growth()
        ok, line = self.verdict()
        s0, s1 = self.samples[0], self.samples[-1]
        secs = sorted(s.seconds for s in self.samples)
        rows = [f"`dpfreeze lab soak --upgrades {len(self.samples)}` on {m.get('date', '?')}: kernel "
                f"{m.get('kernel', '?')}, {m.get('ovs', '?')}; 100 pps established, a new flow every 50 ms, "
                "TCP, ARP, ND, one probe run throughout.", "",
                "| | first upgrade | last upgrade | growth (last fifth - first fifth) |", "|---|---|---|---|",
                f"| service descriptors | {s0.service_fds} | {s1.service_fds} | {g['service_fds']:g} |",
                f"| service RSS | {s0.service_rss_kb / 1024:.1f} MB | {s1.service_rss_kb / 1024:.1f} MB | "
                f"{g['service_rss_kb'] / 1024:.1f} MB |",
                f"| ovs-vswitchd descriptors | {s0.vswitchd_fds} | {s1.vswitchd_fds} | "
                f"{g['vswitchd_fds']:g} |",
                f"| datapath flows | {s0.datapath_flows} | {s1.datapath_flows} | {g['datapath_flows']:g} |",
                "", "Lost over all upgrades (established / new flows / TCP / ARP / ND): "
                + " / ".join(str(sum(s.lost.get(c, 0) for s in self.samples)) for c in CLASSES)
                + f".  Upgrade time: median {secs[len(secs) // 2]:.1f} s, slowest {secs[-1]:.1f} s.",
                "", f"Verdict: {'OK' if ok else 'FAILED'}: {line}."]
        return "\n".join(rows) + "\n"


async def _datapath_flows(rig: Rig) -> int:
    text = await sh("ovs-dpctl", "show", env=rig.environ(), check=False)
    for line in text.splitlines():
        if line.strip().startswith("flows:"):
            return int(line.split()[1])
    return -1


async def run_soak(out: Path, upgrades: int, progress: Callable[[str], None] = print) -> Soak:
    from dpfreeze.lab.topology import lab_down

    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="dpfz-soak-"))
    name = f"soak{os.getpid()}"
    samples: list[Sample] = []
    reaper = DaemonReaper()
    report: Report | None = None
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(reaper.run)
            try:
                _, ctx = await lab_ctx(name, out, scratch)
                reaper.env = ctx.sb.env
                rig = Rig(ctx.sb, dpfreeze_argv())
                await sh("ovs-ofctl", "add-flow", ctx.sb.bridges[0], BENCH_FLOW, env=rig.environ())
                with open(out / "soak-service.log", "wb") as log:
                    service = await trio.lowlevel.open_process([*rig.dpfreeze, "-v", "serve"], stdout=log,
                                                               stderr=subprocess.STDOUT, env=rig.environ())
                first_fds: dict[int, str] = {}
                try:
                    async def every_upgrade(tl: Timeline) -> None:
                        first_fds.update(fd_targets(service.pid))
                        for i in range(1, upgrades + 1):
                            t0 = trio.current_time()
                            tl.mark(f"upgrade {i}")
                            res = await trio.run_process(
                                [*rig.dpfreeze, "upgrade", "--ttl", "120"], capture_stdout=True,
                                capture_stderr=True, check=False, env=rig.environ())
                            seconds = trio.current_time() - t0
                            await trio.sleep(2.0)  # the hand-over's last replays, the probes' last replies
                            tl.mark(f"end {i}")
                            pid = vswitchd_pid(rig.env)
                            samples.append(Sample(i, round(seconds, 2), res.returncode == 0, fds(service.pid),
                                                  rss_kb(service.pid), fds(pid), rss_kb(pid),
                                                  await _datapath_flows(rig), {}))
                            progress(f"soak: {i}/{upgrades} {seconds:.1f} s, service fds "
                                     f"{samples[-1].service_fds}, rss {samples[-1].service_rss_kb} kB")
                            if res.returncode != 0:
                                (out / f"soak-failed-{i}.txt").write_bytes(res.stdout + res.stderr)

                    spec = ProbeSpec(src=ctx.endpoints[0], dst=ctx.endpoints[1], rate=100.0, newflow_ms=50.0,
                                     newflow_hosts=False, lead_s=5.0, tail_s=2.0, ready_timeout_s=300.0,
                                     stop_timeout_s=180.0)
                    report = await run_probes(spec, every_upgrade)
                    grown = {fd: t for fd, t in fd_targets(service.pid).items() if first_fds.get(fd) != t}
                    (out / "soak-service-fds.json").write_text(json.dumps(
                        {"before": first_fds, "new": grown, "netlink": Path("/proc/net/netlink").read_text()},
                        indent=1) + "\n")
                finally:
                    if process_alive(service.pid):
                        service.terminate()
                    with trio.CancelScope(shield=True), trio.move_on_after(30):
                        await service.wait()
            finally:
                with trio.CancelScope(shield=True):
                    await lab_down(name)
                    await trio.sleep(0.1)
                nursery.cancel_scope.cancel()
    finally:
        with contextlib.suppress(OSError):
            for p in scratch.iterdir():
                p.unlink()
            scratch.rmdir()
    assert report is not None
    (out / "soak-probes.json").write_text(report.to_json())
    marks = {e.name: e.t_ms for e in report.events}
    for s in samples:
        s.lost = lost_between(report, marks[f"upgrade {s.run}"], marks[f"end {s.run}"])
    soak = Soak(samples, await meta())
    (out / "soak.json").write_text(soak.to_json())
    (out / "soak.md").write_text(soak.markdown())
    return soak
