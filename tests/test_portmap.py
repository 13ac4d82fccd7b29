"""Carrying flows onto a datapath that numbered its ports differently."""

from __future__ import annotations

import pytest

from dpfreeze.snapshot.portmap import PortMap, UnmappedPort
from dpif.model import Flow, Vport, VportType
from dpif.netlink import actions as act
from dpif.netlink import flowtext


def ports(**numbers: int) -> list[Vport]:
    return [Vport(no, VportType.NETDEV, name) for name, no in numbers.items()]


def flow(text: str) -> Flow:
    p = flowtext.parse_flow(text)
    return Flow(p.key, p.mask, p.actions, p.ufid)


def text(f: Flow, names: dict[int, str] | None = None) -> str:
    return flowtext.strip_stats(flowtext.format_flow(f.key, f.mask, f.actions, port_names=names))


OLD = ports(br0=1, p1=2, p2=3)
NEW = ports(p2=1, br0=2, p1=3)


def test_ports_are_carried_by_name_into_key_and_nested_actions() -> None:
    f = flow("in_port(2),eth(),eth_type(0x0800),ipv4(frag=no) 3,clone(1,push_vlan(vid=5,pcp=0),2)")
    pm = PortMap.between(OLD, NEW)
    assert not pm.identity
    assert pm.renamed() == ["br0: 1 -> 2", "p1: 2 -> 3", "p2: 3 -> 1"]
    got = pm.carry(f)
    assert text(got) == ("in_port(3),eth(),eth_type(0x0800),ipv4(frag=no), "
                         "actions:1,clone(2,push_vlan(vid=5,pcp=0),3)")
    assert text(got, {1: "p2", 2: "br0", 3: "p1"}) == text(f, {1: "br0", 2: "p1", 3: "p2"})


def test_same_numbers_leave_the_flow_untouched() -> None:
    f = flow("in_port(2),eth(),eth_type(0x0806) 3")
    assert PortMap.between(OLD, OLD).carry(f) is f


def test_a_flow_on_a_port_that_is_gone_is_refused() -> None:
    pm = PortMap.between(OLD, ports(br0=1, p2=3, p3=2))
    assert pm.missing() == ["p1"]
    with pytest.raises(UnmappedPort):
        pm.carry(flow("in_port(2),eth(),eth_type(0x0800) 3"))
    with pytest.raises(UnmappedPort):
        pm.carry(flow("in_port(3),eth(),eth_type(0x0800) 2"))


def test_a_number_the_old_datapath_never_had_is_not_carried() -> None:
    """Output to port 4 went nowhere before; here 4 is p1: carrying it blindly would leak traffic."""
    pm = PortMap.between(OLD, ports(br0=1, p2=3, p1=4))
    with pytest.raises(UnmappedPort, match="had no port by that number"):
        pm.carry(flow("in_port(1),eth(),eth_type(0x0800) 4"))


def test_every_place_a_port_number_sits_is_rewritten() -> None:
    """Key in_port; output in sample, check_pkt_len's both branches, dec_ttl and userspace's actions;
    userspace's tunnel_out_port; tnl_pop.  (The table in portmap is what knows these places.)"""
    pm = PortMap.between(ports(a=1, b=2, c=3), ports(a=11, b=12, c=13))
    f = flow("in_port(1),eth(),eth_type(0x0800) sample(sample=50.0%,actions(2)),"
             "check_pkt_len(size=200,gt(3),le(1)),dec_ttl(le_1(2)),"
             "userspace(pid=7,tunnel_out_port=3),tnl_pop(2)")
    got = text(pm.carry(f))
    for part in ("in_port(11),", "actions:sample(sample=50.0%,actions(12)),", "gt(13),le(11)", "le_1(12)",
                 "tunnel_out_port=13)", "tnl_pop(12)"):
        assert part in got, got
    assert act.format_actions(pm.carry(f).actions, {11: "a", 12: "b", 13: "c"}) == act.format_actions(
        f.actions, {1: "a", 2: "b", 3: "c"})
