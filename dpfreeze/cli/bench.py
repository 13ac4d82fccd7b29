"""`dpfreeze bench dpif|upgrade|checkpoint`: our netlink path against ovs-dpctl, stock restarts against
`dpfreeze upgrade` under the same probe traffic, and what the crash guard's checkpoint costs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from dpfreeze.errors import UserError
from dpfreeze.lab.bench_checkpoint import CheckpointSpec, bench_checkpoint
from dpfreeze.lab.bench_dpif import codec_bench, compile_bytecode, encoder_bench, kernel_bench
from dpfreeze.lab.bench_upgrade import (
    DATAPATH_TYPES,
    KMOD_METHODS,
    METHODS,
    BenchSpec,
    bench,
    need_kernel_datapath,
)
from dpfreeze.lab.sandbox import SandboxError


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("bench", help="benchmarks")
    sub = p.add_subparsers(dest="bench_command", metavar="WHAT", required=True)
    _add_upgrade(sub)
    d = sub.add_parser("dpif", help="netlink dump/install against ovs-dpctl (root, openvswitch module)")
    d.add_argument("--flows", type=int, default=100_000, help="number of flows (default 100000)")
    d.add_argument("--dp", default="dpbench0", help="scratch datapath name (created and deleted)")
    d.add_argument("--json", type=Path, help="also write the results as JSON here")
    d.add_argument("--codec-only", action="store_true", help="only our codec vs pyroute2 (no kernel needed)")
    d.set_defaults(handler=cmd_bench_dpif)
    c = sub.add_parser("checkpoint", help="the crash guard's OpenFlow checkpoint on a busy bridge: its CPU "
                       "and memory (a private OVS, natively)")
    c.add_argument("--rules", type=int, default=CheckpointSpec.rules, help="OpenFlow rules (default 20000)")
    c.add_argument("--churn", type=int, default=CheckpointSpec.churn, help="rules changed per second (100)")
    c.add_argument("--seconds", type=float, default=CheckpointSpec.seconds, help="each window (30)")
    c.add_argument("--datapath", choices=("netdev", "system"), default=CheckpointSpec.datapath,
                   help="netdev runs natively (default); system needs openvswitch.ko")
    c.add_argument("--out", type=Path, default=Path("bench-checkpoint"), help="results directory")
    c.set_defaults(handler=cmd_bench_checkpoint)


def _add_upgrade(sub: Any) -> None:
    p = sub.add_parser(
        "upgrade", help="stock OVS restarts vs dpfreeze upgrade, same traffic (kernel datapath in the VM, "
        "or --datapath netdev natively)")
    p.add_argument("--out", type=Path, default=Path("bench-upgrade"), help="results directory")
    p.add_argument("--runs", type=int, default=BenchSpec.runs, help="runs per method (default 3)")
    p.add_argument("--methods", default=",".join(BenchSpec.methods),
                   help=f"comma-separated, of {', '.join(METHODS)} (default all)")
    p.add_argument("--rate", type=float, default=BenchSpec.rate, help="established pps (500)")
    p.add_argument("--newflow-ms", type=float, default=BenchSpec.newflow_ms,
                   help="a new flow every T ms (20)")
    p.add_argument("--openflow-rules", type=int, default=0, metavar="N",
                   help="add N OpenFlow rules no probe matches, as a controller-programmed host has (0)")
    p.add_argument("--flows", type=int, default=0, metavar="N",
                   help="fill the datapath with N flows no probe hits, kept by the daemon, before each run "
                        "(kernel datapath; 0)")
    p.add_argument("--datapath", choices=DATAPATH_TYPES, default=BenchSpec.datapath,
                   help="system: openvswitch.ko (in the test VM, default); netdev: the userspace datapath, "
                        "runs natively without the module")
    p.set_defaults(handler=cmd_bench)


async def cmd_bench_checkpoint(args: argparse.Namespace) -> int:
    if not 1 <= args.rules <= 1_000_000 or not 1 <= args.churn <= args.rules or not 5 <= args.seconds <= 3600:
        raise UserError("need --rules 1..1000000, --churn 1..rules and --seconds 5..3600")
    if args.datapath == "system":
        need_kernel_datapath("bench checkpoint")
    spec = CheckpointSpec(args.rules, args.churn, args.seconds, args.datapath)
    try:
        await bench_checkpoint(spec, args.out)
    except SandboxError as exc:
        raise UserError(f"the lab failed: {exc}") from None
    print((args.out / "bench-checkpoint.md").read_text())
    print(f"results: {args.out / 'bench-checkpoint.json'}")
    return 0


async def cmd_bench(args: argparse.Namespace) -> int:
    methods = tuple(m for m in args.methods.split(",") if m)
    if bad := [m for m in methods if m not in METHODS]:
        raise UserError(f"unknown method {bad[0]!r}: {', '.join(METHODS)}")
    if not methods or not 1 <= args.runs <= 50 or args.rate <= 0 or args.newflow_ms <= 0:
        raise UserError("need at least one method, --runs 1..50, positive --rate and --newflow-ms")
    if not 0 <= args.openflow_rules <= 1_000_000:
        raise UserError("--openflow-rules: 0..1000000")
    if not 0 <= args.flows <= 1_000_000:
        raise UserError("--flows: 0..1000000")
    if args.flows and args.datapath == "netdev":
        raise UserError("--flows: a userspace datapath's flows live in its daemon; use the kernel datapath")
    if args.datapath == "system":
        need_kernel_datapath("bench upgrade")
    elif kmod := [m for m in methods if m in KMOD_METHODS]:
        raise UserError(f"method {kmod[0]} reloads openvswitch.ko; a userspace datapath (--datapath netdev) "
                        "does not use the module")
    compile_bytecode()  # the methods run `dpfreeze` as processes: as installed, with its bytecode
    spec = BenchSpec(runs=args.runs, methods=methods, rate=args.rate, newflow_ms=args.newflow_ms,
                     datapath=args.datapath, openflow_rules=args.openflow_rules, flows=args.flows)
    try:
        doc = await bench(spec, args.out)
    except SandboxError as exc:
        raise UserError(f"the lab failed: {exc}") from None
    print()
    print((args.out / "bench-upgrade.md").read_text())
    print(f"results: {args.out / 'bench-upgrade.json'}, table: {args.out / 'bench-upgrade.md'}")
    # A failing method is a result (reported above); a run with no measurement is a broken bench.
    return 0 if all(r["established_sent"] is not None for r in doc["runs"]) else 1


async def cmd_bench_dpif(args: argparse.Namespace) -> int:
    if args.flows <= 0 or args.flows > 1 << 24:
        raise UserError("--flows must be between 1 and 16777216")
    results: dict[str, float] = {}
    if not args.codec_only:
        compile_bytecode()
        results |= await kernel_bench(args.dp, args.flows)
    results |= {f"codec_{k}": v for k, v in codec_bench(min(args.flows, 20_000)).items()}
    results |= {f"add_flows_text_{k}": v for k, v in encoder_bench(args.flows).items()}
    for k, v in results.items():
        print(f"{k:32} {v:12.3f}" if isinstance(v, float) else f"{k:32} {v:12}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0
