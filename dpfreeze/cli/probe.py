"""`dpfreeze probe run | show`: continuity probes from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import trio
from rich.console import Console

from dpfreeze.errors import UserError
from dpfreeze.probe.render import svg, table, timeline
from dpfreeze.probe.report import Report, report_from_json
from dpfreeze.probe.run import (
    Disruption,
    Endpoint,
    ProbeError,
    ProbeSpec,
    Timeline,
    run_probes,
    sleep_disruption,
)


def add_commands(sub: Any) -> None:
    p = sub.add_parser("probe", help="continuity probes: prove an upgrade was hitless")
    probe_sub = p.add_subparsers(dest="probe_command", metavar="ACTION", required=True)
    r = probe_sub.add_parser("run", help="run every probe class between two endpoints and report")
    where = r.add_argument_group("endpoints (NETNS:IFACE or IFACE, or two namespaces of a lab)")
    where.add_argument("--src", type=Endpoint.parse, help="sending end")
    where.add_argument("--dst", type=Endpoint.parse, help="receiving end")
    where.add_argument("--lab", help="use the lab's namespaces (see `dpfreeze lab up`)")
    where.add_argument("--pair", default="1,2", help="lab namespace indexes SRC,DST (default 1,2)")
    r.add_argument("--duration", type=float, default=3.0, help="seconds of traffic with no --during (3)")
    r.add_argument("--during", metavar="CMD", help="shell command run mid-window (e.g. an OVS restart)")
    r.add_argument("--rate", type=float, default=1000.0, help="established stream, pps in all (1000)")
    r.add_argument("--flows", type=int, default=4, help="established flows (4)")
    r.add_argument("--newflow-ms", type=float, default=50.0, help="a new flow every T ms, 0 = off (50)")
    r.add_argument("--newflow-ip-base", help="new flows also get new source IPs from BASE..BASE+63")
    r.add_argument("--no-tcp", action="store_true", help="no long-lived TCP connection")
    r.add_argument("--resolve-ms", type=float, default=100.0, help="ARP and ND attempt interval, 0 = off")
    r.add_argument("--json", type=Path, metavar="FILE", help="write the report (JSON) here")
    r.add_argument("--svg", type=Path, metavar="FILE", help="write the timeline plot (SVG) here")
    r.set_defaults(handler=_run)
    s = probe_sub.add_parser("show", help="print a saved report (and optionally plot it)")
    s.add_argument("report", type=Path)
    s.add_argument("--svg", type=Path, metavar="FILE")
    s.set_defaults(handler=_show)


def _endpoints(args: argparse.Namespace) -> tuple[Endpoint, Endpoint]:
    if args.lab:
        from dpfreeze.lab.topology import load

        eps = load(args.lab).endpoints()
        try:
            i, j = (int(x) for x in args.pair.split(","))
            return eps[i - 1], eps[j - 1]
        except (ValueError, IndexError):
            raise UserError(f"--pair {args.pair}: lab {args.lab} has namespaces 1..{len(eps)}") from None
    if not (args.src and args.dst):
        raise UserError("give --src and --dst, or --lab")
    return args.src, args.dst


def _shell(cmd: str) -> Disruption:
    async def disrupt(tl: Timeline) -> None:
        tl.mark("during-start")
        res = await trio.run_process(["sh", "-c", cmd], check=False)
        tl.mark(f"during-end (exit {res.returncode})")

    return disrupt


def _emit(report: Report, json_path: Path | None, svg_path: Path | None) -> None:
    console = Console()
    console.width = max(console.width, 120)
    console.print(table(report))
    for line in timeline(report):
        console.print(line, highlight=False, markup=False)
    for key, what in (("receiver_drops", "frames dropped by the receiver's own socket (not the network)"),
                      ("send_errors", "frames the sender failed to send")):
        if report.params.get(key):
            why = report.params.get("send_errnos") if key == "send_errors" else None
            console.print(f"[yellow]warning: {report.params[key]} {what}[/]" + (f" {why}" if why else ""),
                          markup=True, highlight=False)
    if json_path:
        json_path.write_text(report.to_json())
        console.print(f"report: {json_path}")
    if svg_path:
        svg_path.write_text(svg(report))
        console.print(f"plot: {svg_path}")


async def _run(args: argparse.Namespace) -> int:
    src, dst = _endpoints(args)
    if args.rate <= 0 or args.flows < 1 or args.duration <= 0:
        raise UserError("--rate, --flows and --duration must be positive")
    spec = ProbeSpec(src=src, dst=dst, rate=args.rate, flows=args.flows, newflow_ms=args.newflow_ms,
                     newflow_ip_base=args.newflow_ip_base, tcp_port=0 if args.no_tcp else 47001,
                     arp_ms=args.resolve_ms, nd_ms=args.resolve_ms)
    disruption = _shell(args.during) if args.during else sleep_disruption(args.duration)
    try:
        report = await run_probes(spec, disruption)
    except ProbeError as exc:
        raise UserError(str(exc)) from None
    _emit(report, args.json, args.svg)
    return 0


def _show(args: argparse.Namespace) -> int:
    try:
        report = report_from_json(args.report.read_text())
    except ValueError as exc:
        raise UserError(f"{args.report}: {exc}") from None
    _emit(report, None, args.svg)
    return 0



