"""`dpfreeze dpctl ...`: ovs-dpctl's commands, arguments and output, over the netlink provider.

Argument handling follows OVS 3.1 lib/dpctl.c: the datapath argument is optional and recognised only when
it names an existing datapath ("system@dp" or "dp"); without it the only datapath is used.  Flow text is
formatted and parsed by `dpif.netlink.flowtext` (one place knows the syntax); this module only wires
commands to the kernel datapath and prints what ovs-dpctl prints.  Like ovs-dpctl, each command is one
request after another: they run on the blocking netlink edge (`dpif.blocking`), without trio's start-up.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterable, Sequence
from typing import TextIO

from dpif.blocking import BlockingClient, BlockingDatapath, get_datapath, list_datapaths
from dpif.model import DatapathInfo, Flow, Vport, VportType, monotonic_ms
from dpif.netlink import actions as act
from dpif.netlink import flowkey, flowload, flowtext, messages
from dpif.netlink.dumptext import DumpText
from dpif.netlink.exchange import FramedBatch
from dpif.netlink.wire import KernelError


class CommandError(OSError):
    """A refused command, printed by the CLI as one line (an OSError: dpif does not import dpfreeze)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


VPORT_TYPE_NAMES = {
    VportType.NETDEV: "system",
    VportType.INTERNAL: "internal",
    VportType.GRE: "gre",
    VportType.VXLAN: "vxlan",
    VportType.GENEVE: "geneve",
}


def why(exc: BaseException) -> str:
    """What ovs-dpctl prints in parentheses: strerror's text alone (KernelError's str also names the errno
    and the kernel's extended-ack message)."""
    return os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno else str(exc)


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("dpctl", help="ovs-dpctl's commands over netlink (same syntax and output)")
    p.add_argument("-s", "--statistics", action="store_true", help="print statistics")
    p.add_argument("-m", "--more", action="count", default=0, help="increase verbosity of output")
    names = p.add_mutually_exclusive_group()
    names.add_argument(
        "--names", dest="names", action="store_true", default=None, help="port names in output"
    )
    names.add_argument("--no-names", dest="names", action="store_false", help="port numbers in output")
    sub = p.add_subparsers(dest="dpctl_command", metavar="COMMAND", required=True)
    for name, fn, help_text in (
        ("show", cmd_show, "show basic info on datapaths: show [DP...]"),
        ("dump-dps", cmd_dump_dps, "display names of all datapaths"),
        ("dump-flows", cmd_dump_flows, "display flows: dump-flows [DP]"),
        ("add-flow", cmd_add_flow, "add a flow: add-flow [DP] FLOW ACTIONS"),
        ("add-flows", cmd_add_flows, "add flows from a file: add-flows [DP] FILE"),
        ("del-flow", cmd_del_flow, "delete a flow: del-flow [DP] FLOW"),
        ("del-flows", cmd_del_flows, "delete all flows, or those in FILE: del-flows [DP] [FILE]"),
        ("get-flow", cmd_get_flow, "fetch a flow by UFID: get-flow [DP] ufid:UFID"),
    ):
        c = sub.add_parser(name, help=help_text)
        c.add_argument("args", nargs="*")
        # Options may also follow the command, as ovs-dpctl's getopt allows.
        c.add_argument("-s", "--statistics", dest="sub_statistics", action="store_true")
        c.add_argument("-m", "--more", dest="sub_more", action="count", default=0)
        c.set_defaults(handler=fn)


# --- common ---------------------------------------------------------------------------------------------


def _opts(args: argparse.Namespace) -> tuple[int, bool, bool]:
    """(verbosity, names, statistics) as ovs-dpctl derives them (names default on with -m)."""
    verbosity = args.more + args.sub_more
    names = args.names if args.names is not None else verbosity > 0
    return verbosity, names, args.statistics or args.sub_statistics


def _dp_name(arg: str) -> str:
    dp_type, sep, name = arg.partition("@")
    if not sep:
        return arg
    if dp_type != "system":
        raise CommandError(f"datapath type {dp_type!r} is not supported (only system@)")
    return name


def _dp_names(client: BlockingClient) -> list[str]:
    """The kernel's datapaths, dumped once per command for the argument checks below."""
    return [d.name for d in list_datapaths(client)]


def _dp_arg_exists(dps: Sequence[str], argv: Sequence[str]) -> bool:
    if not argv or ("@" in argv[0] and not argv[0].startswith("system@")):
        return False
    return _dp_name(argv[0]) in dps


def _opt_dp(dps: Sequence[str], argv: Sequence[str], max_args: int) -> tuple[str, list[str]]:
    """lib/dpctl.c opt_dpif_open over the datapaths `dps`: (datapath name, remaining args).  max_args
    counts ovs-dpctl's argv[0]."""
    if _dp_arg_exists(dps, argv):
        return _dp_name(argv[0]), list(argv[1:])
    if len(argv) + 1 == max_args:
        raise CommandError("datapath not found")
    if not dps:
        raise CommandError("no datapaths exist")
    if len(dps) > 1:
        raise CommandError("multiple datapaths, specify one")
    return dps[0], list(argv)


def _need(argv: Sequence[str], lo: int, hi: int, command: str) -> None:
    if not lo <= len(argv) <= hi:
        raise CommandError(f"'{command}' command takes at least {lo} and at most {hi} arguments")


def _open(client: BlockingClient, name: str) -> BlockingDatapath:
    return BlockingDatapath(get_datapath(client, name), client)


def _port_maps(dp: BlockingDatapath) -> tuple[dict[int, str], dict[str, int]]:
    ports = dp.ports()
    return {p.port_no: p.name for p in ports}, {p.name: p.port_no for p in ports}


def format_flow_line(flow: Flow, ports: dict[int, str] | None, verbosity: int, now_ms: int) -> str:
    return flowtext.format_flow(
        flow.key,
        flow.mask,
        flow.actions,
        flow.ufid,
        flow.stats,
        now_ms=now_ms,
        verbose=verbosity > 0,
        port_names=ports,
    )


_UFID_RE = re.compile(r"ufid:([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})")


def parse_ufid(text: str) -> tuple[bytes | None, str]:
    """odp_ufid_from_string: a leading "ufid:UUID" (and its separator) -> (ufid, rest of the text)."""
    if not text.startswith("ufid:"):
        return None, text
    found = _UFID_RE.match(text)
    if found is None:
        raise CommandError("parsing flow ufid")
    return flowkey.ufid_from_text(found.group(1)), text[found.end() :].lstrip(", ")


def parse_flow_args(key_text: str, actions_text: str | None, port_names: dict[str, int]) -> Flow:
    """FLOW [ACTIONS] as ovs-dpctl reads them ("ufid:...," prefix allowed) -> a Flow of raw attributes."""
    ufid, key_text = parse_ufid(key_text)
    try:
        key, mask = flowkey.parse_key(key_text, port_names=port_names)
    except ValueError as exc:
        raise CommandError(f"parsing flow key ({exc})") from None
    actions = None
    if actions_text is not None:
        try:
            actions = act.parse_actions(actions_text, port_names=port_names)
        except ValueError as exc:
            raise CommandError(f"parsing actions ({exc})") from None
    return Flow(key, mask or None, actions, ufid)


# --- show / dump-dps ------------------------------------------------------------------------------------


def show_text(info: DatapathInfo, ports: Sequence[Vport]) -> str:
    """lib/dpctl.c show_dpif, for the kernel datapath (port configuration of tunnel vports not shown)."""
    s = info.stats
    out = [
        f"system@{info.name}:",
        f"  lookups: hit:{s.hit} missed:{s.missed} lost:{s.lost}",
        f"  flows: {s.flows}",
    ]
    mf = info.megaflow_stats
    if mf is not None:
        n_pkts = s.hit + s.missed
        per_pkt = mf.mask_hit / n_pkts if n_pkts else 0.0
        out.append(f"  masks: hit:{mf.mask_hit} total:{mf.masks} hit/pkt:{per_pkt:.2f}")
        if mf.cache_hit:  # dpif-netlink: zero means "old kernel", and the line is left out
            rate = mf.cache_hit / n_pkts * 100 if n_pkts else 0.0
            out.append(f"  cache: hit:{mf.cache_hit} hit-rate:{rate:.2f}%")
    if info.masks_cache_size is not None:
        out += ["  caches:", f"    masks-cache: size:{info.masks_cache_size}"]
    for p in sorted(ports, key=lambda p: p.port_no):
        line = f"  port {p.port_no}: {p.name}"
        tname = VPORT_TYPE_NAMES.get(p.type, "unknown")
        if tname != "system":
            line += f" ({tname})"
        out.append(line)
    return "\n".join(out) + "\n"


def cmd_show(args: argparse.Namespace) -> int:
    if _opts(args)[2]:
        raise CommandError("show -s (netdev statistics) is not supported")
    with BlockingClient() as client:
        names = [_dp_name(a) for a in args.args] or _dp_names(client)
        status = 0
        for name in names:
            try:
                info = get_datapath(client, name)
                text = show_text(info, BlockingDatapath(info, client).ports())
            except OSError as exc:
                print(f"dpfreeze: opening datapath {name} failed ({why(exc)})", file=sys.stderr)
                status = 1
                continue
            sys.stdout.write(text)
        return status


def cmd_dump_dps(args: argparse.Namespace) -> int:
    with BlockingClient() as client:
        for d in list_datapaths(client):
            print(f"system@{d.name}")
    return 0


# --- flows ----------------------------------------------------------------------------------------------


def cmd_dump_flows(args: argparse.Namespace) -> int:
    verbosity, names, _ = _opts(args)
    argv = list(args.args)
    if any(a.startswith(("filter=", "type=", "pmd=")) for a in argv):
        raise CommandError("dump-flows filters (filter=, type=, pmd=) are not supported")
    with BlockingClient() as client:
        name, rest = _opt_dp(_dp_names(client), argv, 2)
        if rest:
            raise CommandError("datapath not found")
        dp = _open(client, name)
        ports = _port_maps(dp)[0] if names else None
        text = DumpText(verbose=verbosity > 0, port_names=ports, now_ms=monotonic_ms())
        out = sys.stdout
        for run in dp.flow_runs():
            for item in text.walk(run):
                if isinstance(item, str):
                    out.write(item)
                elif (row := dp.complete_row(item)) is not None:  # one the C loop left to Python
                    out.write(text.line(*row[1:]) + "\n")
    return 0


def cmd_add_flow(args: argparse.Namespace) -> int:
    with BlockingClient() as client:
        name, rest = _opt_dp(_dp_names(client), args.args, 4)
        _need(rest, 2, 2, "add-flow")
        dp = _open(client, name)
        flow = parse_flow_args(rest[0], rest[1], _port_maps(dp)[1])
        try:
            dp.flow_put(flow, create=True)
        except KernelError as exc:
            raise CommandError(f"updating flow table ({why(exc)})") from None
    return 0


def cmd_get_flow(args: argparse.Namespace) -> int:
    verbosity, names, _ = _opts(args)
    with BlockingClient() as client:
        name, rest = _opt_dp(_dp_names(client), args.args, 3)
        _need(rest, 1, 1, "get-flow")
        dp = _open(client, name)
        ufid, _ = parse_ufid(rest[0])
        if ufid is None:
            raise CommandError("parsing flow ufid")
        try:
            got = dp.flow_get(ufid=ufid)
        except KernelError as exc:
            raise CommandError(f"getting flow ({why(exc)})") from None
        ports = _port_maps(dp)[0] if names else None
        print(format_flow_line(got, ports, verbosity, monotonic_ms()))
    return 0


def cmd_del_flow(args: argparse.Namespace) -> int:
    with BlockingClient() as client:
        name, rest = _opt_dp(_dp_names(client), args.args, 3)
        _need(rest, 1, 1, "del-flow")
        dp = _open(client, name)
        _del_one(dp, rest[0], _port_maps(dp)[1], sys.stdout)
    return 0


def _del_one(dp: BlockingDatapath, text: str, port_names: dict[str, int], out: TextIO) -> None:
    flow = parse_flow_args(text, None, port_names)
    try:
        dp.flow_del(ufid=flow.ufid, key=None if flow.ufid else flow.key)
    except KernelError as exc:
        if exc.code == 2 and flow.ufid is None:
            out.write("Perhaps you need to specify a UFID?\n")
        raise CommandError(f"deleting flow ({why(exc)})") from None


def cmd_del_flows(args: argparse.Namespace) -> int:
    with BlockingClient() as client:
        argv = list(args.args)
        dps = _dp_names(client)
        if (not _dp_arg_exists(dps, argv) and len(argv) == 1) or len(argv) > 1:
            return _process_flows(client, dps, argv, "del")
        name, _ = _opt_dp(dps, argv, 2)
        try:
            _open(client, name).flow_flush()
        except KernelError as exc:
            raise CommandError(f"deleting all flows ({why(exc)})") from None
    return 0


def cmd_add_flows(args: argparse.Namespace) -> int:
    with BlockingClient() as client:
        return _process_flows(client, _dp_names(client), list(args.args), "add")


ADD_BATCH = 4096  # adds sent to the kernel at a time (their errors are printed then)


class _Adds:
    """The add lines' flows, sent in batches of ADD_BATCH; a flush prints each refused flow's error."""

    def __init__(self, dp: BlockingDatapath) -> None:
        self.dp = dp
        self.flows: list[Flow] = []

    def add(self, flow: Flow) -> int:
        self.flows.append(flow)
        return self.flush() if len(self.flows) >= ADD_BATCH else 0

    def flush(self) -> int:
        results = self.dp.flow_put_many(self.flows, create=True)
        self.flows.clear()
        return _report([r for r in results if r is not None])


def _report(errors: Iterable[BaseException]) -> int:
    failed = 0
    for r in errors:
        failed = 1
        print(f"dpfreeze: updating flow table ({why(r)})", file=sys.stderr)
    return failed


class _FramedAdds:
    """add-flows with the C encoder: the lines it can do go from text to framed messages without Python
    objects, the others' flows are framed here, all sent quietly (BlockingClient.send_framed).  Same batches
    and error lines as _Adds."""

    def __init__(self, dp: BlockingDatapath, encoder: flowload.Encoder, family_id: int) -> None:
        self.dp = dp
        self.encoder = encoder
        self.family_id = family_id
        self.batch = self._new_batch()

    def _new_batch(self) -> FramedBatch:
        c = self.dp.client
        return FramedBatch("ovs_flow", c.reserve_seqs(ADD_BATCH), c.max_batch)

    def add(self, flow: Flow) -> int:
        self.batch.append_request(self.family_id, messages.flow_put(self.dp.ifindex, flow, create=True))
        return self.flush() if self.batch.count >= ADD_BATCH else 0

    def encode(self, lines: list[str], i: int) -> tuple[int, int]:
        """Lines from i that the C encoder takes: (where it stopped, status of the flushes on the way)."""
        status = 0
        b = self.batch
        while True:
            msgs, size = b.room()
            e = self.encoder.encode(lines, i, family=self.family_id, flags=messages.FLOW_CREATE_QUIET,
                                    ifindex=self.dp.ifindex, seq=b.next_seq,
                                    max_count=min(msgs, ADD_BATCH - b.count), max_bytes=size)
            b.extend(e.data, e.n, e.last)
            i = e.stop
            if not e.full:
                return i, status
            if b.count >= ADD_BATCH:
                status |= self.flush()
                b = self.batch
            elif e.n or b.chunks[-1].count:
                b.seal()
            else:
                return i, status  # one message larger than a send chunk: framed by add() alone

    def flush(self) -> int:
        if not self.batch.count:
            return 0
        errors = self.dp.client.send_framed(self.batch)
        self.batch = self._new_batch()
        return _report(errors[i] for i in sorted(errors))


def _process_flows(client: BlockingClient, dps: Sequence[str], argv: Sequence[str], default: str) -> int:
    """add-flows / del-flows FILE: bad lines are reported and skipped; adds go to the kernel in batches."""
    name, rest = _opt_dp(dps, argv, 3)
    _need(rest, 1, 1, f"{default}-flows")
    dp = _open(client, name)
    path = rest[0]
    try:
        stream = sys.stdin if path == "-" else open(path)  # noqa: SIM115 - closed below
    except OSError as exc:
        raise CommandError(f'Opening file "{path}" failed ({exc.strerror})') from None
    status = 0
    port_names = _port_maps(dp)[1]
    encoder = flowload.ENCODER if default == "add" else None
    adds = _FramedAdds(dp, encoder, client.family("ovs_flow").id) if encoder is not None else _Adds(dp)
    number = 0  # of the last line read
    try:
        for block in iter(lambda: stream.readlines(1 << 20), []):
            base, i = number, 0
            while i < len(block):
                if isinstance(adds, _FramedAdds):
                    i, st = adds.encode(block, i)
                    status |= st
                    if i == len(block):
                        break
                parsed = flowtext.flow_line(block[i])
                i += 1
                number = base + i
                if parsed is None:
                    continue
                command, flow_text, actions = parsed
                cmd = command or default
                if (cmd in ("add", "mod") and actions is None) or (cmd == "del" and actions is not None):
                    print(f"dpfreeze: Failed parsing line number {number}, skipped!", file=sys.stderr)
                    continue
                try:
                    flow = parse_flow_args(flow_text, actions, port_names)
                except CommandError as exc:
                    print(f"dpfreeze: {exc}", file=sys.stderr)
                    status = 1
                    continue
                if cmd == "add":
                    status |= adds.add(flow)
                    continue
                status |= adds.flush()
                if cmd == "mod":
                    dp.flow_put(flow, create=False)
                else:
                    try:
                        dp.flow_del(ufid=flow.ufid, key=None if flow.ufid else flow.key)
                    except KernelError as exc:
                        print(f"dpfreeze: deleting flow ({why(exc)})", file=sys.stderr)
                        status = 1
            number = base + len(block)
        status |= adds.flush()
    finally:
        if stream is not sys.stdin:
            stream.close()
    return status
