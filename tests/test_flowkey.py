"""Flow key/mask codec: OVS text quirks, typed decode, parse <-> format."""

from __future__ import annotations

import struct

import pytest

from dpif.netlink import flowkey as fk
from dpif.netlink.flowkey import ParseError, decode_key, encode_key, format_key, parse_key
from dpif.netlink.wire import WireError, attr


def a(t: int, payload: bytes) -> bytes:
    return attr(t, payload)


def test_c_hex_quirks() -> None:
    """C's %#x prints 0 as "0": skb_priority(0), recirc_id(0) - never "0x0"."""
    assert fk.hx(0) == "0"
    assert fk.hx(255) == "0xff"
    key = a(fk.RECIRC_ID, struct.pack("=I", 0)) + a(fk.PRIORITY, struct.pack("=I", 7))
    assert format_key(key) == "recirc_id(0),skb_priority(0x7)"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("::", "::"),
        ("::1", "::1"),
        ("2001:db8::1", "2001:db8::1"),
        ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),  # first of two equal zero runs
        ("::ffff:1.2.3.4", "::ffff:1.2.3.4"),  # glibc keeps the mapped IPv4 form
        ("::1.2.3.4", "::1.2.3.4"),
        ("1:0:2:0:3:0:4:0", "1:0:2:0:3:0:4:0"),  # single zero words are never compressed
        ("fe80::", "fe80::"),
    ],
)
def test_ip6_like_glibc(text: str, expected: str) -> None:
    b = fk.pton6(text)
    assert b is not None
    assert fk.ip6(b) == expected


@pytest.mark.parametrize("bad", ["1::2::3", "12345::", ":", "1:2:3:4:5:6:7", "::g", "1.2.3.4"])
def test_pton6_rejects(bad: str) -> None:
    assert fk.pton6(bad) is None


def test_wildcarded_fields_are_omitted_but_eth_stays() -> None:
    """With a mask, all-zero fields disappear, a wildcarded eth prints as eth() (kernel packet type)."""
    key, mask = parse_key("in_port(3),eth(src=00:00:00:00:00:01/00:00:00:00:00:00),eth_type(0x0800),"
                          "ipv4(src=10.0.0.1/255.255.255.0,proto=17,frag=no),udp(src=53/0)")
    assert format_key(key, mask) == ("in_port(3),eth(),eth_type(0x0800),ipv4(src=10.0.0.1/255.255.255.0,"
                                     "proto=17,frag=no)")
    verbose = format_key(key, mask, verbose=True)
    assert "eth(src=00:00:00:00:00:01/00:00:00:00:00:00,dst=00:00:00:00:00:00/00:00:00:00:00:00)" in verbose
    assert "udp(src=53/0,dst=0/0)" in verbose


def test_missing_ethertype_key_prints_mask() -> None:
    """A mask with eth_type but no key eth_type: OVS appends eth_type(0/0xMASK)."""
    key = a(fk.IN_PORT, struct.pack("=I", 1))
    mask = a(fk.IN_PORT, b"\xff" * 4) + a(fk.ETHERTYPE, b"\xff\xff")
    assert format_key(key, mask) == "in_port(1),eth_type(0/0xffff)"


def test_leftover_and_bad_lengths() -> None:
    good = a(fk.IN_PORT, struct.pack("=I", 1))
    assert format_key(good + b"\x01\x02") == "in_port(1),***2 leftover bytes*** (0102)"
    assert format_key(b"\x01\x02\x03") == "<empty>,***3 leftover bytes*** (010203)"
    assert format_key(b"") == "<empty>"
    assert format_key(a(fk.IN_PORT, b"\x01\x00")) == "(bad key length 2, expected 4)(01 00)"


def test_unknown_key_attr_is_generic_hex() -> None:
    """Types above OVS 3.1's max (e.g. the kernel's IPV6_EXTHDRS = 32) print as keyN(hex[/mask])."""
    key = a(32, b"\x00\x01")
    assert format_key(key) == "key32(00 01)"
    assert format_key(key, a(32, b"\xff\xff")) == "key32(00 01/ff ff)"


def test_ct_fields() -> None:
    key, mask = parse_key("ct_state(+trk-new),ct_zone(5),ct_mark(0x1/0xf),ct_label(0x1/0xff),"
                          "ct_tuple4(src=1.1.1.1,dst=2.2.2.2,proto=6,tp_src=1,tp_dst=2)")
    assert format_key(key, mask) == ("ct_state(-new+trk),ct_zone(0x5),ct_mark(0x1/0xf),ct_label(0x1/0xff),"
                                     "ct_tuple4(src=1.1.1.1,dst=2.2.2.2,proto=6,tp_src=1,tp_dst=2)")
    # ct_label is a host-order u128: 0x1 is the first byte on the wire (little-endian hosts)
    labels = dict(fk.iter_nla(key))[fk.CT_LABELS]
    assert bytes(labels) == b"\x01" + bytes(15)
    # plain flags give an all-ones mask; ct_mark/ct_zone print nothing without a mask (OVS quirk)
    key, _ = parse_key("ct_state(trk|est)")
    assert format_key(key) == "ct_state(est|trk)"
    assert format_key(a(fk.CT_MARK, struct.pack("=I", 5))) == "ct_mark()"


def test_ct_tuple6_reads_both_port_spellings() -> None:
    """OVS prints ct_tuple6 ports as src_port/dst_port but parses only tp_src/tp_dst: we read both."""
    key, mask = parse_key("ct_tuple6(src=2001:db8::1,dst=2001:db8::2,proto=17,tp_src=53,tp_dst=54)")
    printed = "ct_tuple6(src=2001:db8::1,dst=2001:db8::2,proto=17,src_port=53,dst_port=54)"
    assert format_key(key, mask) == printed
    assert parse_key(printed) == (key, mask)


def test_tunnel_and_options() -> None:
    text = ("tunnel(tun_id=0x5,src=1.1.1.1,dst=2.2.2.2,ttl=64,tp_dst=6081,"
            "geneve({class=0x102,type=0x80,len=4,0xa}{class=0xffff,type=0x1,len=0}),flags(+df+key))")
    key, mask = parse_key(text)
    assert format_key(key, mask) == text
    key, mask = parse_key("tunnel(dst=2.2.2.2,ttl=64,vxlan(gbp(id=10,flags=0x1)),flags(-df))")
    assert format_key(key, mask) == "tunnel(dst=2.2.2.2,ttl=64,vxlan(gbp(id=10,flags=0x1)),flags(-df))"
    # ERSPAN v2 dir/hwid are C bitfields: an exact mask is 0x1/0xf, and OVS prints it (seen on 6.1)
    key, mask = parse_key("tunnel(dst=2.2.2.2,ttl=64,erspan(ver=2,dir=1,hwid=0x3))")
    assert format_key(key, mask) == "tunnel(dst=2.2.2.2,ttl=64,erspan(ver=2,dir=1/0x1,hwid=0x3/0xf))"
    # without a mask (set actions) the flags always print
    assert format_key(key) == "tunnel(dst=2.2.2.2,ttl=64,erspan(ver=2,dir=1,hwid=0x3),flags(0))"


def test_vlan_mpls_encap_nsh() -> None:
    text = ("eth_type(0x88a8),vlan(vid=300,pcp=0),encap(eth_type(0x8100),vlan(vid=10,pcp=1),"
            "encap(eth_type(0x8847),mpls(label=100,tc=1,ttl=64,bos=0,label=200,tc=0,ttl=63,bos=1)))")
    key, mask = parse_key(text)
    assert format_key(key, mask) == text
    key, mask = parse_key("nsh(flags=0,mdtype=1,np=3,spi=0x100,si=255,c1=0x1)")
    assert format_key(key, mask) == "nsh(flags=0,mdtype=1,np=3,spi=0x100,si=255,c1=0x1)"


def test_decode_encode_keeps_raw_bytes() -> None:
    key, mask = parse_key("in_port(1),eth_type(0x8100),vlan(vid=5,pcp=0),encap(eth_type(0x0800),"
                          "ipv4(src=1.2.3.4,frag=no)),tunnel(tun_id=0x1,dst=1.1.1.1,ttl=1,flags(key))")
    attrs = decode_key(key)
    assert [x.name for x in attrs] == ["in_port", "eth_type", "vlan", "encap", "tunnel"]
    assert encode_key(attrs) == key
    assert attrs[0].values() == {"value": 1}
    encap = attrs[3].children
    assert encap is not None and encap[1].values()["src"] == 0x01020304
    assert mask is not None and decode_key(mask)[4].children is not None


@pytest.mark.parametrize(
    "bad",
    [b"\x05\x00", a(fk.IN_PORT, b"\x01"), a(fk.IPV4, bytes(11)), a(fk.MPLS, bytes(6)),
     attr(fk.ENCAP, a(fk.IN_PORT, b"\x01"))],
)
def test_decode_rejects_malformed(bad: bytes) -> None:
    with pytest.raises(WireError):
        decode_key(bad)


@pytest.mark.parametrize(
    "bad",
    ["in_port(", "ipv4(src=1.2.3.400)", "eth(src=zz)", "vlan(vid=5000)", "bogus(1)", "encap(in_port(1)",
     "ct_state(+bogus)", "mpls(label=1,label=2,label=3,label=4)", "tunnel(geneve({len=3}))"],
)
def test_parse_errors(bad: str) -> None:
    with pytest.raises(ParseError):
        parse_key(bad)


def test_ufid_text_round_trip() -> None:
    ufid = fk.ufid_from_text("0000002a-0000-0000-0000-00000000002a")
    assert fk.ufid_text(ufid) == "ufid:0000002a-0000-0000-0000-00000000002a"
    assert struct.unpack("=4I", ufid) == (0x2A, 0, 0, 0x2A)
