"""Snapshot file format, refusals, diff and restore logic (pure: an in-memory datapath stands in)."""

from __future__ import annotations

import argparse
import errno
import gc
import hashlib
import json
import os
import struct
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpfreeze.cli import snapshot as snapshot_cli
from dpfreeze.errors import UserError
from dpfreeze.ovs.netdevconf import Address, NetdevConfig, Route
from dpfreeze.ovs.openflow import BridgeOpenFlow
from dpfreeze.ovs.ovsdb import Versions
from dpfreeze.snapshot import (
    DatapathSnapshot,
    MeterRecord,
    Snapshot,
    SnapshotError,
    _meter_gap,
    diff,
    flow_identity,
    gc_paused,
    load_openflow,
    meter_ids,
    openflow_path,
    restore,
    snapshot_datapath,
)
from dpif.model import (
    Datapath,
    DatapathInfo,
    DpFeature,
    Flow,
    FlowStats,
    MeterBandStats,
    MeterStats,
    Vport,
    VportType,
)
from dpif.netlink.wire import KernelError, attr, nest


def _flow(n: int, *, ufid: bool = True, actions: bytes | None = None) -> Flow:
    key = attr(3, struct.pack("=I", n)) + attr(20, struct.pack("=I", 0))  # in_port(n), recirc_id(0)
    mask = attr(3, b"\xff" * 4) + attr(20, b"\xff" * 4)
    output = attr(1, struct.pack("=I", n + 1))
    return Flow(key=key, mask=mask, actions=output if actions is None else actions,
                ufid=bytes([n]) * 16 if ufid else None)


def _snap(flows: Sequence[Flow] = (), vports: Sequence[Vport] | None = None, features: int = 0) -> Snapshot:
    info = DatapathInfo("ovs-system", 5, features=features,
                        per_cpu_pids=(11, 12) if features & DpFeature.DISPATCH_UPCALL_PER_CPU else ())
    if vports is None:
        vports = (Vport(0, VportType.INTERNAL, "ovs-system", 5, (0,), 5),
                  Vport(1, VportType.INTERNAL, "br0", 5, (7,), 6),
                  Vport(2, VportType.NETDEV, "veth1", 5, (7,), 9))
    netdev = NetdevConfig("br0", "02:00:00:00:00:01", 1500, True, (Address(2, "10.0.0.1", 24),),
                          (Route(2, "10.1.0.0", 16, "10.0.0.2"),))
    of = BridgeOpenFlow("br0", "OpenFlow15", ("priority=0 actions=NORMAL",), (),
                        ("meter=1 kbps bands=type=drop rate=5",), (), {"veth1": ("NO_FLOOD",)})
    return Snapshot("2026-11-22T00:00:00.000+00:00", "host", Versions("6.1", "3.1.0", "3.1.0", None),
                    (DatapathSnapshot(info, tuple(vports), tuple(flows), ()),), (netdev,), (of,), ())


# -- file format ---------------------------------------------------------------------------------------


def test_masks_are_written_once_and_a_version_1_file_still_reads(tmp_path: Path) -> None:
    flows = [_flow(1), _flow(2)._replace(mask=b"\x01" * 8), _flow(3), _flow(4)._replace(mask=None)]
    snap = _snap(flows)
    body = snap.to_json()
    [dp] = body["datapaths"]
    assert dp["masks"] == [_flow(1).mask.hex(), "01" * 8]
    assert [f["mask"] for f in dp["flows"]] == [0, 1, 0, None]
    # version 1: every flow's mask in hex, no table; read with one copy of each mask
    masks = dp.pop("masks")
    for f in dp["flows"]:
        f["mask"] = None if f["mask"] is None else masks[f["mask"]]
    text = json.dumps({**body, "format": 1}).encode()
    path = tmp_path / "v1.snap"
    path.write_bytes(b"DPFREEZE-SNAPSHOT 1 sha256=%s length=%d\n%s" % (
        hashlib.sha256(text).hexdigest().encode(), len(text), text))
    old = Snapshot.load(path)
    assert old == snap
    assert old.datapaths[0].flows[0].mask is old.datapaths[0].flows[2].mask
    # version 2: the table, checksummed with SHA-256
    text = json.dumps({**snap.to_json(), "format": 2}).encode()
    path.write_bytes(b"DPFREEZE-SNAPSHOT 2 sha256=%s length=%d\n%s" % (
        hashlib.sha256(text).hexdigest().encode(), len(text), text))
    assert Snapshot.load(path) == snap
    # a mask number outside the table is a corrupt file, refused whole
    dp["masks"], dp["flows"][0]["mask"] = masks, 7
    text = json.dumps({**body, "format": 3}).encode()
    path.write_bytes(b"DPFREEZE-SNAPSHOT 3 crc32=%08x length=%d\n%s" % (zlib.crc32(text), len(text), text))
    with pytest.raises(SnapshotError, match="corrupt snapshot body"):
        Snapshot.load(path)


def test_round_trip_and_atomic_save(tmp_path: Path) -> None:
    snap = _snap([_flow(1), _flow(2, ufid=False), _flow(3)._replace(mask=None)])
    path = tmp_path / "s.snap"
    snap.save(path)
    assert Snapshot.load(path) == snap
    assert os.listdir(tmp_path) == ["s.snap"]  # no temp file left behind
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_bytes().startswith(b"DPFREEZE-SNAPSHOT 3 crc32=")
    snap2 = replace(snap, host="other")
    snap2.save(path)  # replacing an existing file
    assert Snapshot.load(path).host == "other"


def test_save_into_missing_directory_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match="cannot write"):
        _snap().save(tmp_path / "nope" / "s.snap")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "empty file"),
        (b"DPFREEZE-SNAP", "truncated snapshot"),
        (b"DPFREEZE-SNAPSHOT 1 sha256=ab", "truncated snapshot \\(header incomplete\\)"),
        (b"#!/bin/sh\necho hi\n", "not a dpfreeze snapshot \\(bad magic\\)"),
        (b'{"format": 1}', "bad magic"),
        (b"DPFREEZE-SNAPSHOT 9 sha256=" + b"0" * 64 + b" length=2\n{}", "version 9 is newer"),
        (b"DPFREEZE-SNAPSHOT 7 future-header-fields\n", "version 7 is newer"),
        (b"DPFREEZE-SNAPSHOT one two\n", "malformed header"),
        (b"DPFREEZE-SNAPSHOT 1 sha256=" + b"x" * 600, "header line too long"),
        (b"DPFREEZE-SNAPSHOT 3 sha256=" + b"0" * 64 + b" length=2\n{}",
         "a sha256 checksum in a version 3 header"),
        (b"DPFREEZE-SNAPSHOT 2 crc32=00000000 length=2\n{}", "a crc32 checksum in a version 2 header"),
    ],
)
def test_refusals(data: bytes, match: str) -> None:
    with pytest.raises(SnapshotError, match=match):
        Snapshot.decode(data, "f")


def test_truncated_corrupt_and_trailing_body() -> None:
    good = _snap([_flow(1)]).encode()
    with pytest.raises(SnapshotError, match=r"truncated snapshot \(\d+ of \d+ body bytes\)"):
        Snapshot.decode(good[:-10], "f")
    with pytest.raises(SnapshotError, match="bytes after the body"):
        Snapshot.decode(good + b"x", "f")
    i = good.index(b'"host"')
    with pytest.raises(SnapshotError, match="crc32 mismatch"):
        Snapshot.decode(good[:i] + b'"HOST"' + good[i + 6 :], "f")
    old = b"DPFREEZE-SNAPSHOT 2 sha256=%s length=2\n{}" % (b"0" * 64)
    with pytest.raises(SnapshotError, match="sha256 mismatch"):
        Snapshot.decode(old, "f")


def test_checksummed_but_malformed_body_is_refused() -> None:
    import hashlib

    for body in (b"[1, 2]\n", b'{"format": 1}\n', b"not json\n", b'{"format": 2}\n'):
        data = b"DPFREEZE-SNAPSHOT 1 sha256=%s length=%d\n" % (hashlib.sha256(body).hexdigest().encode(),
                                                                len(body)) + body
        with pytest.raises(SnapshotError, match="corrupt snapshot body"):
            Snapshot.decode(data, "f")


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_truncation_or_byte_flip_is_refused(data: st.DataObject) -> None:
    good = _snap([_flow(1), _flow(2)]).encode()
    cut = data.draw(st.integers(0, len(good) - 1))
    with pytest.raises(SnapshotError):
        Snapshot.decode(good[:cut], "f")
    pos = data.draw(st.integers(0, len(good) - 1))
    flip = data.draw(st.integers(1, 255))
    bad = good[:pos] + bytes([good[pos] ^ flip]) + good[pos + 1 :]
    with pytest.raises(SnapshotError):
        Snapshot.decode(bad, "f")


# -- contents ------------------------------------------------------------------------------------------


def test_meter_ids_found_in_nested_actions() -> None:
    meter = lambda n: attr(19, struct.pack("=I", n))  # noqa: E731
    actions = (meter(1) + nest(20, meter(2), attr(1, b"\0\0\0\1"))  # clone(meter(2), 1)
               + nest(6, attr(1, b"\0" * 4), nest(2, meter(3)))  # sample(actions(meter(3)))
               + nest(21, attr(1, b"\0\0"), nest(2, meter(4)), nest(3, meter(5)))  # check_pkt_len
               + nest(23, nest(1, meter(6))))  # dec_ttl(le_1(meter(6)))
    assert meter_ids(actions) == {1, 2, 3, 4, 5, 6}
    assert meter_ids(None) == set()
    assert meter_ids(attr(1, b"\0\0\0\2")) == set()


def _metered(n: int, *meters: int) -> Flow:
    """meter(m) for each of `meters`, then output:2."""
    actions = b"".join(attr(19, struct.pack("=I", i)) for i in meters) + attr(1, struct.pack("=I", 2))
    return _flow(n, actions=actions)


def _with_meters(snap: Snapshot, *records: MeterRecord) -> Snapshot:
    d = replace(snap.datapaths[0], meter_ids=tuple(r.id for r in records), meters=records)
    return replace(snap, datapaths=(d,))


def test_meters_round_trip_and_older_snapshots_still_load() -> None:
    snap = _with_meters(_snap([_metered(1, 1, 2)]), MeterRecord(1, True, 1), MeterRecord(2, False))
    assert Snapshot.decode(snap.encode()) == snap
    older = snap.to_json()
    del older["datapaths"][0]["meters"]  # written before meters were read
    d = Snapshot.from_json(older).datapaths[0]
    assert (d.meter_ids, d.meters) == ((1, 2), None)


def test_the_openflow_state_beside_a_snapshot_is_read_only_while_it_matches_it(tmp_path: Path) -> None:
    """The upgrade's restore reads the small file beside the freeze snapshot, never 200 000 flows; a file
    left by another snapshot (or a broken one) is not believed: the snapshot itself is read then."""
    path = tmp_path / "freeze.snapshot"
    a = _snap([_flow(1), _flow(2)])
    a.save(path, openflow_beside=True)
    assert load_openflow(path) == a.openflow and openflow_path(path).exists()
    b = replace(a, openflow=(replace(a.openflow[0], flows=("priority=1 actions=drop",)),))
    b.save(path)  # a newer snapshot, nothing beside it: the old file beside it no longer matches
    assert load_openflow(path) == b.openflow
    openflow_path(path).write_text("{broken")
    assert load_openflow(path) == b.openflow
    assert Snapshot.load(path) == b  # the header is fixed-width (written last), the file reads back


async def test_a_snapshot_lists_the_most_recently_used_flows_first() -> None:
    """What a hand-over re-installs first when the new daemon keeps only some (pin.HANDOVER_REPAIR_LIMIT)."""
    used = {1: 5, 2: 0, 3: 90, 4: 40}
    dp = FakeDatapath()
    for n, ms in used.items():
        f = _flow(n)._replace(stats=FlowStats(used_ms=ms))
        dp.flow_table[flow_identity(f)] = f
    snap = await snapshot_datapath(cast(Datapath, dp))
    assert [f.ufid for f in snap.flows] == [_flow(n).ufid for n in (3, 4, 1, 2)]
    assert all(f.stats == FlowStats() for f in snap.flows)  # verbatim: no stats kept


def test_the_collector_pause_ends_with_the_outermost_and_on_errors() -> None:
    assert gc.isenabled()
    with gc_paused():
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer pause still holds
    assert gc.isenabled()
    with pytest.raises(KeyError), gc_paused():
        raise KeyError("a dump that fails")
    assert gc.isenabled()


def test_flow_identity_prefers_ufid() -> None:
    a = _flow(1)
    assert flow_identity(a) == flow_identity(a._replace(key=b"other"))
    b = _flow(1, ufid=False)
    assert flow_identity(b) != flow_identity(b._replace(mask=b""))


# -- diff ----------------------------------------------------------------------------------------------


def test_diff_empty_for_equal_and_lists_every_change() -> None:
    a = _snap([_flow(1), _flow(2), _flow(3, ufid=False)])
    assert diff(a, a) == []
    vports_b = [*a.datapaths[0].vports[:2], Vport(3, VportType.NETDEV, "veth2", 5, (7,), 10)]
    flows_b = [_flow(1), _flow(2)._replace(actions=attr(1, b"\0\0\0\x09")), _flow(4)]
    b = replace(_snap(flows_b, vports_b, features=DpFeature.DISPATCH_UPCALL_PER_CPU),
                netdevs=(), openflow=(replace(a.openflow[0], flows=()),))
    lines = [str(d) for d in diff(a, b)]
    signs = sorted((d.sign, d.kind) for d in diff(a, b))
    assert signs == sorted([("~", "datapath"), ("~", "datapath"), ("-", "vport"), ("+", "vport"),
                            ("~", "flow"), ("-", "flow"), ("+", "flow"), ("-", "netdev"), ("~", "openflow")])
    assert any("veth1" in line and line.startswith("- vport") for line in lines)
    assert any(line.startswith("- netdev br0") for line in lines)


def test_diff_ignoring_pids() -> None:
    a = _snap()
    vports = [replace(v, upcall_pids=(99,)) for v in a.datapaths[0].vports]
    b = _snap(vports=vports)
    assert [d.kind for d in diff(a, b)] == ["vport"] * 3
    assert diff(a, b, with_pids=False) == []


# -- restore against an in-memory datapath -------------------------------------------------------------


class FakeDatapath:
    """Just the Datapath protocol calls restore makes, with the kernel's answers."""

    lives_in_daemon = False

    def __init__(self, name: str = "ovs-system") -> None:
        self.name = name
        self.features = 0
        self.per_cpu_pids: tuple[int, ...] = ()
        self.vports = {0: Vport(0, VportType.INTERNAL, name, 5, (0,), 5)}
        self.flow_table: dict[object, Flow] = {}
        self.calls: list[str] = []
        self.refuse_ports: set[str] = set()
        self.taken_ifindexes: set[int] = set()
        self.meters: dict[int, MeterStats] = {}

    async def info(self) -> DatapathInfo:
        return DatapathInfo(self.name, 5, self.features, per_cpu_pids=self.per_cpu_pids)

    async def set_features(self, features: int, per_cpu_pids: Sequence[int] | None = None) -> DatapathInfo:
        self.calls.append("set_features")
        self.features, self.per_cpu_pids = features, tuple(per_cpu_pids or ())
        return await self.info()

    async def ports(self) -> list[Vport]:
        return list(self.vports.values())

    async def port_add(self, name: str, type: VportType, port_no: int | None = None,
                       upcall_pids: Sequence[int] = (0,), options: bytes = b"",
                       ifindex: int | None = None) -> Vport:
        self.calls.append(f"port_add {name}")
        if name in self.refuse_ports:
            raise KernelError(errno.ENODEV)
        if ifindex in self.taken_ifindexes:
            raise KernelError(errno.EBUSY)
        assert port_no is not None and port_no not in self.vports
        v = Vport(port_no, type, name, 5, tuple(upcall_pids), ifindex, options=options)
        self.vports[port_no] = v
        return v

    async def flows(self) -> AsyncIterator[Flow]:
        for f in list(self.flow_table.values()):
            yield f

    async def flow_batches(self) -> AsyncIterator[list[Flow]]:
        yield list(self.flow_table.values())

    async def meter_get(self, meter_id: int) -> MeterStats:
        self.calls.append(f"meter_get {meter_id}")
        if meter_id not in self.meters:
            raise KernelError(errno.ENOENT)
        return self.meters[meter_id]

    async def flow_put_many(self, flows: Sequence[Flow], *,
                            create: bool = True) -> list[BaseException | None]:
        out: list[BaseException | None] = []
        for f in flows:
            self.calls.append("flow_put")
            if flow_identity(f) in self.flow_table:
                out.append(KernelError(errno.EEXIST))
            else:
                self.flow_table[flow_identity(f)] = f
                out.append(None)
        return out


async def test_restore_recreates_missing_and_skips_present() -> None:
    snap = _snap([_flow(1), _flow(2), _flow(3, ufid=False)], features=DpFeature.DISPATCH_UPCALL_PER_CPU)
    dp = FakeDatapath()
    dp.flow_table[flow_identity(_flow(2))] = _flow(2)
    report = await restore(cast(Datapath, dp), snap, netdevs=False)
    assert report.ok and report.conflicts == []
    assert report.features_set and dp.per_cpu_pids == (11, 12)
    assert sorted(dp.vports) == [0, 1, 2] and dp.vports[2].name == "veth1"
    assert dp.vports[1].upcall_pids == (7,)
    assert (report.flows_added, report.flows_present) == (2, 1)
    assert len(report.vports_added) == 2 and report.vports_present == 1
    # A second restore finds everything in place and changes nothing.
    dp.calls.clear()
    again = await restore(cast(Datapath, dp), snap, netdevs=False)
    assert dp.calls == [] and (again.flows_added, again.flows_present, again.vports_present) == (0, 3, 3)


async def test_restore_reports_conflicts_and_failures_without_touching_them() -> None:
    snap = _snap([_flow(1), _flow(2)])
    dp = FakeDatapath()
    dp.vports[1] = Vport(1, VportType.INTERNAL, "intruder", 5)
    dp.vports[4] = Vport(4, VportType.NETDEV, "veth1", 5)
    dp.flow_table[flow_identity(_flow(2))] = _flow(2)._replace(actions=b"")
    report = await restore(cast(Datapath, dp), snap, netdevs=False)
    assert report.ok  # conflicts are not failures: nothing was attempted on them
    assert any("port 1 is intruder" in c for c in report.conflicts)
    assert any("veth1 is port 4" in c for c in report.conflicts)
    assert any(c.startswith("flow differs") for c in report.conflicts)
    assert dp.vports[1].name == "intruder" and dp.flow_table[flow_identity(_flow(2))].actions == b""
    assert report.flows_added == 1

    failing = FakeDatapath()
    failing.refuse_ports = {"veth1"}
    report = await restore(cast(Datapath, failing), snap, netdevs=False)
    assert not report.ok and report.failures == ["vport 2 veth1: ENODEV: No such device"]


async def test_snapshot_records_which_used_meters_exist() -> None:
    dp = FakeDatapath()
    dp.meters = {1: MeterStats(1, 5, 500, bands=(MeterBandStats(2, 200),)), 9: MeterStats(9)}
    for f in (_metered(1, 1, 2), _metered(2, 1)):
        dp.flow_table[flow_identity(f)] = f
    d = await snapshot_datapath(cast(Datapath, dp))
    assert d.meter_ids == (1, 2)  # meter 9 exists but no flow uses it
    assert d.meters == (MeterRecord(1, present=True, bands=1), MeterRecord(2, present=False))
    gap = str(_meter_gap(d))
    assert "meters [1] exist, but the kernel does not report their unit, rates or bursts" in gap
    assert _meter_gap(replace(d, meters=(MeterRecord(2, present=False),))) is None


async def test_restore_reports_the_meters_it_cannot_recreate_before_installing_flows() -> None:
    snap = _with_meters(_snap([_metered(1, 1, 2, 3)]), MeterRecord(1, True, 1), MeterRecord(2, False),
                        MeterRecord(3, True, 1))
    dp = FakeDatapath()
    dp.meters = {3: MeterStats(3, bands=(MeterBandStats(),))}
    report = await restore(cast(Datapath, dp), snap, netdevs=False)
    assert report.ok and (report.meters_present, report.meters_missing) == (1, [1])
    assert "meter_get 2" not in dp.calls  # absent when the snapshot was taken: nothing to miss
    assert dp.calls.index("meter_get 1") < dp.calls.index("flow_put")
    lines = report.lines()
    assert "meters: 1 present, 1 missing" in lines
    assert any(line.startswith("missing meter 1: not re-created") for line in lines)


async def test_restore_keeps_live_per_cpu_pids() -> None:
    snap = _snap(features=DpFeature.DISPATCH_UPCALL_PER_CPU)
    dp = FakeDatapath()
    dp.features, dp.per_cpu_pids = int(DpFeature.DISPATCH_UPCALL_PER_CPU), (77, 78)
    report = await restore(cast(Datapath, dp), snap, netdevs=False)
    assert not report.features_set and dp.per_cpu_pids == (77, 78)


# -- CLI handlers ----------------------------------------------------------------------------------------


def test_cli_show_diff_and_refusal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _snap([_flow(1)]).save(a)
    _snap([_flow(1), _flow(2)]).save(b)
    assert snapshot_cli.cmd_show(argparse.Namespace(file=str(a), json=False, flows=True)) == 0
    out = capsys.readouterr().out
    assert "datapath ovs-system" in out and "port 2: veth1 (netdev)" in out and "openflow br0" in out
    metered = tmp_path / "metered"
    _with_meters(_snap([_metered(1, 1, 2)]), MeterRecord(1, True, 1), MeterRecord(2, False)).save(metered)
    assert snapshot_cli.cmd_show(argparse.Namespace(file=str(metered), json=False, flows=False)) == 0
    assert "meters used 1 (bands: 1), 2 (absent)" in capsys.readouterr().out
    assert snapshot_cli.cmd_show(argparse.Namespace(file=str(a), json=True, flows=False)) == 0
    assert '"format": 3' in capsys.readouterr().out
    assert snapshot_cli.cmd_diff(argparse.Namespace(a=str(a), b=str(a), ignore_pids=False)) == 0
    assert snapshot_cli.cmd_diff(argparse.Namespace(a=str(a), b=str(b), ignore_pids=False)) == 1
    assert capsys.readouterr().out == (
        "+ flow ovs-system: ufid:02020202-0202-0202-0202-020202020202, in_port(2),recirc_id(0), actions:3\n")
    bad = tmp_path / "bad"
    bad.write_bytes(a.read_bytes()[:-3])
    with pytest.raises(UserError, match="truncated snapshot"):
        snapshot_cli.cmd_show(argparse.Namespace(file=str(bad), json=False, flows=False))


async def test_restore_falls_back_when_the_old_ifindex_is_taken() -> None:
    dp = FakeDatapath()
    dp.taken_ifindexes = {6}  # br0's old ifindex
    report = await restore(cast(Datapath, dp), _snap(), netdevs=False)
    assert report.ok and dp.vports[1].name == "br0" and dp.vports[1].ifindex is None
    assert report.conflicts == ["vport br0: ifindex 6 is taken, the kernel chose another"]
    assert dp.calls.count("port_add br0") == 2
