"""The attribute tables: every attribute round-trips, and malformed input is a WireError, never a crash."""

from __future__ import annotations

import contextlib
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpif.netlink import families as fam
from dpif.netlink import messages as m
from dpif.netlink.wire import GENL_HDR, OVS_HDR, WireError, attr, iter_messages, parse_error

ALL_SETS = sorted(
    {
        a.name: a
        for a in [
            *(f.attrs for f in fam.FAMILIES.values()),
            fam.MCAST_GROUP,
            fam.VPORT_UPCALL_STATS,
            fam.METER_BAND_ATTRS,
        ]
    }.items()
)
ROWS = [(aset, num, spec) for _, aset in ALL_SETS for num, spec in aset.by_num.items()]

_UINT = {"u8": 8, "u16": 16, "u32": 32, "u64": 64}
_STRUCT_SIZES = {"Q": 64, "I": 32}


def value_for(spec: fam.Attr, depth: int = 0) -> st.SearchStrategy[Any]:
    t = spec.type
    if t.value in _UINT:
        return st.integers(0, 2 ** _UINT[t.value] - 1)
    if t is fam.T.S32:
        return st.integers(-(2**31), 2**31 - 1)
    if t is fam.T.STRING:
        return st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\0"), max_size=20)
    if t is fam.T.BINARY:
        return st.binary(max_size=64)
    if t is fam.T.FLAG:
        return st.just(True)
    if t is fam.T.U32_ARRAY:
        return st.lists(st.integers(0, 2**32 - 1), max_size=8).map(tuple)
    if t is fam.T.STRUCT:
        sizes = _expand(spec.layout)
        return st.tuples(*(st.integers(0, 2**b - 1) for b in sizes)).map(
            lambda vs: dict(zip(spec.fields, vs, strict=True))
        )
    assert spec.nested is not None
    inner = values_for(spec.nested)
    return inner if t is fam.T.NEST else st.lists(inner, max_size=3)


def _expand(layout: str) -> list[int]:
    """Bit widths of the fields of a struct layout like '=4Q' or '=QIIQQ'."""
    out, count = [], ""
    for c in layout.lstrip("="):
        if c.isdigit():
            count += c
            continue
        out += [_STRUCT_SIZES[c]] * int(count or 1)
        count = ""
    return out


def values_for(aset: fam.AttrSet) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional={spec.name: value_for(spec) for spec in aset.by_num.values()})


@pytest.mark.parametrize(("aset", "num", "spec"), ROWS, ids=[f"{a.name}.{s.name}" for a, _, s in ROWS])
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_every_attribute_round_trips(
    aset: fam.AttrSet, num: int, spec: fam.Attr, data: st.DataObject
) -> None:
    value = data.draw(value_for(spec))
    encoded = fam.encode_attrs(aset, {spec.name: value})
    assert len(encoded) % 4 == 0
    assert fam.decode_attrs(aset, encoded) == {spec.name: value}


@pytest.mark.parametrize("aset", [a for _, a in ALL_SETS], ids=[n for n, _ in ALL_SETS])
@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_whole_sets_round_trip(aset: fam.AttrSet, data: st.DataObject) -> None:
    values = data.draw(values_for(aset))
    assert fam.decode_attrs(aset, fam.encode_attrs(aset, values)) == values


def test_unknown_attributes_are_ignored_and_last_one_wins() -> None:
    payload = attr(99, b"newer kernel") + attr(3, b"a\0") + attr(3, b"b\0")
    assert fam.decode_attrs(fam.VPORT_ATTRS, payload) == {"name": "b"}


def test_vport_upcall_stats_start_at_type_zero() -> None:
    payload = attr(10, attr(0, struct.pack("=Q", 5)) + attr(1, struct.pack("=Q", 7)))
    assert fam.decode_attrs(fam.VPORT_ATTRS, payload) == {"upcall-stats": {"success": 5, "fail": 7}}


@pytest.mark.parametrize(
    ("aset", "payload"),
    [
        (fam.DATAPATH_ATTRS, attr(5, b"\1\0")),  # u32 of 2 bytes
        (fam.DATAPATH_ATTRS, attr(8, b"\1\0\0\0\0")),  # pid array not a multiple of 4
        (fam.DATAPATH_ATTRS, attr(3, b"\0" * 31)),  # stats struct too short
        (fam.FLOW_ATTRS, struct.pack("=HH", 200, 1) + b"\0" * 8),  # length beyond the buffer
        (fam.FLOW_ATTRS, b"\1\0"),  # truncated header
        (fam.VPORT_ATTRS, attr(3, b"\xff\xfe\0")),  # name not UTF-8
        (fam.METER_ATTRS, attr(4, attr(0, attr(2, b"\1\0")))),  # band rate of 2 bytes
        (fam.METER_ATTRS, attr(5, b"\0" * 4)),  # used: u64 of 4 bytes
    ],
)
def test_malformed_attributes_raise_wire_error(aset: fam.AttrSet, payload: bytes) -> None:
    with pytest.raises(WireError):
        fam.decode_attrs(aset, payload)


DECODERS = [
    m.decode_datapath,
    m.decode_vport,
    m.decode_flow,
    m.decode_upcall,
    m.decode_family,
    m.decode_meter_stats,
    lambda p: fam.decode_attrs(fam.CTRL_ATTRS, p),
    lambda p: list(iter_messages(p)),
]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(range(len(DECODERS))))
def test_random_bytes_never_crash(data: bytes, which: int) -> None:
    with contextlib.suppress(WireError):
        DECODERS[which](data)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_truncated_valid_messages_raise_wire_error_or_decode(data: st.DataObject) -> None:
    """Cut a valid flow message anywhere: a shorter but still well-formed message, or a WireError."""
    values = data.draw(values_for(fam.FLOW_ATTRS))
    body = GENL_HDR.pack(1, 1, 0) + OVS_HDR.pack(7) + fam.encode_attrs(fam.FLOW_ATTRS, values)
    cut = data.draw(st.integers(0, len(body)))
    with contextlib.suppress(WireError):
        m.decode_flow(body[:cut])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 0xFFFF))
def test_parse_error_never_crashes(payload: bytes, flags: int) -> None:
    from dpif.netlink.wire import Message

    with contextlib.suppress(WireError):
        parse_error(Message(2, flags, 1, 0, memoryview(payload)))
