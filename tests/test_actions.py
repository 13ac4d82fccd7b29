"""Datapath actions: OVS text for every kind, parse <-> format, typed decode."""

from __future__ import annotations

import struct

import pytest

from dpif.netlink import actions as act
from dpif.netlink.actions import decode_actions, encode_actions, format_actions, parse_actions
from dpif.netlink.flowkey import ParseError
from dpif.netlink.wire import WireError, attr

# Each of these prints back exactly as written (the canonical OVS text).
CANONICAL = [
    "1,2,3",
    "trunc(100),1",
    "push_vlan(vid=10,pcp=0),1",
    "push_vlan(tpid=0x88a8,vid=100,pcp=3),pop_vlan",
    "set(eth(src=00:00:00:00:00:aa,dst=00:00:00:00:00:bb))",
    "set(ipv4(src=1.1.1.1))",
    "set(ipv4(src=1.1.1.1,dst=2.2.2.2,ttl=63))",
    "set(ipv4(tos=0x10/0xfc))",
    "set(ipv6(src=2001:db8::99))",
    "set(tcp(src=8080))",
    "set(udp(src=1,dst=2))",
    "set(skb_mark(0x5))",
    "set(skb_mark(0x5/0xf))",
    "set(tunnel(tun_id=0x5,dst=192.0.2.1,ttl=64,tp_dst=4789,flags(df|key)))",
    "set(tunnel(dst=192.0.2.3,ttl=64,flags(0)))",
    "sample(sample=50.0%,actions(1))",
    "sample(sample=0.0%,actions(drop))",
    "recirc(0x5)",
    "hash(l4(0))",
    "hash(sym_l4(7))",
    "push_mpls(label=100,tc=0,ttl=64,bos=1,eth_type=0x8847)",
    "pop_mpls(eth_type=0x800)",
    "add_mpls(label=1048575,tc=7,ttl=255,bos=0,eth_type=0x8848)",
    "ct",
    "ct(commit)",
    "ct(commit,zone=1,mark=0x1/0xff)",
    "ct(commit,label=0x1/0xff)",
    "ct(commit,zone=7,label=0xffff0000000000000000000000000001)",
    "ct(force_commit,zone=3,helper=ftp,timeout=t1)",
    "ct(nat)",
    "ct(commit,nat(src=10.0.0.1-10.0.0.9:1000-2000,random))",
    "ct(commit,nat(dst=[2001:db8::1]:53))",
    "ct(commit,nat(dst=2001:db8::1-2001:db8::5))",
    "ct(commit,nat(src=10.0.0.1-10.0.0.3,persistent,hash))",
    "ct_clear",
    "push_eth(src=00:00:00:00:00:01,dst=00:00:00:00:00:02)",
    "pop_eth",
    "meter(7)",
    "clone(push_vlan(vid=3,pcp=0),clone(3)),1",
    "check_pkt_len(size=200,gt(1),le(drop))",
    "userspace(pid=2,userdata(0011223300000000))",
    "userspace(pid=3,slow_path(cfm))",
    "userspace(pid=5,sFlow(vid=10,pcp=2,output=7))",
    "userspace(pid=5,ipfix(output_port=2))",
    "userspace(pid=5,flow_sample(probability=100,collector_set_id=1,obs_domain_id=2,obs_point_id=3,"
    "output_port=4,egress))",
    "userspace(pid=5,controller(reason=1,dont_send=1,continuation=0,recirc_id=1,rule_cookie=0x10,"
    "controller_id=0,max_len=65535))",
    "userspace(pid=6,userdata(aabbccdd00000000),actions,tunnel_out_port=10)",
    "push_nsh(flags=0,ttl=63,mdtype=1,np=3,spi=0x100,si=255,c1=0x1,c2=0x2,c3=0x3,c4=0x4)",
    "push_nsh(flags=0,ttl=63,mdtype=2,np=3,spi=0x101,si=254,md2=0x1234567812345678)",
    "pop_nsh()",
    "dec_ttl(le_1(userspace(pid=1,userdata(0102030405060708))))",
    "psample(group=3,cookie=0x1234)",
    "lb_output(1)",
    "tnl_pop(4)",
]


@pytest.mark.parametrize("text", CANONICAL)
def test_canonical_round_trip(text: str) -> None:
    raw = parse_actions(text)
    assert format_actions(raw) == text
    decoded = decode_actions(raw)
    assert encode_actions(decoded) == raw


@pytest.mark.parametrize(
    ("text", "printed"),
    [
        ("drop", "drop"),  # empty action list: the portable drop
        ("recirc(5)", "recirc(0x5)"),
        ("userspace(pid=1)", "userspace(pid=1,userdata(" + "00" * 48 + "))"),  # OVS sends a zero cookie
        ("userspace(pid=3,slow_path(lacp|stp))", "userspace(pid=3,slow_path(lacp,stp))"),
        ("userspace(pid=3,slow_path(lacp,stp))", "userspace(pid=3,slow_path(lacp,stp))"),
        ("set(eth(dst=00:00:00:00:00:bb))", "set(eth(dst=00:00:00:00:00:bb))"),
        ("push_vlan(vid=1,pcp=0,cfi=0)", "push_vlan(vid=1,pcp=0,cfi=0)"),
        ("sample(sample=33.33%,actions(1))", "sample(sample=33.3%,actions(1))"),
    ],
)
def test_normalised_forms(text: str, printed: str) -> None:
    assert format_actions(parse_actions(text)) == printed


def test_drop_and_masked_set_bytes() -> None:
    assert parse_actions("drop") == b""
    assert format_actions(b"") == "drop"
    assert format_actions(attr(act.DROP, struct.pack("=I", 0))) == "drop"
    raw = parse_actions("set(ipv4(src=1.1.1.1))")
    assert decode_actions(raw)[0].type == act.SET_MASKED  # partial fields become a masked set
    raw = parse_actions("set(skb_mark(0x5))")
    assert decode_actions(raw)[0].type == act.SET


def test_port_names() -> None:
    raw = parse_actions("br0,2", port_names={"br0": 0})
    assert format_actions(raw) == "0,2"
    assert format_actions(raw, {0: "br0"}) == "br0,2"


def test_generic_and_bad_lengths() -> None:
    assert format_actions(attr(99, b"\x01\x02")) == "bad length 2, expected -1 for: action99(01 02)"
    assert format_actions(attr(act.OUTPUT, b"\x01")) == "bad length 1, expected 4 for: action1(01)"
    assert format_actions(attr(act.OUTPUT, struct.pack("=I", 3)) + b"\x00\x01") == (
        "3,***2 leftover bytes*** (0001)")
    assert format_actions(attr(act.USERSPACE, b"")) == "userspace(error)"


def test_nested_children_decoded() -> None:
    raw = parse_actions("clone(1,sample(sample=10.0%,actions(2))),check_pkt_len(size=9,gt(3),le(4))")
    clone, cpl = decode_actions(raw)
    assert clone.children is not None and [c.name for c in clone.children] == ["output", "sample"]
    assert cpl.children is not None and [c.raw for c in cpl.children] == [
        struct.pack("=I", 3), struct.pack("=I", 4)]


@pytest.mark.parametrize(
    "bad",
    ["push_vlan(vid=5000,pcp=0)", "bogus", "ct(commit,force_commit)", "ct(nat(src=1.1.1.1,dst=2.2.2.2))",
     "clone(1", "sample(sample=101%,actions(1))", "userspace(pid=1,userdata(abc))", "1 2x", "ct_foo"],
)
def test_parse_errors(bad: str) -> None:
    with pytest.raises(ParseError):
        parse_actions(bad)


@pytest.mark.parametrize("bad", [b"\x08\x00\x01", attr(act.OUTPUT, b"\x01\x02"), attr(act.SET, b""),
                                 attr(act.CLONE, b"\x05\x00\x01\x00")])
def test_decode_rejects_malformed(bad: bytes) -> None:
    with pytest.raises(WireError):
        decode_actions(bad)
