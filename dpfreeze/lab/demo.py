"""`dpfreeze demo`: the main job, the real event: OVS upgraded by its Debian packages under systemd, stock
and with dpfreeze, side by side under the continuity probes.

On a host where systemd runs Debian's openvswitch units (the test VM booted with `--systemd`; never a host
that matters: it installs packages and units): two namespaces on a bridge of the system's OVS, with the
bench's OpenFlow rule (every new flow is an upcall), then twice `dpkg -i` of the new packages over the old:
once as stock has it, once with dpfreeze installed as docs/operations.md says.  Before each, the old
version is put back (with dpfreeze's units, so that preparation loses nothing either); it is not measured.
Out: both probe reports (JSON), one table and one picture (each class over time, the two runs aligned on
the `dpkg -i`), the verdict, and the exit status that says it.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio
from rich.console import Console
from rich.table import Table

from dpfreeze import command
from dpfreeze.errors import UserError
from dpfreeze.lab.bench_upgrade import BENCH_FLOW
from dpfreeze.probe import Endpoint, ProbeSpec, Report, Timeline, run_probes
from dpfreeze.probe.render import compare_svg

STEP_TIMEOUT = 600.0  # one dpkg run under qemu TCG: a minute or two, more on a loaded host
DPKG = "dpkg -i"


@dataclass(frozen=True)
class HostRig:
    """Two namespaces on veth ports of a bridge of the system's OVS: 10.<subnet>.0.1-2, fd00:<subnet>::1-2."""

    bridge: str
    names: tuple[str, str]
    subnet: int

    async def up(self) -> tuple[Endpoint, Endpoint]:
        await sh("ovs-vsctl", "--may-exist", "add-br", self.bridge)
        for i, ns in enumerate(self.names, 1):
            await sh("ip", "netns", "add", ns)
            await sh("ip", "link", "add", f"{ns}-o", "type", "veth", "peer", "name", f"{ns}-i")
            await sh("ip", "link", "set", f"{ns}-i", "netns", ns)
            await sh("ovs-vsctl", "add-port", self.bridge, f"{ns}-o")
            await sh("ip", "link", "set", f"{ns}-o", "up")
            await sh("ip", "-n", ns, "link", "set", "lo", "up")
            await sh("ip", "-n", ns, "addr", "add", f"10.{self.subnet}.0.{i}/24", "dev", f"{ns}-i")
            await sh("ip", "-n", ns, "addr", "add", f"fd00:{self.subnet}::{i}/64", "dev", f"{ns}-i", "nodad")
            await sh("ip", "-n", ns, "link", "set", f"{ns}-i", "up")
        await sh("ip", "netns", "exec", self.names[0], "ping", "-c", "2", "-W", "5", f"10.{self.subnet}.0.2")
        return Endpoint(f"{self.names[0]}-i", self.names[0]), Endpoint(f"{self.names[1]}-i", self.names[1])

    async def down(self) -> None:
        for ns in self.names:
            await sh("ip", "netns", "del", ns, check=False)
            await sh("ovs-vsctl", "--if-exists", "del-port", self.bridge, f"{ns}-o", check=False)
        await sh("ovs-vsctl", "--if-exists", "del-br", self.bridge, check=False)


async def sh(*argv: str, check: bool = True, timeout: float = STEP_TIMEOUT) -> str:
    return (await command.run(argv, timeout=timeout, check=check)).text.strip()


def probe_spec(ends: tuple[Endpoint, Endpoint], first: int) -> ProbeSpec:
    """200 pps established, a new flow every 20 ms, TCP, ARP and ND; generous agent timeouts for TCG."""
    return ProbeSpec(src=ends[0], dst=ends[1], rate=200.0, newflow_ms=20.0, newflow_hosts=False,
                     newflow_first=first, lead_s=2.0, tail_s=3.0, ready_timeout_s=300.0, stop_timeout_s=120.0)


def install(debs: Sequence[Path], label: str) -> Callable[[Timeline], object]:
    """The disruption: `dpkg -i` of the packages, in the order given, as an operator runs it."""
    async def disrupt(tl: Timeline) -> None:
        tl.mark(f"{DPKG} {label}")
        await sh("dpkg", "-i", *map(str, debs))
        tl.mark("dpkg done")
    return disrupt


async def dpkg_version() -> str:
    return await sh("dpkg-query", "-W", "-f", "${Version}", "openvswitch-switch")


@dataclass
class DemoResult:
    old: str = ""
    new: str = ""
    runs: dict[str, Report] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)


def verdict(runs: dict[str, Report]) -> tuple[bool, str]:
    """Hitless: dpfreeze's run lost nothing in any class over the whole run, and its TCP connection lived."""
    ours = runs.get("dpfreeze")
    if ours is None:
        return False, "NOT measured: the probes gave no report of dpfreeze's upgrade"
    problems = [f"{c.lost} {c.name} lost" for c in ours.classes if c.lost]
    problems += [f"the TCP connection {'broke' if c.tcp.connected else 'never connected'}"
                 for c in ours.classes if c.tcp is not None and not c.tcp.survived]
    stock = runs.get("stock")
    beside = ""
    if stock is not None:
        lost = ", ".join(f"{c.lost} {c.name}" for c in stock.classes if c.lost)
        beside = f"; stock lost {lost}" if lost else "; stock lost nothing either"
    if problems:
        return False, f"NOT hitless: {', '.join(problems)}{beside}"
    return True, ("HITLESS: 0 lost in every class (established, new flows, TCP, ARP, ND), TCP survived"
                  f"{beside}")


def summary_table(runs: dict[str, Report]) -> Table:
    t = Table(title="per class: lost of sent, largest gap, slowest delivery")
    t.add_column("class")
    for name in runs:
        t.add_column(name, justify="right")
    for i, c in enumerate(next(iter(runs.values())).classes):
        cells = []
        for rep in runs.values():
            r = rep.classes[i]
            slow = f"{r.latency.max_ms / 1000:.1f} s" if r.latency else "-"
            lost = f"[bold red]{r.lost}[/]" if r.lost else "0"
            cells.append(f"{lost}/{r.sent}, gap {r.largest_gap_ms / 1000:.1f} s, slowest {slow}")
        t.add_row(c.name, *cells)
    return t


def render(res: DemoResult) -> str:
    console = Console(file=io.StringIO(), width=140, record=True)
    console.print(f"OVS {res.old} -> {res.new} by `dpkg -i`, under systemd, stock and with dpfreeze",
                  highlight=False, markup=False)
    if res.runs:
        console.print(summary_table(res.runs))
    console.print(verdict(res.runs)[1], highlight=False, markup=False)
    return console.export_text()


async def _need_systemd_host() -> None:
    if Path("/proc/1/comm").read_text().strip() != "systemd":
        raise UserError("the demo needs systemd as PID 1 running Debian's openvswitch units (the test VM: "
                        "`vm-tests/vm.py run --systemd`)")
    if await sh("systemctl", "is-active", "openvswitch-switch", check=False) != "active":
        raise UserError("openvswitch-switch.service is not active")


async def demo(out: Path, old_debs: Sequence[Path], new_debs: Sequence[Path],
               progress: Callable[[str], None] = print) -> tuple[bool, DemoResult]:
    await _need_systemd_host()
    out.mkdir(parents=True, exist_ok=True)
    res = DemoResult(new=await dpkg_version())
    rig = HostRig("brdemo", ("dpdemoa", "dpdemob"), 94)
    # Debian 3.1's ovs-record-hostname.service, required by openvswitch-switch.service, does not exist in
    # older packages: left enabled, every restart after a downgrade fails (docs/operations.md).
    await sh("systemctl", "disable", "ovs-record-hostname.service", check=False)
    try:
        ends = await rig.up()
        await sh("ovs-ofctl", "add-flow", rig.bridge, BENCH_FLOW)
        for first, who in enumerate(("stock", "dpfreeze")):
            progress(f"demo: {who}: putting the old packages back (with dpfreeze's units: nothing lost)")
            await sh("dpfreeze", "install-units")
            await sh("dpkg", "-i", *map(str, old_debs))
            res.old = await dpkg_version()
            if who == "stock":
                await sh("dpfreeze", "install-units", "--uninstall")
            await sh("ovs-ofctl", "add-flow", rig.bridge, BENCH_FLOW)  # as the controller would
            progress(f"demo: {who}: dpkg -i {res.new} over {res.old}, under the probes")
            report = await run_probes(probe_spec(ends, first * 10000), install(new_debs, res.new))  # type: ignore[arg-type]
            res.runs[who] = report
            res.paths[f"{who}-json"] = out / f"{who}.json"
            res.paths[f"{who}-json"].write_text(report.to_json())
    finally:
        with trio.CancelScope(shield=True):
            await rig.down()
    res.paths["plot"] = out / "upgrade.svg"
    res.paths["plot"].write_text(compare_svg(list(res.runs.items()), f"{DPKG} {res.new}",
                                             f"OVS {res.old} -> {res.new} by dpkg -i under systemd"))
    res.paths["text"] = out / "demo.txt"
    res.paths["text"].write_text(render(res))
    hitless, line = verdict(res.runs)
    res.paths["json"] = out / "demo.json"
    res.paths["json"].write_text(json.dumps({"old": res.old, "new": res.new, "verdict": line,
                                             "hitless": hitless}, indent=1) + "\n")
    return hitless, res
