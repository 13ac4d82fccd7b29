"""Generic-netlink families as data: commands, versions, groups and attribute tables.

One place knows every attribute number (the shape of the kernel's YNL specs for nlctrl and the
openvswitch families).  `encode_attrs` / `decode_attrs` walk these tables, so a new attribute is one
table row, and a property test can round-trip every row without knowing what it means.
Flow keys, masks and actions stay RAW here: their inner structure belongs to `flowkey` / `actions`.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dpif.netlink.wire import NLA_F_NESTED, WireError, attr, cstr, iter_attrs


class T(enum.Enum):
    """Attribute payload types (the YNL type names)."""

    U8 = "u8"
    U16 = "u16"
    U32 = "u32"
    U64 = "u64"
    S32 = "s32"
    STRING = "string"  # NUL-terminated
    BINARY = "binary"  # raw bytes, kept verbatim (keys, masks, actions, packets)
    FLAG = "flag"
    U32_ARRAY = "u32-array"  # packed host-order u32s (upcall pids)
    NEST = "nest"  # one nested attribute set
    NEST_ARRAY = "nest-array"  # list of nests, each item's type is its index (nlctrl groups)
    STRUCT = "struct"  # fixed layout of unsigned fields (stats)


@dataclass(frozen=True)
class Attr:
    name: str
    type: T
    nested: AttrSet | None = None
    layout: str = ""  # struct module format for T.STRUCT
    fields: tuple[str, ...] = ()  # field names for T.STRUCT


@dataclass(frozen=True)
class AttrSet:
    """A table of attributes; the per-row codecs are built once, so decoding is one dict lookup and one
    call per attribute (dumps decode 100k flows)."""

    name: str
    by_num: Mapping[int, Attr]
    by_name: Mapping[str, tuple[int, Attr]] = field(init=False, repr=False, compare=False)
    decoders: Mapping[int, tuple[str, Callable[[memoryview], Any]]] = field(
        init=False, repr=False, compare=False
    )
    encoders: Mapping[str, Callable[[Any], bytes]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {a.name: (n, a) for n, a in self.by_num.items()})
        object.__setattr__(self, "decoders", {n: (a.name, _decoder(a)) for n, a in self.by_num.items()})
        object.__setattr__(self, "encoders", {a.name: _encoder(n, a) for n, a in self.by_num.items()})


@dataclass(frozen=True)
class Family:
    name: str
    version: int
    commands: Mapping[str, int]
    attrs: AttrSet
    mcast_group: str | None = None
    has_ovs_header: bool = True


_SCALARS: dict[T, struct.Struct] = {
    T.U8: struct.Struct("=B"),
    T.U16: struct.Struct("=H"),
    T.U32: struct.Struct("=I"),
    T.U64: struct.Struct("=Q"),
    T.S32: struct.Struct("=i"),
}


def encode_attrs(aset: AttrSet, values: Mapping[str, Any]) -> bytes:
    """Encode {name: value} in the given order (None values are skipped).  Unknown names: KeyError."""
    enc = aset.encoders
    return b"".join([enc[name](value) for name, value in values.items() if value is not None])


def decode_attrs(aset: AttrSet, payload: bytes | memoryview) -> dict[str, Any]:
    """Decode a run of attributes; unknown numbers are ignored (newer kernels), bad ones raise WireError."""
    out: dict[str, Any] = {}
    table = aset.decoders
    for num, value in iter_attrs(payload):
        row = table.get(num)
        if row is not None:
            out[row[0]] = row[1](value)
    return out


def _encoder(num: int, spec: Attr) -> Callable[[Any], bytes]:
    t = spec.type
    if t in _SCALARS:
        pack = _SCALARS[t].pack
        return lambda v: attr(num, pack(v))
    if t is T.STRING:
        return lambda v: attr(num, v.encode() + b"\0")
    if t is T.BINARY:
        return lambda v: attr(num, bytes(v))
    if t is T.FLAG:
        return lambda v: attr(num) if v else b""
    if t is T.U32_ARRAY:
        return lambda v: attr(num, struct.pack(f"={len(v)}I", *v))
    if t is T.STRUCT:
        return lambda v: attr(num, struct.pack(spec.layout, *(v[f] for f in spec.fields)))
    nested = spec.nested
    assert nested is not None
    if t is T.NEST:
        return lambda v: attr(num | NLA_F_NESTED, encode_attrs(nested, v))
    return lambda v: attr(
        num | NLA_F_NESTED,
        b"".join(attr((i + 1) | NLA_F_NESTED, encode_attrs(nested, item)) for i, item in enumerate(v)),
    )


def _decoder(spec: Attr) -> Callable[[memoryview], Any]:
    t, name = spec.type, spec.name
    if t in _SCALARS:
        s = _SCALARS[t]
        size, unpack = s.size, s.unpack

        def scalar(v: memoryview) -> Any:
            if len(v) != size:
                raise WireError(f"{name}: expected {size} bytes, got {len(v)}")
            return unpack(v)[0]

        return scalar
    if t is T.STRING:

        def string(v: memoryview) -> str:
            try:
                return cstr(v)
            except UnicodeDecodeError as exc:
                raise WireError(f"{name}: not UTF-8") from exc

        return string
    if t is T.BINARY:
        return bytes
    if t is T.FLAG:
        return lambda v: True
    if t is T.U32_ARRAY:

        def u32_array(v: memoryview) -> tuple[int, ...]:
            if len(v) % 4:
                raise WireError(f"{name}: length {len(v)} is not a multiple of 4")
            return tuple(struct.unpack(f"={len(v) // 4}I", v))

        return u32_array
    if t is T.STRUCT:
        layout = struct.Struct(spec.layout)

        def fixed(v: memoryview) -> dict[str, int]:
            if len(v) < layout.size:
                raise WireError(f"{name}: expected {layout.size} bytes, got {len(v)}")
            return dict(zip(spec.fields, layout.unpack_from(v), strict=True))

        return fixed
    nested = spec.nested
    assert nested is not None
    if t is T.NEST:
        return lambda v: decode_attrs(nested, v)
    return lambda v: [decode_attrs(nested, item) for _, item in iter_attrs(v)]


def _aset(name: str, rows: Mapping[int, Attr]) -> AttrSet:
    return AttrSet(name, rows)


# --- nlctrl (family resolution) -------------------------------------------------------------------------

GENL_ID_CTRL = 0x10
CTRL_CMD_NEWFAMILY, CTRL_CMD_DELFAMILY, CTRL_CMD_GETFAMILY = 1, 2, 3
CTRL_CMD_NEWMCAST_GRP, CTRL_CMD_DELMCAST_GRP = 7, 8

MCAST_GROUP = _aset("mcast-group", {1: Attr("name", T.STRING), 2: Attr("id", T.U32)})
CTRL_ATTRS = _aset(
    "ctrl",
    {
        1: Attr("family-id", T.U16),
        2: Attr("family-name", T.STRING),
        3: Attr("version", T.U32),
        4: Attr("hdrsize", T.U32),
        5: Attr("maxattr", T.U32),
        7: Attr("mcast-groups", T.NEST_ARRAY, MCAST_GROUP),
    },
)
NLCTRL = Family(
    "nlctrl",
    2,
    {"newfamily": 1, "delfamily": 2, "getfamily": 3, "newmcast-grp": 7, "delmcast-grp": 8},
    CTRL_ATTRS,
    mcast_group="notify",
    has_ovs_header=False,
)

# --- openvswitch ----------------------------------------------------------------------------------------

CMD_NEW, CMD_DEL, CMD_GET, CMD_SET = 1, 2, 3, 4
PACKET_CMD_MISS, PACKET_CMD_ACTION, PACKET_CMD_EXECUTE = 1, 2, 3

OVS_DP_VER_FEATURES = 2
UFID_F_OMIT_KEY, UFID_F_OMIT_MASK, UFID_F_OMIT_ACTIONS = 1, 2, 4

_OVS_CMDS = {"new": CMD_NEW, "del": CMD_DEL, "get": CMD_GET, "set": CMD_SET}

DP_STATS = Attr("stats", T.STRUCT, layout="=4Q", fields=("hit", "missed", "lost", "flows"))
MEGAFLOW_STATS = Attr(
    "megaflow-stats", T.STRUCT, layout="=QIIQQ", fields=("mask-hit", "masks", "pad0", "cache-hit", "pad1")
)
DATAPATH_ATTRS = _aset(
    "ovs-datapath",
    {
        1: Attr("name", T.STRING),
        2: Attr("upcall-pid", T.U32),
        3: DP_STATS,
        4: MEGAFLOW_STATS,
        5: Attr("user-features", T.U32),
        7: Attr("masks-cache-size", T.U32),
        8: Attr("per-cpu-pids", T.U32_ARRAY),
        9: Attr("ifindex", T.S32),
    },
)

VPORT_STATS = Attr(
    "stats",
    T.STRUCT,
    layout="=8Q",
    fields=(
        "rx_packets",
        "tx_packets",
        "rx_bytes",
        "tx_bytes",
        "rx_errors",
        "tx_errors",
        "rx_dropped",
        "tx_dropped",
    ),
)
# OVS_VPORT_UPCALL_ATTR_* start at 0: the walker handles type 0 like any other.
VPORT_UPCALL_STATS = _aset("vport-upcall-stats", {0: Attr("success", T.U64), 1: Attr("fail", T.U64)})
VPORT_ATTRS = _aset(
    "ovs-vport",
    {
        1: Attr("port-no", T.U32),
        2: Attr("type", T.U32),
        3: Attr("name", T.STRING),
        4: Attr("options", T.BINARY),
        5: Attr("upcall-pid", T.U32_ARRAY),
        6: VPORT_STATS,
        8: Attr("ifindex", T.U32),
        9: Attr("netnsid", T.S32),
        10: Attr("upcall-stats", T.NEST, VPORT_UPCALL_STATS),
    },
)

OVS_FLOW_STATS = Attr("stats", T.STRUCT, layout="=QQ", fields=("packets", "bytes"))  # struct ovs_flow_stats
FLOW_ATTRS = _aset(
    "ovs-flow",
    {
        1: Attr("key", T.BINARY),
        2: Attr("actions", T.BINARY),
        3: OVS_FLOW_STATS,
        4: Attr("tcp-flags", T.U8),
        5: Attr("used", T.U64),
        6: Attr("clear", T.FLAG),
        7: Attr("mask", T.BINARY),
        8: Attr("probe", T.FLAG),
        9: Attr("ufid", T.BINARY),
        10: Attr("ufid-flags", T.U32),
    },
)

PACKET_ATTRS = _aset(
    "ovs-packet",
    {
        1: Attr("packet", T.BINARY),
        2: Attr("key", T.BINARY),
        3: Attr("actions", T.BINARY),
        4: Attr("userdata", T.BINARY),
        5: Attr("egress-tun-key", T.BINARY),
        8: Attr("probe", T.FLAG),
        9: Attr("mru", T.U16),
        10: Attr("len", T.U32),
        11: Attr("hash", T.U64),
        12: Attr("upcall-pid", T.U32),
    },
)

# Meters are per datapath (ovs_header dp_ifindex) and have no dump: GET needs an ID.  Band items carry no
# type of their own: the kernel writes 0 (OVS_BAND_ATTR_UNSPEC), we send the index + 1; neither side reads it.
METER_CMD_FEATURES, METER_CMD_SET, METER_CMD_DEL, METER_CMD_GET = 1, 2, 3, 4

METER_BAND_ATTRS = _aset(
    "ovs-meter-band",
    {1: Attr("type", T.U32), 2: Attr("rate", T.U32), 3: Attr("burst", T.U32), 4: OVS_FLOW_STATS},
)
METER_ATTRS = _aset(
    "ovs-meter",
    {
        1: Attr("id", T.U32),
        2: Attr("kbps", T.FLAG),
        3: OVS_FLOW_STATS,
        4: Attr("bands", T.NEST_ARRAY, METER_BAND_ATTRS),
        5: Attr("used", T.U64),
        6: Attr("clear", T.FLAG),
        7: Attr("max-meters", T.U32),
        8: Attr("max-bands", T.U32),
    },
)

OVS_DATAPATH = Family("ovs_datapath", OVS_DP_VER_FEATURES, _OVS_CMDS, DATAPATH_ATTRS, "ovs_datapath")
OVS_VPORT = Family("ovs_vport", 1, _OVS_CMDS, VPORT_ATTRS, "ovs_vport")
OVS_FLOW = Family("ovs_flow", 1, _OVS_CMDS, FLOW_ATTRS, "ovs_flow")
OVS_PACKET = Family(
    "ovs_packet",
    1,
    {"miss": PACKET_CMD_MISS, "action": PACKET_CMD_ACTION, "execute": PACKET_CMD_EXECUTE},
    PACKET_ATTRS,
)

# ovs_meter has a multicast group, but the kernel never sends to it.
OVS_METER = Family(
    "ovs_meter",
    1,
    {"features": METER_CMD_FEATURES, "set": METER_CMD_SET, "del": METER_CMD_DEL, "get": METER_CMD_GET},
    METER_ATTRS,
    "ovs_meter",
)

FAMILIES: Mapping[str, Family] = {
    f.name: f for f in (NLCTRL, OVS_DATAPATH, OVS_VPORT, OVS_FLOW, OVS_PACKET, OVS_METER)
}
OVS_FAMILIES = ("ovs_datapath", "ovs_vport", "ovs_flow", "ovs_packet")
