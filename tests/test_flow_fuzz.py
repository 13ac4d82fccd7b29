"""Property tests: every key/action attribute kind round-trips; malformed input only raises WireError
(decode) or ParseError (text), and the OVS-style formatters never raise on any bytes."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Mapping

from hypothesis import given, settings
from hypothesis import strategies as st

from dpif.netlink import actions as act
from dpif.netlink import flowkey as fk
from dpif.netlink.flowkey import ParseError
from dpif.netlink.wire import WireError, attr

FIXED_KEYS = [s for s in fk.KEY_ATTRS.values() if s.length >= 0]
TEXT_SAFE = [fk.PRIORITY, fk.SKB_MARK, fk.DP_HASH, fk.IN_PORT, fk.ETHERNET, fk.ETHERTYPE, fk.TCP, fk.UDP,
             fk.SCTP, fk.ICMP, fk.ICMPV6, fk.ARP, fk.ND, fk.CT_ORIG_TUPLE_IPV4, fk.CT_LABELS, fk.CT_ZONE,
             fk.CT_MARK, fk.IPV6, fk.IPV4, fk.TCP_FLAGS, fk.CT_STATE, fk.VLAN, fk.MPLS]


def encode_fields(spec: fk.AttrSpec, values: Mapping[str, int | bytes]) -> bytes:
    """The inverse of fk.decode_fields (struct padding is zero), to build attributes from values."""
    if spec.scalar:
        return struct.pack(spec.scalar, values["value"])
    if spec.fields:
        buf = bytearray(spec.length)
        for f in spec.fields:
            v = values.get(f.name, 0)
            buf[f.offset : f.offset + f.size] = v if isinstance(v, bytes) else v.to_bytes(f.size, "big")
        return bytes(buf)
    raw = values.get("raw", b"")
    assert isinstance(raw, bytes)
    return raw


def field_values(spec: fk.AttrSpec) -> st.SearchStrategy[dict[str, int | bytes]]:
    if spec.scalar:
        bits = struct.calcsize(spec.scalar) * 8
        return st.fixed_dictionaries({"value": st.integers(0, (1 << bits) - 1)})
    if spec.fields:
        return st.fixed_dictionaries({
            f.name: (st.binary(min_size=f.size, max_size=f.size) if f.kind in ("eth", "in6")
                     else st.integers(0, (1 << (8 * f.size)) - 1))
            for f in spec.fields})
    return st.fixed_dictionaries({"raw": st.binary(min_size=spec.length, max_size=spec.length)})


@settings(deadline=None)  # the shared CI machine is slow and noisy
@given(st.data())
def test_every_key_attr_round_trips(data: st.DataObject) -> None:
    spec = data.draw(st.sampled_from(FIXED_KEYS))
    values = data.draw(field_values(spec))
    raw = encode_fields(spec, values)
    (decoded,) = fk.decode_key(attr(spec.num, raw))
    assert decoded.raw == raw
    assert decoded.values() == values
    assert fk.encode_key([decoded]) == attr(spec.num, raw)


def masked_attr(data: st.DataObject, t: int) -> tuple[bytes, bytes]:
    """A key/mask payload pair whose text form is unambiguous (what the kernel itself reports)."""
    spec = fk.KEY_ATTRS[t]
    n = spec.length if spec.length >= 0 else 4 * data.draw(st.integers(1, 3))
    key = bytearray(data.draw(st.binary(min_size=n, max_size=n)))
    mask = bytearray(data.draw(st.sampled_from([b"\xff" * n, None])) or data.draw(st.binary(min_size=n,
                                                                                            max_size=n)))
    for f in spec.fields:  # frag is an enum: exact or wildcard; padding stays zero
        if f.kind == "frag":
            key[f.offset] %= 3
            mask[f.offset] = 0xFF if mask[f.offset] else 0
        if f.kind == "label":  # 20 bits
            key[f.offset], mask[f.offset] = 0, 0
            key[f.offset + 1] &= 0x0F
            mask[f.offset + 1] &= 0x0F
    if spec.care is not None:
        key[spec.care :] = bytes(n - spec.care)
        mask[spec.care :] = bytes(n - spec.care)
    if t == fk.IPV6:
        key[36:40] = bytes([key[36], key[37], key[38], key[39] % 3])
    if t in (fk.TCP_FLAGS,):
        key[0] &= 0x0F
        mask[0] &= 0x0F
    if t == fk.CT_STATE:
        key[1:], mask[1:] = bytes(3), bytes(3)
        if not any(mask):
            mask[0] = 1
    if t == fk.VLAN:
        key[0] |= 0x10
        mask[0] |= 0x10
    if t in (fk.CT_MARK, fk.CT_ZONE, fk.CT_LABELS) and not any(mask):
        mask[0] = 1
    if t == fk.IN_PORT and bytes(mask) != b"\xff" * 4 and not any(mask):
        mask[0] = 1
    return bytes(key), bytes(mask)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_key_text_round_trips(data: st.DataObject) -> None:
    """format -> parse -> format is stable for every attribute kind the kernel reports."""
    t = data.draw(st.sampled_from(TEXT_SAFE))
    key, mask = masked_attr(data, t)
    text = fk.format_key(attr(t, key), attr(t, mask))
    k2, m2 = fk.parse_key(text)
    if not text:  # a lone, fully wildcarded attribute: OVS prints nothing, which reads back as no key
        assert (k2, m2) == (b"", b"")
        return
    assert fk.format_key(k2, m2) == text


ACTION_TEXT = st.sampled_from([
    "1", "trunc(9)", "recirc(0x7)", "pop_vlan", "ct_clear", "meter(3)", "pop_eth", "pop_nsh()",
    "push_vlan(vid=7,pcp=1)", "hash(l4(3))", "ct(commit,zone=2,nat(src=1.1.1.1:5-6))", "set(tcp(dst=9))",
    "userspace(pid=4,slow_path(bfd))", "set(eth(src=00:00:00:00:00:01))", "push_mpls(label=1,tc=0,ttl=2,"
    "bos=1,eth_type=0x8847)", "set(tunnel(tun_id=0x1,dst=1.1.1.1,ttl=1,flags(key)))",
])


def action_lists(depth: int = 2) -> st.SearchStrategy[str]:
    leaf = st.lists(ACTION_TEXT, min_size=1, max_size=4).map(",".join)
    if depth == 0:
        return leaf
    inner = action_lists(depth - 1)
    nested = st.one_of(
        inner.map(lambda s: f"clone({s})"),
        inner.map(lambda s: f"sample(sample=25.0%,actions({s}))"),
        st.tuples(inner, inner).map(lambda p: f"check_pkt_len(size=100,gt({p[0]}),le({p[1]}))"),
        inner.map(lambda s: f"dec_ttl(le_1({s}))"),
    )
    return st.lists(st.one_of(leaf, nested), min_size=1, max_size=3).map(",".join)


@settings(deadline=None)  # the shared CI machine is slow and noisy
@given(action_lists())
def test_action_lists_round_trip(text: str) -> None:
    raw = act.parse_actions(text)
    assert act.format_actions(raw) == text
    assert act.parse_actions(act.format_actions(raw)) == raw
    assert act.encode_actions(act.decode_actions(raw)) == raw


@settings(deadline=None)  # the shared CI machine is slow and noisy
@given(st.binary(max_size=200))
def test_random_bytes_never_crash(buf: bytes) -> None:
    assert isinstance(fk.format_key(buf, buf), str)
    assert isinstance(act.format_actions(buf), str)
    for decode in (fk.decode_key, act.decode_actions):
        with contextlib.suppress(WireError):
            decode(buf)


@settings(deadline=None)  # the shared CI machine is slow and noisy
@given(st.data())
def test_truncated_attrs_raise_wire_error(data: st.DataObject) -> None:
    spec = data.draw(st.sampled_from([s for s in FIXED_KEYS if s.length > 0]))
    payload = encode_fields(spec, data.draw(field_values(spec)))
    raw = attr(spec.num, payload)
    cut = data.draw(st.integers(1, 4 + len(payload) - 1))  # into the header or the payload, not the padding
    try:
        fk.decode_key(raw[:cut])
    except WireError:
        return
    raise AssertionError("a truncated attribute decoded")


@settings(deadline=None)  # the shared CI machine is slow and noisy
@given(st.text(alphabet="()=,/:.-+0123456789abcdefxipvtcudsnmlr_ ", max_size=60))
def test_random_text_raises_parse_error_only(text: str) -> None:
    for parse in (fk.parse_key, act.parse_actions):
        with contextlib.suppress(ParseError):
            parse(text)
