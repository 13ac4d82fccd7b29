"""Snapshots of the kernel datapath: the file format, take, save/load, diff and restore.

A snapshot is what must survive a userspace restart or a module reload to put the datapath back exactly:
datapaths (features, per-CPU upcall pids), vports (numbers, types, options, upcall pids, ifindex), every
flow as the raw key/mask/actions/UFID payloads the kernel dumped (re-installable verbatim), which meters those
flows use and whether they exist (the kernel does not report their rates), the Linux configuration of
internal ports, the OpenFlow state ovs-save misses, and versions.

File format (docs/snapshot-format.md): one ASCII header line
`DPFREEZE-SNAPSHOT <version> crc32=<hex> length=<n>` then exactly n bytes of UTF-8 JSON whose CRC-32 is
given (SHA-256 before version 3).  The header is checked before the body is parsed, so a foreign,
truncated, corrupt or newer file is refused with one line and nothing else happens.  Saving is atomic
(temp file, fsync, rename, fsync dir).
"""

from __future__ import annotations

import datetime
import errno
import functools
import gc
import hashlib
import json
import operator
import os
import platform
import re
import socket
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import trio

from dpfreeze import files
from dpfreeze.errors import DpfreezeError, ungrouped
from dpfreeze.log import LOG, Profile, kv
from dpfreeze.ovs import netdevconf, openflow, ovsdb
from dpfreeze.ovs.ovsenv import OvsEnv
from dpfreeze.snapshot.portmap import PortMap, UnmappedPort
from dpif.model import Datapath, DatapathInfo, Flow, MetersUnsupported, Vport, VportType
from dpif.netlink import actions as act
from dpif.netlink import flowkey as fk
from dpif.netlink.dumptext import flows_json, stateless
from dpif.netlink.wire import KernelError, WireError

MAGIC = b"DPFREEZE-SNAPSHOT"
FORMAT_VERSION = 3  # 3: the body's checksum a CRC-32; 2: megaflow masks in a table of their own
MAX_HEADER = 256
FLOWS_PER_CHUNK = 4096
_MASK = operator.itemgetter(1)
_HEADER = re.compile(rb"^DPFREEZE-SNAPSHOT (\d+) (sha256=[0-9a-f]{64}|crc32=[0-9a-f]{8}) length=(\d+)$")
# The body's checksum, by version: guards against a torn or corrupted file, not against anyone who may write
# it (root, in a 0700 directory), so a CRC as filesystems use; SHA-256, before version 3, took 0.55 s of a
# 100 000-flow file under qemu TCG, CRC-32 0.07 s.
CHECKSUM = {1: "sha256", 2: "sha256", 3: "crc32"}


def checksum(body: bytes, algorithm: str = CHECKSUM[FORMAT_VERSION]) -> str:
    """`algorithm=<hex>`, as the header carries it."""
    if algorithm == "sha256":
        return f"sha256={hashlib.sha256(body).hexdigest()}"
    return f"crc32={zlib.crc32(body):08x}"


class SnapshotError(DpfreezeError):
    """A snapshot file was refused (foreign, corrupt, truncated, newer) or could not be written."""


# --------------------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class MeterRecord:
    """A kernel meter the flows use, as OVS_METER_CMD_GET shows it: whether it exists, and its band count.
    Its unit, rates and bursts are not readable (the kernel returns counters only)."""

    id: int
    present: bool
    bands: int = 0

    def describe(self) -> str:
        return f"{self.id} (bands: {self.bands})" if self.present else f"{self.id} (absent)"


@dataclass(frozen=True)
class DatapathSnapshot:
    info: DatapathInfo
    vports: tuple[Vport, ...]
    flows: tuple[Flow, ...]
    meter_ids: tuple[int, ...] = ()  # kernel meters the flows use
    meters: tuple[MeterRecord, ...] | None = None  # those meters as read; None: not read (older snapshot)

    @property
    def name(self) -> str:
        return self.info.name

    @functools.cached_property
    def mask_table(self) -> dict[bytes, int]:
        """The flows' distinct masks, numbered in order of appearance: the file writes each once (a
        datapath's megaflows share a few masks, which were half of a 200 000-flow file).  Cached: the
        file's document and its flow lines both read it."""
        distinct = [m for m in dict.fromkeys(map(_MASK, self.flows)) if m is not None]
        return {m: n for n, m in enumerate(distinct)}


@dataclass(frozen=True)
class Snapshot:
    created: str  # ISO 8601 UTC
    host: str
    versions: ovsdb.Versions | None
    datapaths: tuple[DatapathSnapshot, ...]
    netdevs: tuple[netdevconf.NetdevConfig, ...] = ()
    openflow: tuple[openflow.BridgeOpenFlow, ...] = ()
    gaps: tuple[str, ...] = field(default=())  # what could not be captured, said once, kept in the file

    def datapath(self, name: str) -> DatapathSnapshot:
        for dp in self.datapaths:
            if dp.name == name:
                return dp
        known = ", ".join(d.name for d in self.datapaths) or "none"
        raise SnapshotError(f"the snapshot has no datapath {name!r} (it has: {known})")

    # -- file format ----------------------------------------------------------------------------------

    def to_json(self, *, flows: bool = True) -> dict[str, Any]:
        """The file's document; without the flows (`encode` writes them itself)."""
        return {
            "format": FORMAT_VERSION,
            "created": self.created,
            "host": self.host,
            "versions": self.versions.to_json() if self.versions else None,
            "datapaths": [_dp_to_json(d, flows) for d in self.datapaths],
            "netdevs": [n.to_json() for n in self.netdevs],
            "openflow": [o.to_json() for o in self.openflow],
            "gaps": list(self.gaps),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Snapshot:
        return cls(
            created=str(d["created"]),
            host=str(d["host"]),
            versions=ovsdb.Versions.from_json(d["versions"]) if d["versions"] else None,
            datapaths=tuple(_dp_from_json(x) for x in d["datapaths"]),
            netdevs=tuple(netdevconf.NetdevConfig.from_json(x) for x in d["netdevs"]),
            openflow=tuple(openflow.BridgeOpenFlow.from_json(x) for x in d["openflow"]),
            gaps=tuple(map(str, d["gaps"])),
        )

    def chunks(self) -> Iterator[bytes]:
        """The file's body in pieces: indented for a person, the flows one per line, a few thousand at a
        time, written directly (hex needs no escaping; the json module's encoders took 4.8 s of a freeze
        over 20 000 flows, and the whole text of 200 000 is 100 MB)."""
        doc = self.to_json(flows=False)
        for i, d in enumerate(doc["datapaths"]):
            d["flows"] = f"\0flows {i}\0"
        text = json.dumps(doc, indent=1, sort_keys=True)
        for i, dp in enumerate(self.datapaths):
            head, text = text.split(json.dumps(f"\0flows {i}\0"), 1)
            yield head.encode()
            masks = dp.mask_table
            for k in range(0, len(dp.flows), FLOWS_PER_CHUNK):
                lines = flows_json(dp.flows[k:k + FLOWS_PER_CHUNK], masks)
                yield ("[\n" if k == 0 else ",\n").encode() + lines
            yield b"\n]" if dp.flows else b"[]"
        yield (text + "\n").encode()

    def encode(self) -> bytes:
        body = b"".join(self.chunks())
        return _header(checksum(body), len(body)) + body

    @classmethod
    def decode(cls, data: bytes, source: str = "snapshot") -> Snapshot:
        return cls.from_json(decode_body(data, source))

    def save(self, path: str | os.PathLike[str], *, openflow_beside: bool = False) -> None:
        """Write atomically: a crash leaves either the old file or the new one, never a mix.  The body is
        checksummed as it is written, never whole in memory; the header then goes in front.

        `openflow_beside`: the OpenFlow state also in a small file of its own (`openflow_path`), bound to
        this snapshot by its checksum: the restore into a new daemon, in the upgrade's window, then never
        reads the flows (200 000 of them: seconds and hundreds of MB in the command)."""
        crc, length = 0, 0

        def summed() -> Iterator[bytes]:
            nonlocal crc, length
            for piece in self.chunks():
                crc = zlib.crc32(piece, crc)
                length += len(piece)
                yield piece

        def digest() -> str:  # as `checksum` gives it, of the pieces summed so far
            return f"crc32={crc:08x}"

        write_atomic(Path(path), summed(), head=lambda: _header(digest(), length),
                     head_size=len(_header(checksum(b""), 0)))
        if openflow_beside:
            doc = {"snapshot_checksum": digest(), "openflow": [o.to_json() for o in self.openflow]}
            write_atomic(openflow_path(path), (json.dumps(doc, indent=1) + "\n").encode())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Snapshot:
        p = Path(path)
        try:
            data = files.read_private(p)
        except OSError as exc:
            raise SnapshotError(f"{p}: cannot read: {exc.strerror or exc}") from None
        return cls.decode(data, str(p))


def openflow_path(snapshot: str | os.PathLike[str]) -> Path:
    return Path(snapshot).with_suffix(".openflow")


def load_openflow(snapshot: str | os.PathLike[str]) -> tuple[openflow.BridgeOpenFlow, ...]:
    """The snapshot's OpenFlow state: from the small file beside it when that is this snapshot's (same
    checksum as the snapshot's header), else from the snapshot itself."""
    try:
        with os.fdopen(os.open(snapshot, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as f:
            m = _HEADER.match(f.readline(MAX_HEADER).rstrip(b"\n"))
        doc = json.loads(files.read_private(openflow_path(snapshot)))
        if m and doc["snapshot_checksum"] == m.group(2).decode():
            return tuple(openflow.BridgeOpenFlow.from_json(o) for o in doc["openflow"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return Snapshot.load(snapshot).openflow


def decode_body(data: bytes, source: str) -> dict[str, Any]:
    """Check header, length and checksum; return the parsed body.  Every refusal is one line."""
    if not data:
        raise SnapshotError(f"{source}: empty file (truncated snapshot)")
    if not data.startswith(MAGIC):
        if MAGIC.startswith(data):
            raise SnapshotError(f"{source}: truncated snapshot (only {len(data)} bytes)")
        raise SnapshotError(f"{source}: not a dpfreeze snapshot (bad magic)")
    newline = data.find(b"\n", 0, MAX_HEADER)
    if newline < 0:
        if len(data) < MAX_HEADER:
            raise SnapshotError(f"{source}: truncated snapshot (header incomplete)")
        raise SnapshotError(f"{source}: corrupt snapshot (header line too long)")
    m = _HEADER.match(data[:newline])
    if not m:
        word = data[len(MAGIC) + 1 : newline].split(b" ", 1)[0]
        if word.isdigit() and int(word) > FORMAT_VERSION:
            raise SnapshotError(f"{source}: snapshot format version {int(word)} is newer than this "
                                f"dpfreeze supports ({FORMAT_VERSION}); upgrade dpfreeze")
        raise SnapshotError(f"{source}: corrupt snapshot (malformed header)")
    version, digest, length = int(m.group(1)), m.group(2).decode(), int(m.group(3))
    if version > FORMAT_VERSION:
        raise SnapshotError(f"{source}: snapshot format version {version} is newer than this dpfreeze "
                            f"supports ({FORMAT_VERSION}); upgrade dpfreeze")
    if version < 1:
        raise SnapshotError(f"{source}: corrupt snapshot (format version {version})")
    algorithm = digest.split("=", 1)[0]
    if algorithm != CHECKSUM[version]:
        raise SnapshotError(f"{source}: corrupt snapshot (a {algorithm} checksum in a version {version} "
                            "header)")
    body = data[newline + 1 :]
    if len(body) < length:
        raise SnapshotError(f"{source}: truncated snapshot ({len(body)} of {length} body bytes)")
    if len(body) > length:
        raise SnapshotError(f"{source}: corrupt snapshot ({len(body) - length} bytes after the body)")
    if checksum(body, algorithm) != digest:
        raise SnapshotError(f"{source}: corrupt snapshot ({algorithm} mismatch)")
    try:
        parsed = json.loads(body)
        if not isinstance(parsed, dict) or parsed.get("format") != version:
            raise ValueError("body does not match the header's version")
        Snapshot.from_json(parsed)  # validate the whole structure now, not half-way through a restore
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise SnapshotError(f"{source}: corrupt snapshot body ({type(exc).__name__}: {exc})") from None
    return parsed


def write_atomic(path: Path, data: bytes | Iterable[bytes], *, head: Callable[[], bytes] | None = None,
                 head_size: int = 0) -> None:
    try:
        files.write_atomic(path, data, head=head, head_size=head_size)
    except OSError as exc:
        raise SnapshotError(f"{path}: cannot write: {exc.strerror or exc}") from None


# -- JSON codecs of the dpif records (bytes as hex) ------------------------------------------------------


def _hex(b: bytes | None) -> str | None:
    return None if b is None else b.hex()


def _unhex(s: str | None) -> bytes | None:
    return None if s is None else bytes.fromhex(s)


def _header(digest: str, length: int) -> bytes:
    """The first line; fixed width (the length in 20 digits), so that it can be written last.  `digest`
    as `checksum` gives it."""
    return b"%s %d %s length=%020d\n" % (MAGIC, FORMAT_VERSION, digest.encode(), length)


def _dp_to_json(d: DatapathSnapshot, flows: bool = True) -> dict[str, Any]:
    i, masks = d.info, d.mask_table
    return {
        "name": i.name,
        "ifindex": i.ifindex,
        "features": i.features,
        "per_cpu_pids": list(i.per_cpu_pids),
        "masks_cache_size": i.masks_cache_size,
        "vports": [
            {"port_no": v.port_no, "type": v.type.name.lower(), "name": v.name,
             "upcall_pids": list(v.upcall_pids), "ifindex": v.ifindex, "netnsid": v.netnsid,
             "options": v.options.hex()}
            for v in d.vports
        ],
        "masks": [m.hex() for m in masks],
        "flows": [
            {"ufid": _hex(f.ufid), "key": f.key.hex(), "mask": None if f.mask is None else masks[f.mask],
             "actions": _hex(f.actions)}
            for f in d.flows
        ] if flows else [],
        "meter_ids": list(d.meter_ids),
        "meters": None if d.meters is None else [
            {"id": r.id, "present": r.present, "bands": r.bands} for r in d.meters],
    }


def _mask(value: int | str | None, masks: list[bytes], known: dict[bytes, bytes]) -> bytes | None:
    """A flow's mask: an index into the table (format 2), or hex (format 1)."""
    if value is None:
        return None
    if isinstance(value, str):
        mask = bytes.fromhex(value)
        return known.setdefault(mask, mask)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(masks):
        raise ValueError(f"mask {value!r} is not in the table of {len(masks)}")
    return masks[value]


def _dp_from_json(d: dict[str, Any]) -> DatapathSnapshot:
    info = DatapathInfo(
        name=str(d["name"]),
        ifindex=int(d["ifindex"]),
        features=int(d["features"]),
        per_cpu_pids=tuple(int(p) for p in d["per_cpu_pids"]),
        masks_cache_size=None if d["masks_cache_size"] is None else int(d["masks_cache_size"]),
    )
    vports = tuple(
        Vport(
            port_no=int(v["port_no"]),
            type=VportType[str(v["type"]).upper()],
            name=str(v["name"]),
            dp_ifindex=info.ifindex,
            upcall_pids=tuple(int(p) for p in v["upcall_pids"]),
            ifindex=None if v["ifindex"] is None else int(v["ifindex"]),
            netnsid=None if v["netnsid"] is None else int(v["netnsid"]),
            options=bytes.fromhex(v["options"]),
        )
        for v in d["vports"]
    )
    # Format 1 wrote each flow's mask in full: one copy of each is kept all the same.
    masks = [bytes.fromhex(m) for m in d["masks"]] if "masks" in d else []
    known: dict[bytes, bytes] = {}
    flows = tuple(
        Flow(key=bytes.fromhex(f["key"]), mask=_mask(f["mask"], masks, known), actions=_unhex(f["actions"]),
             ufid=_unhex(f["ufid"]))
        for f in d["flows"]
    )
    meters = d.get("meters")  # absent before meters were read
    return DatapathSnapshot(
        info, vports, flows, tuple(int(m) for m in d["meter_ids"]),
        None if meters is None else tuple(
            MeterRecord(int(r["id"]), bool(r["present"]), int(r["bands"])) for r in meters))


# --------------------------------------------------------------------------------------------------------
# Taking a snapshot


_METER_NLA = struct.pack("=HH", 8, act.METER)  # a meter action's attribute header, wherever it is nested


def meter_ids(actions: bytes | memoryview | None) -> set[int]:
    """Every meter id a flow's actions use, nested actions (clone, sample, check_pkt_len) included.
    Actions without a meter action's header anywhere in their bytes are not decoded: most flows have
    none, and decoding 100 000 flows' actions was a third of a second natively, seconds under TCG."""
    found: set[int] = set()
    pending = list(act.decode_actions(actions)) if actions and _METER_NLA in actions else []
    while pending:
        a = pending.pop()
        if a.type == act.METER:
            found.add(struct.unpack("=I", a.raw)[0])
        pending.extend(a.children or ())
    return found


def flow_identity(f: Flow) -> tuple[str, bytes, bytes | None]:
    """How a flow is known: by UFID when it has one, else by its key and mask (as the kernel does)."""
    return ("ufid", f.ufid, None) if f.ufid else ("match", f.key, f.mask)


SHARED_ACTIONS = 4096  # distinct action lists interned at most (see dumptext.stateless)
_UFID, _ACTIONS = operator.itemgetter(3), operator.itemgetter(2)


def _once(records: list[Flow], used: list[int]) -> tuple[list[Flow], list[int]]:
    """Each flow once (dumps are not atomic): a flow seen again keeps its first place and takes the later
    copy, as a dict keyed by its identity (UFID, else key and mask) keeps it."""
    index: dict[bytes | tuple[bytes, bytes | None], int] = {}
    out: list[Flow] = []
    times: list[int] = []
    for f, t in zip(records, used, strict=True):
        at = index.setdefault(f.ufid or (f.key, f.mask), len(out))
        if at == len(out):
            out.append(f)
            times.append(t)
        else:
            out[at], times[at] = f, t
    return out, times


@contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic collector off while a dump builds its records.  Why: they hold no cycles (tuples of bytes
    and ints), yet each allocation counts toward the collector's thresholds, and at 100 000 flows its
    passes over the growing heap were 0.35 s of a 2.35 s snapshot under TCG.  Other tasks' garbage waits
    for the end; a pause within a pause leaves the collector to the outer one."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


async def snapshot_datapath(dp: Datapath) -> DatapathSnapshot:
    """Datapath, vports and flows.  Dumps are not atomic: a flow seen twice is kept once (by identity)."""
    info = await dp.info()
    vports = sorted(await dp.ports(), key=lambda v: v.port_no)
    # Bulk steps, no Python step per flow where a builtin can take it: at 200 000 flows the loop here was
    # most of the snapshot's time after the dump, and its tuples keyed twice 70 MB of the service's peak.
    records: list[Flow] = []
    used: list[int] = []
    masks: dict[bytes, bytes] = {}
    shared: dict[bytes, bytes] = {}
    with gc_paused():
        async for batch in dp.flow_batches():  # verbatim: no stats
            got, times = stateless(batch, masks, shared, SHARED_ACTIONS)
            records += got
            used += times
        ufids = set(map(_UFID, records))
        if len(ufids) != len(records) or None in ufids:  # flows seen twice, or flows without UFIDs
            records, used = _once(records, used)
        del ufids
        # The most recently used first (ties in dump order): a hand-over re-installs only as many as the
        # new daemon keeps (pin.py).
        flows = tuple(map(records.__getitem__, sorted(range(len(records)), key=used.__getitem__,
                                                      reverse=True)))
        del records, used
    meters: set[int] = set()
    for actions in set(map(_ACTIONS, flows)):  # the distinct action lists
        try:
            meters |= meter_ids(actions)
        except WireError as exc:  # the flows are kept verbatim; only their meter ids are unknown
            first = next(f for f in flows if f.actions == actions)
            LOG.warning(kv("snapshot_undecodable_actions", flow=flow_text(first), error=str(exc)))
    info = DatapathInfo(name=info.name, ifindex=info.ifindex, features=info.features,
                        per_cpu_pids=info.per_cpu_pids, masks_cache_size=info.masks_cache_size)
    vports = [replace(v, stats=None, upcall_success=None, upcall_fail=None) for v in vports]
    ids = tuple(sorted(meters))
    # A userspace datapath's meters are the daemon's, re-created by the next one from the OpenFlow meters.
    meter_records = () if dp.lives_in_daemon else await _read_meters(dp, ids)
    return DatapathSnapshot(info, tuple(vports), flows, ids, meter_records)


async def _read_meters(dp: Datapath, ids: Iterable[int]) -> tuple[MeterRecord, ...] | None:
    """GET each meter (there is no meter dump); one the kernel does not have is recorded as absent.
    None when the kernel has no meters at all."""
    records = []
    for mid in ids:
        try:
            stats = await dp.meter_get(mid)
        except MetersUnsupported:
            return None
        except KernelError as exc:
            if exc.code != errno.ENOENT:
                raise
            records.append(MeterRecord(mid, present=False))
        else:
            records.append(MeterRecord(mid, present=True, bands=len(stats.bands)))
    return tuple(records)


async def take_snapshot(*dps: Datapath, env: OvsEnv | None = None, with_openflow: bool = True,
                        timeout: float = 10.0,
                        saved_openflow: Sequence[openflow.BridgeOpenFlow] | None = None,
                        profile: Profile | None = None) -> Snapshot:
    """Everything a restore needs.  Parts that cannot be read (no daemon) become `gaps`, not failures.

    The datapaths, the OpenFlow state and the versions are read side by side: a freeze waits on the
    slowest of them, not on their sum.  `saved_openflow` given: the daemon is dead (a crash), and every
    moment until the freeze holds is a moment of dropped misses.  The OpenFlow state is then the one saved
    before, and what only a module reload would need (internal ports' Linux configuration: an import and a
    netlink round) or only a report shows (the versions: a subprocess and an OVSDB session) is left out."""
    profile = profile or Profile()
    datapaths: list[DatapathSnapshot] = []
    netdevs: list[netdevconf.NetdevConfig] = []
    of_state = list(saved_openflow or ())
    found: dict[str, list[str]] = {"netdev": [], "openflow": []}
    versions = ovsdb.Versions(platform.release(), None, None, None)

    async def read_datapaths() -> None:
        with profile.span("snapshot.datapath"):
            datapaths.extend([await snapshot_datapath(dp) for dp in dps])
        if saved_openflow is not None:
            return
        # A kernel internal port's netdev dies with its datapath; a userspace one is a persistent tap.
        internal = sorted({v.name for dp, d in zip(dps, datapaths, strict=True) if not dp.lives_in_daemon
                           for v in d.vports if v.type == VportType.INTERNAL})
        with profile.span("snapshot.netdev"):
            for name in internal:
                try:
                    netdevs.extend(await trio.to_thread.run_sync(netdevconf.save, [name]))
                except netdevconf.NetdevError as exc:
                    found["netdev"].append(f"netdev: {exc}")

    async def read_openflow() -> None:
        with profile.span("snapshot.openflow"):
            try:
                of_state[:] = await openflow.save_all(env, timeout)
            except openflow.OpenFlowError as exc:
                found["openflow"].append(f"openflow: {exc}")

    async def read_versions() -> None:
        nonlocal versions
        with profile.span("snapshot.versions"):
            versions = await ovsdb.versions(env, timeout)

    with ungrouped():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_datapaths)
            if with_openflow and saved_openflow is None:
                nursery.start_soon(read_openflow)
            if saved_openflow is None:
                nursery.start_soon(read_versions)
    gaps = found["netdev"] + found["openflow"] + [g for d in datapaths if (g := _meter_gap(d))]
    for gap in gaps:
        LOG.warning(kv("snapshot_gap", detail=gap))
    return Snapshot(
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
        host=socket.gethostname(),
        versions=versions,
        datapaths=tuple(datapaths),
        netdevs=tuple(netdevs),
        openflow=tuple(of_state),
        gaps=tuple(gaps),
    )


def _meter_gap(d: DatapathSnapshot) -> str | None:
    if d.meters is None:
        return f"meters: {d.name}: the kernel has no ovs_meter family; meters {list(d.meter_ids)} not read"
    present = [r.id for r in d.meters if r.present]
    if not present:
        return None
    return (f"meters: {d.name}: meters {present} exist, but the kernel does not report their unit, rates or "
            "bursts, so a restore cannot re-create them; ovs-vswitchd re-creates them from the OpenFlow "
            "meters saved here")


# --------------------------------------------------------------------------------------------------------
# Diff


@dataclass(frozen=True)
class Difference:
    sign: str  # "-" only in A, "+" only in B, "~" in both but different
    kind: str  # datapath / vport / flow / netdev / openflow
    where: str  # datapath or bridge name
    text: str

    def __str__(self) -> str:
        return f"{self.sign} {self.kind} {self.where}: {self.text}"


def flow_text(f: Flow) -> str:
    """The flow as ovs-dpctl writes it (UFID first, no stats); raw hex if the codec cannot read it."""
    ufid = f"{fk.ufid_text(f.ufid)}, " if f.ufid else ""
    try:
        return f"{ufid}{fk.format_key(f.key, f.mask)}, actions:{act.format_actions(f.actions)}"
    except (WireError, ValueError, struct.error):
        mask = f.mask.hex() if f.mask is not None else "exact"
        actions = f.actions.hex() if f.actions is not None else "?"
        return f"{ufid}key:{f.key.hex()} mask:{mask} actions:{actions} (undecodable)"


def _vport_text(v: Vport) -> str:
    extra = f" options:{v.options.hex()}" if v.options else ""
    ifindex = f" ifindex:{v.ifindex}" if v.ifindex is not None else ""
    return f"{v.port_no} {v.name} ({v.type.name.lower()}) pids:{list(v.upcall_pids)}{ifindex}{extra}"


def diff_datapaths(a: DatapathSnapshot, b: DatapathSnapshot, *, with_pids: bool = True) -> list[Difference]:
    out: list[Difference] = []
    name = a.name
    if a.info.features != b.info.features:
        out.append(Difference("~", "datapath", name,
                              f"features {a.info.features:#x} -> {b.info.features:#x}"))
    if with_pids and a.info.per_cpu_pids != b.info.per_cpu_pids:
        out.append(Difference("~", "datapath", name,
                              f"per_cpu_pids {list(a.info.per_cpu_pids)} -> {list(b.info.per_cpu_pids)}"))
    va_ports = {v.port_no: v for v in a.vports}
    vb_ports = {v.port_no: v for v in b.vports}
    for no in sorted(va_ports.keys() | vb_ports.keys()):
        pa, pb = va_ports.get(no), vb_ports.get(no)
        if pb is None and pa is not None:
            out.append(Difference("-", "vport", name, _vport_text(pa)))
        elif pa is None and pb is not None:
            out.append(Difference("+", "vport", name, _vport_text(pb)))
        elif pa is not None and pb is not None and _vport_cmp(pa, with_pids) != _vport_cmp(pb, with_pids):
            out.append(Difference("~", "vport", name, f"{_vport_text(pa)} -> {_vport_text(pb)}"))
    fa = {flow_identity(f): f for f in a.flows}
    fb = {flow_identity(f): f for f in b.flows}
    for ident, f in fa.items():
        g = fb.get(ident)
        if g is None:
            out.append(Difference("-", "flow", name, flow_text(f)))
        elif (f.key, f.mask, f.actions) != (g.key, g.mask, g.actions):
            out.append(Difference("~", "flow", name, f"{flow_text(f)} -> {flow_text(g)}"))
    out += [Difference("+", "flow", name, flow_text(g)) for ident, g in fb.items() if ident not in fa]
    return out


def _vport_cmp(v: Vport, with_pids: bool) -> tuple[object, ...]:
    return (v.name, v.type, v.options, v.upcall_pids if with_pids else ())


def _keyed_diff(kind: str, a: Iterable[Any], b: Iterable[Any], key: str) -> list[Difference]:
    ma = {getattr(x, key): x for x in a}
    mb = {getattr(x, key): x for x in b}
    out = []
    for k in sorted(ma.keys() | mb.keys()):
        if k not in mb:
            out.append(Difference("-", kind, k, ma[k].describe()))
        elif k not in ma:
            out.append(Difference("+", kind, k, mb[k].describe()))
        elif (xa := ma[k]) != (xb := mb[k]):
            out.append(Difference("~", kind, k, f"{xa.describe()} -> {xb.describe()}"))
    return out


def diff(a: Snapshot, b: Snapshot, *, with_pids: bool = True) -> list[Difference]:
    """What changed from A to B: datapaths, vports (by number), flows (by UFID, else key+mask), netdevs,
    OpenFlow state.  Empty when B would need nothing restored from A."""
    out: list[Difference] = []
    names_a = {d.name: d for d in a.datapaths}
    names_b = {d.name: d for d in b.datapaths}
    for name in sorted(names_a.keys() | names_b.keys()):
        da, db = names_a.get(name), names_b.get(name)
        if db is None and da is not None:
            out.append(Difference("-", "datapath", name, f"{len(da.vports)} vports, {len(da.flows)} flows"))
        elif da is None and db is not None:
            out.append(Difference("+", "datapath", name, f"{len(db.vports)} vports, {len(db.flows)} flows"))
        elif da is not None and db is not None:
            out += diff_datapaths(da, db, with_pids=with_pids)
    out += _keyed_diff("netdev", a.netdevs, b.netdevs, "name")
    out += _keyed_diff("openflow", a.openflow, b.openflow, "bridge")
    return out


# --------------------------------------------------------------------------------------------------------
# Restore


@dataclass
class RestoreReport:
    """What restore did, and what it refused to touch (conflicts are reported, never overwritten)."""

    datapath: str
    features_set: bool = False
    vports_added: list[str] = field(default_factory=list)
    vports_present: int = 0
    flows_added: int = 0
    flows_present: int = 0
    meters_present: int = 0
    meters_missing: list[int] = field(default_factory=list)
    netdev_changes: list[str] = field(default_factory=list)
    ports_renumbered: list[str] = field(default_factory=list)  # userspace datapath: "name: old -> new"
    conflicts: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def lines(self) -> list[str]:
        out = [f"datapath {self.datapath}: features {'set' if self.features_set else 'unchanged'}",
               f"vports: {len(self.vports_added)} added, {self.vports_present} already present",
               f"flows: {self.flows_added} added, {self.flows_present} already present"]
        if self.meters_present or self.meters_missing:
            out.append(f"meters: {self.meters_present} present, {len(self.meters_missing)} missing")
        out += [f"added vport {v}" for v in self.vports_added]
        out += [f"missing meter {m}: not re-created (the kernel does not report its rates); flows using it "
                "pass unmetered until ovs-vswitchd re-creates it" for m in self.meters_missing]
        out += [f"netdev {c}" for c in self.netdev_changes]
        out += [f"port {c} (flows rewritten)" for c in self.ports_renumbered]
        out += [f"conflict: {c}" for c in self.conflicts]
        out += [f"failed: {f}" for f in self.failures]
        return out


async def restore(dp: Datapath, snap: Snapshot | DatapathSnapshot, *, netdevs: bool = True) -> RestoreReport:
    """Re-create on a running datapath what the snapshot has and it lacks: features, vports with the same
    numbers, flows (meters cannot be re-created: the missing ones are reported).  Identical flows are left
    alone; a vport or flow that exists but differs is reported as a conflict and not touched.  (Creating a
    missing datapath is the provider's job: open it first.)"""
    dsnap = snap.datapath(dp.name) if isinstance(snap, Snapshot) else snap
    report = RestoreReport(dsnap.name)
    if dp.lives_in_daemon:
        await _restore_into_daemon(dp, dsnap, report)
        return report
    info = await dp.info()
    want = dsnap.info
    # Per-CPU pids are put back only where none are set (a fresh datapath): live pids belong to whoever
    # handles upcalls now (a new daemon, or dpfreeze's hand-over) and must not be replaced by dead ones.
    no_pids = want.per_cpu_dispatch and not info.per_cpu_pids and bool(want.per_cpu_pids)
    if info.features != want.features or no_pids:
        await dp.set_features(want.features, want.per_cpu_pids if want.per_cpu_dispatch else None)
        report.features_set = True
    created = await _restore_vports(dp, dsnap, report)
    if netdevs and isinstance(snap, Snapshot):
        configs = [n for n in snap.netdevs if n.name in created]
        if configs:
            try:
                report.netdev_changes = await trio.to_thread.run_sync(netdevconf.apply, configs)
            except netdevconf.NetdevError as exc:
                report.failures.append(str(exc))
    await _check_meters(dp, dsnap, report)
    await _restore_flows(dp, dsnap, report)
    LOG.info(kv("snapshot_restored", datapath=dsnap.name, vports=len(report.vports_added),
                flows=report.flows_added, conflicts=len(report.conflicts), failures=len(report.failures)))
    return report


async def _restore_into_daemon(dp: Datapath, dsnap: DatapathSnapshot, report: RestoreReport) -> None:
    """A userspace datapath: its ports are the daemon's to add (from its bridges), and it may have numbered
    them differently, so the flows are carried by port name (`portmap`); meters live in the daemon too."""
    ports = PortMap.between(dsnap.vports, await dp.ports())
    report.vports_present = len(ports.new)
    report.ports_renumbered = ports.renamed()
    report.conflicts += [f"port {name} is not in the datapath: its flows are not restored"
                         for name in ports.missing()]
    carried: list[Flow] = []
    for f in dsnap.flows:
        try:
            carried.append(ports.carry(f))
        except UnmappedPort as exc:
            report.failures.append(f"flow {flow_text(f)}: {exc}")
    await _restore_flows(dp, replace(dsnap, flows=tuple(carried)), report)
    LOG.info(kv("snapshot_restored", datapath=dsnap.name, flows=report.flows_added,
                renumbered=len(report.ports_renumbered), failures=len(report.failures)))


async def _restore_vports(dp: Datapath, dsnap: DatapathSnapshot, report: RestoreReport) -> set[str]:
    live = await dp.ports()
    by_no = {v.port_no: v for v in live}
    by_name = {v.name: v for v in live}
    created: set[str] = set()
    for v in dsnap.vports:
        here = by_no.get(v.port_no)
        if here is not None and here.name == v.name:
            report.vports_present += 1
            if here.type != v.type:
                report.conflicts.append(f"vport {v.port_no} {v.name} is {here.type.name.lower()}, "
                                        f"snapshot says {v.type.name.lower()}")
        elif here is not None:
            report.conflicts.append(f"port {v.port_no} is {here.name}, snapshot says {v.name}")
        elif v.name in by_name:
            report.conflicts.append(f"vport {v.name} is port {by_name[v.name].port_no}, "
                                    f"snapshot says {v.port_no}")
        else:
            try:
                await _port_add(dp, v, report)
            except (KernelError, WireError) as exc:
                report.failures.append(f"vport {v.port_no} {v.name}: {exc}")
                continue
            report.vports_added.append(_vport_text(v))
            created.add(v.name)
    return created


async def _port_add(dp: Datapath, v: Vport, report: RestoreReport) -> None:
    """Re-create a vport with its number; an internal port also gets its old ifindex back when free."""
    ifindex = v.ifindex if v.type == VportType.INTERNAL else None
    pids = v.upcall_pids or (0,)
    try:
        await dp.port_add(v.name, v.type, port_no=v.port_no, upcall_pids=pids, options=v.options,
                          ifindex=ifindex)
    except KernelError as exc:
        if ifindex is None or exc.code not in (errno.EBUSY, errno.EEXIST):
            raise
        report.conflicts.append(f"vport {v.name}: ifindex {ifindex} is taken, the kernel chose another")
        await dp.port_add(v.name, v.type, port_no=v.port_no, upcall_pids=pids, options=v.options)


async def _check_meters(dp: Datapath, dsnap: DatapathSnapshot, report: RestoreReport) -> None:
    """A meter cannot be re-created (its configuration is not readable), and the kernel lets packets through
    a missing meter unmetered: say which of the meters that existed at the snapshot the flows will miss."""
    for r in dsnap.meters or ():
        if not r.present:
            continue
        try:
            await dp.meter_get(r.id)
        except (KernelError, MetersUnsupported, WireError) as exc:
            if isinstance(exc, KernelError) and exc.code == errno.ENOENT:
                report.meters_missing.append(r.id)
            else:
                report.failures.append(f"meter {r.id}: {exc}")
        else:
            report.meters_present += 1


async def _restore_flows(dp: Datapath, dsnap: DatapathSnapshot, report: RestoreReport) -> None:
    live: dict[tuple[str, bytes, bytes | None], Flow] = {}
    async for f in dp.flows():
        live[flow_identity(f)] = f
    todo: list[Flow] = []
    for f in dsnap.flows:
        if f.actions is None:
            report.failures.append(f"flow without actions in the snapshot: {flow_text(f)}")
            continue
        have = live.get(flow_identity(f))
        if have is None:
            todo.append(f)
        elif (have.key, have.mask, have.actions) == (f.key, f.mask, f.actions):
            report.flows_present += 1
        else:
            report.conflicts.append(f"flow differs: {flow_text(have)} (snapshot: {flow_text(f)})")
    if not todo:
        return
    results = await dp.flow_put_many(todo, create=True)
    for f, err in zip(todo, results, strict=True):
        if err is None:
            report.flows_added += 1
        elif isinstance(err, KernelError) and err.code == errno.EEXIST:  # someone put it meanwhile
            report.flows_present += 1
        else:
            report.failures.append(f"flow {flow_text(f)}: {err}")
