"""`dpfreeze snapshot save|show|diff|restore`: standalone, no service needed.

The CLI is where a provider is chosen (`datapaths.open_any`: "netdev@NAME" is a userspace datapath in the
running ovs-vswitchd, any other name a kernel one); the work itself is dpfreeze.snapshot's, the same
functions the freeze service calls.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import AsyncExitStack
from typing import Any

import trio

from dpfreeze.errors import UserError
from dpfreeze.ovs import datapaths, openflow
from dpfreeze.ovs.ovsenv import DaemonNotRunning
from dpfreeze.snapshot import (
    DatapathSnapshot,
    RestoreReport,
    Snapshot,
    SnapshotError,
    diff,
    flow_text,
    restore,
    take_snapshot,
)
from dpfreeze.snapshot.recreate import open_or_create
from dpif.model import DpFeature, NoSuchDatapath
from dpif.netdev_datapath import NoSuchNetdevDatapath, is_netdev_name
from dpif.unixctl import UnixctlUnreachable


def add_commands(sub: Any) -> None:
    p = sub.add_parser("snapshot", help="save, show, compare and restore datapath snapshots")
    ssub = p.add_subparsers(dest="snapshot_command", metavar="ACTION", required=True)

    s = ssub.add_parser("save", help="snapshot the datapath(s) and OpenFlow state to FILE")
    s.add_argument("file")
    s.add_argument("-d", "--datapath", action="append", help="only this datapath (repeatable; default all)")
    s.add_argument("--no-openflow", action="store_true", help="skip the OpenFlow state (no ovs-ofctl)")
    s.set_defaults(handler=cmd_save)

    s = ssub.add_parser("show", help="print a snapshot")
    s.add_argument("file")
    s.add_argument("--json", action="store_true", help="the whole body as JSON")
    s.add_argument("--flows", action="store_true", help="list every flow too")
    s.set_defaults(handler=cmd_show)

    s = ssub.add_parser("diff", help="compare two snapshots (exit 0: same, 1: different)")
    s.add_argument("a")
    s.add_argument("b")
    s.add_argument("--ignore-pids", action="store_true", help="do not compare upcall pids")
    s.set_defaults(handler=cmd_diff)

    s = ssub.add_parser("restore", help="re-create what is missing: datapath, vports, flows")
    s.add_argument("file")
    s.add_argument("-d", "--datapath", action="append", help="only this datapath (repeatable; default all)")
    s.add_argument("--openflow", action="store_true",
                   help="also restore the OpenFlow state into the running ovs-vswitchd")
    s.set_defaults(handler=cmd_restore)


def _load(path: str) -> Snapshot:
    try:
        return Snapshot.load(path)
    except SnapshotError as exc:
        raise UserError(str(exc)) from None


def _select(snap: Snapshot, names: list[str] | None) -> list[DatapathSnapshot]:
    try:
        return [snap.datapath(n) for n in names] if names else list(snap.datapaths)
    except SnapshotError as exc:
        raise UserError(str(exc)) from None


async def cmd_save(args: argparse.Namespace) -> int:
    names = args.datapath or await datapaths.all_names()
    if not names:
        raise UserError("no datapath exists (kernel, or userspace in a running ovs-vswitchd): nothing to "
                        "snapshot")
    async with AsyncExitStack() as stack:
        dps = []
        for name in names:
            try:
                dps.append(await stack.enter_async_context(datapaths.open_any(name)))
            except OSError as exc:
                raise UserError(f"{name}: {exc}") from None
        snap = await take_snapshot(*dps, with_openflow=not args.no_openflow)
    try:
        await trio.to_thread.run_sync(snap.save, args.file)
    except SnapshotError as exc:
        raise UserError(str(exc)) from None
    flows = sum(len(d.flows) for d in snap.datapaths)
    print(f"saved {args.file}: {len(snap.datapaths)} datapaths, {flows} flows, "
          f"{len(snap.openflow)} bridges' OpenFlow state" + (f", {len(snap.gaps)} gaps" if snap.gaps else ""))
    for gap in snap.gaps:
        print(f"  gap: {gap}")
    return 0


def _features(value: int) -> str:
    names = [f.name.lower() for f in DpFeature if value & f and f.name]
    return ",".join(names) or "none"


def _meters(d: DatapathSnapshot) -> str:
    if d.meters is None:
        return str(list(d.meter_ids))
    return ", ".join(r.describe() for r in d.meters)


def show_text(snap: Snapshot, with_flows: bool = False) -> list[str]:
    v = snap.versions
    out = [f"snapshot taken {snap.created} on {snap.host}"]
    if v:
        out.append(f"kernel {v.kernel}; ovs-vswitchd {v.vswitchd_running or '(not running)'}; "
                   f"installed {v.vswitchd_binary or '?'}")
    for d in snap.datapaths:
        i = d.info
        out.append(f"datapath {i.name}: features {_features(i.features)}; "
                   f"per-CPU pids {list(i.per_cpu_pids)}; {len(d.vports)} vports, {len(d.flows)} flows"
                   + (f"; meters used {_meters(d)}" if d.meter_ids else ""))
        for p in d.vports:
            extra = f" ifindex {p.ifindex}" if p.ifindex is not None else ""
            extra += f" options {p.options.hex()}" if p.options else ""
            out.append(f"  port {p.port_no}: {p.name} ({p.type.name.lower()}) upcall pids "
                       f"{list(p.upcall_pids)}{extra}")
        if with_flows:
            out += [f"  {flow_text(f)}" for f in d.flows]
    out += [f"netdev {n.describe()}" for n in snap.netdevs]
    out += [f"openflow {o.describe()}" for o in snap.openflow]
    out += [f"gap: {g}" for g in snap.gaps]
    return out


def cmd_show(args: argparse.Namespace) -> int:
    snap = _load(args.file)
    if args.json:
        json.dump(snap.to_json(), sys.stdout, indent=1, sort_keys=True)
        print()
    else:
        print("\n".join(show_text(snap, args.flows)))
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    a, b = _load(args.a), _load(args.b)
    differences = diff(a, b, with_pids=not args.ignore_pids)
    for d in differences:
        print(d)
    return 1 if differences else 0


async def cmd_restore(args: argparse.Namespace) -> int:
    snap = _load(args.file)  # refused before anything is touched
    targets = _select(snap, args.datapath)
    reports: list[RestoreReport] = []
    for dsnap in targets:
        try:
            if not is_netdev_name(dsnap.name):  # a userspace datapath is its daemon's to create
                await open_or_create(dsnap)
            async with datapaths.open_any(dsnap.name) as dp:
                reports.append(await restore(dp, snap))
        except (NoSuchDatapath, NoSuchNetdevDatapath, UnixctlUnreachable, DaemonNotRunning) as exc:
            raise UserError(f"{dsnap.name}: {exc}") from None
    of_lines: list[str] = []
    if args.openflow:
        try:
            for state in snap.openflow:
                of_lines += await openflow.restore_bridge(state)
        except openflow.OpenFlowError as exc:
            raise UserError(f"openflow restore: {exc}") from None
    for r in reports:
        print("\n".join(r.lines()))
    for line in of_lines:
        print(f"openflow {line}")
    return 0 if all(r.ok for r in reports) else 1
