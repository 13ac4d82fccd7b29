"""`dpfreeze bench dpif`: our netlink path against ovs-dpctl, measured in the same run, as ratios.

Needs root and the openvswitch module (run it in the test VM: absolute times under TCG mean little, the
ratios do).  Each side runs as a fresh process, so start-up, parsing/formatting and netlink are all in:
  dump     `dpfreeze dpctl dump-flows DP` vs `ovs-dpctl dump-flows DP`   (goal <= 1.0x)
  install  `dpfreeze dpctl add-flows DP F` vs `ovs-dpctl add-flows DP F` (goal <= 0.5x)
  peak RSS of our processes (goal <= 150 MB)
plus, in-process, the snapshot path (dump to records, flush, verbatim batched re-install) and the codec
alone against pyroute2's marshaller on the same messages (`--codec-only` runs just that, anywhere).
"""

from __future__ import annotations

import compileall
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dpfreeze.errors import UserError
from dpfreeze.log import peak_rss_kb
from dpfreeze.snapshot import take_snapshot
from dpif.model import Flow
from dpif.netlink import actions as act
from dpif.netlink import families as fam
from dpif.netlink import flowkey as fk
from dpif.netlink import messages as m
from dpif.netlink.flowtext import flow_line
from dpif.netlink.wire import GENL_HDR, OVS_HDR, attr, pack_message

MB = 1024 * 1024


@dataclass
class Timed:
    seconds: float
    max_rss_mb: float


def _vm_hwm_kb(pid: int, argv: Sequence[str] | None = None) -> int | None:
    """VmHWM of a running process (its own address space's peak RSS), None once it has exited, or while its
    command line is not yet `argv` (not exec'd yet: the address space is still the parent's)."""
    if argv is not None:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().split(b"\0")[:-1] != [a.encode() for a in argv]:
                    return None
        except OSError:
            return None
    return peak_rss_kb(pid)


def run_timed(argv: Sequence[str], sample_s: float = 0.02) -> Timed:
    """Run a process with stdout to /dev/null; wall time and its own peak RSS.

    The peak is the child's VmHWM, sampled until it exits, not wait4's ru_maxrss: Linux records into the
    child's ru_maxrss the peak RSS of the address space it leaves at exec, which after subprocess's vfork
    (or a fork) is *ours*, so ru_maxrss reports max(our peak, the child's) -- this bench's own 100k dumped
    records showed up as the "add-flows" RSS.  VmHWM read before the child's exec is the parent's too (seen
    as a first sample larger than later ones), so samples count only once the child's command line is
    argv.  Growth in the child's last `sample_s` before exit is missed.
    """
    start = time.perf_counter()
    hwm = 0
    with open(os.devnull, "wb") as null, tempfile.TemporaryFile() as err_file:
        proc = subprocess.Popen(argv, stdout=null, stderr=err_file)
        while True:
            got = _vm_hwm_kb(proc.pid, argv)
            if got is not None:
                hwm = max(hwm, got)
            pid, status = os.waitpid(proc.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(sample_s)
        err_file.seek(0)
        err = err_file.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0 or b"Failed" in err or b"error" in err:
        raise UserError(f"{' '.join(argv[:3])}... failed: {err.decode(errors='replace').strip()[:200]}")
    return Timed(elapsed, hwm / 1024)


def flow_lines(n: int) -> list[str]:
    """n distinct megaflows sharing one mask (what a busy datapath holds), each with two outputs."""
    return [
        f"in_port(1),eth(),eth_type(0x0800),ipv4(src=10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255},frag=no) 2,3"
        for i in range(n)
    ]


def codec_bench(n: int) -> dict[str, float]:
    """Encode n OVS_FLOW_CMD_NEW requests and decode n flow replies: ours vs pyroute2's marshal."""
    from pyroute2.netlink import genlmsg

    key = attr(3, b"\1\0\0\0") + attr(6, b"\x08\x00") + attr(7, b"\0" * 12)
    flow = Flow(key, key, attr(1, b"\2\0\0\0"), b"u" * 16)

    class OvsFlowMsg(genlmsg):
        fields = (*genlmsg.fields, ("dpifindex", "i"))
        nla_map = tuple((num, f"A{num}", "cdata") for num in fam.FLOW_ATTRS.by_num)

    out: dict[str, float] = {}
    t = time.perf_counter()
    bodies = [m.flow_put(5, flow).body for _ in range(n)]
    out["ours_encode_s"] = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(n):
        msg = OvsFlowMsg()
        msg["cmd"], msg["version"], msg["dpifindex"] = 1, 1, 5
        msg["attrs"] = [("A1", flow.key), ("A7", flow.mask), ("A2", flow.actions), ("A9", flow.ufid)]
        msg.encode()
    out["pyroute2_encode_s"] = time.perf_counter() - t
    wire = [pack_message(0x20, 2, i, b) for i, b in enumerate(bodies)]
    t = time.perf_counter()
    for w in wire:
        m.decode_flow(memoryview(w)[16:])
    out["ours_decode_s"] = time.perf_counter() - t
    t = time.perf_counter()
    for w in wire:
        p = OvsFlowMsg(w)
        p.decode()
    out["pyroute2_decode_s"] = time.perf_counter() - t
    assert len(bodies[0]) > GENL_HDR.size + OVS_HDR.size
    return out


def _python_parse(key_text: str, actions_text: str | None) -> Flow:
    """What add-flows does in Python for a line the C encoder leaves to it."""
    key, mask = fk.parse_key(key_text, port_names={})
    return Flow(key, mask or None, act.parse_actions(actions_text, port_names={}) if actions_text else None)


def encoder_bench(n: int) -> dict[str, float]:
    """add-flows text -> framed messages for n bench lines: the C encoder (if built) vs the Python path."""
    from dpif.netlink.flowload import ENCODER

    lines = [line + "\n" for line in flow_lines(n)]
    out: dict[str, float] = {}
    t = time.perf_counter()
    for i, line in enumerate(lines):
        parsed = flow_line(line)
        assert parsed is not None
        body = m.flow_put(5, _python_parse(parsed[1], parsed[2]), create=True).body
        pack_message(0x1F, m.FLOW_CREATE_QUIET, i, body)
    out["python_lines_per_s"] = n / (time.perf_counter() - t)
    if ENCODER is not None:
        t = time.perf_counter()
        i = seq = 0
        while i < n:
            e = ENCODER.encode(lines, i, family=0x1F, flags=m.FLOW_CREATE_QUIET, ifindex=5, seq=seq,
                               max_count=4096, max_bytes=64 * 1024)
            i, seq = e.stop, seq + e.n
            if not e.full and i < n:  # a line for Python (its memos were cleared when full)
                parsed = flow_line(lines[i])
                assert parsed is not None
                _python_parse(parsed[1], parsed[2])
        out["c_lines_per_s"] = n / (time.perf_counter() - t)
    return out


async def kernel_bench(dp_name: str, n: int) -> dict[str, float]:
    from dpif.netlink_datapath import create_datapath, delete_datapath, open_datapath

    # the `dpfreeze` command as its shebang runs it (argv spelled out: the RSS sampler matches the cmdline)
    script = Path(sys.executable).with_name("dpfreeze")
    me = [sys.executable, *([str(script)] if script.exists() else ["-m", "dpfreeze.cli"]), "dpctl"]
    res: dict[str, float] = {"flows": n}
    with tempfile.TemporaryDirectory(prefix="dpbench") as tmp:
        path = Path(tmp) / "flows.txt"
        path.write_text("\n".join(flow_lines(n)) + "\n")
        await create_datapath(dp_name)
        try:
            res["ours_startup_s"] = run_timed([*me, "--help"]).seconds
            theirs = run_timed(["ovs-dpctl", "add-flows", dp_name, str(path)])
            res["ovs_dpctl_add_s"] = theirs.seconds
            res["ovs_dpctl_dump_s"] = run_timed(["ovs-dpctl", "dump-flows", dp_name]).seconds
            dump = run_timed([*me, "dump-flows", dp_name])
            res["ours_dump_s"], res["ours_dump_rss_mb"] = dump.seconds, dump.max_rss_mb
            async with open_datapath(dp_name) as dp:
                t = time.perf_counter()
                records = [f async for f in dp.flows()]
                res["ours_dump_records_s"] = time.perf_counter() - t
                if len(records) != n:
                    raise UserError(f"dumped {len(records)} flows, expected {n}")
                t = time.perf_counter()  # what a freeze waits on: the snapshot, to records and to its file
                snap = await take_snapshot(dp, with_openflow=False)
                snap.save(Path(tmp) / "bench.snapshot")
                res["ours_snapshot_s"] = time.perf_counter() - t
                await dp.flow_flush()
                t = time.perf_counter()
                failed = [r for r in await dp.flow_put_many(records) if r is not None]
                res["ours_reinstall_records_s"] = time.perf_counter() - t
                if failed:
                    raise UserError(f"{len(failed)} re-installs failed: {failed[0]}")
                await dp.flow_flush()
            add = run_timed([*me, "add-flows", dp_name, str(path)])
            res["ours_add_s"], res["ours_add_rss_mb"] = add.seconds, add.max_rss_mb
        finally:
            await delete_datapath(dp_name)
    res["dump_ratio"] = res["ours_dump_s"] / res["ovs_dpctl_dump_s"]
    res["snapshot_ratio"] = res["ours_snapshot_s"] / res["ovs_dpctl_dump_s"]
    res["add_ratio"] = res["ours_add_s"] / res["ovs_dpctl_add_s"]
    res["peak_rss_mb"] = max(res["ours_dump_rss_mb"], res["ours_add_rss_mb"])
    return res


def compile_bytecode() -> None:
    """Our modules' bytecode, as an installed package has it (bootstrap compiles it too): a source file
    edited since would otherwise be compiled anew by every timed process (seconds under TCG)."""
    import dpfreeze

    for pkg in (Path(__file__).parent, Path(dpfreeze.__file__).parent):
        compileall.compile_dir(pkg, quiet=2)
