"""OpenFlow state save/restore: ovs-ofctl output parsing (pure) and a round trip on a real bridge (netdev)."""

from __future__ import annotations

import pytest

from dpfreeze.lab.sandbox import Sandbox
from dpfreeze.ovs import openflow

METERS = """OFPST_METER_CONFIG reply (OF1.5) (xid=0x2):
meter=1 kbps burst bands=
type=drop rate=1000 burst_size=100

meter=2 pktps bands=
type=drop rate=10
type=dscp_remark rate=20 prec_level=1
"""
TLV = """NXT_TLV_TABLE_REPLY (OF1.5) (xid=0x2):
 max option space=256 max fields=64
 allocated option space=8

 mapping table:
  class  type  length  match field
 ------  ----  ------  --------------
 0xffff     0       4  tun_metadata0
 0x0102     3       4  tun_metadata1
"""
PORTS = """OFPST_PORT_DESC reply (xid=0x2):
 5(p(1)): addr:9a:06:d8:ce:eb:d4
     config:     PORT_DOWN NO_FLOOD NO_PACKET_IN
     state:      LINK_DOWN
 LOCAL(br0): addr:12:58:8b:dd:69:44
     config:     0
"""


def test_parsers() -> None:
    assert openflow.parse_meters(METERS) == [
        "meter=1 kbps burst bands=type=drop rate=1000 burst_size=100",
        "meter=2 pktps bands=type=drop rate=10 type=dscp_remark rate=20 prec_level=1",
    ]
    assert openflow.parse_tlv_map(TLV) == ["{class=0xffff,type=0,len=4}->tun_metadata0",
                                           "{class=0x0102,type=3,len=4}->tun_metadata1"]
    assert openflow.parse_port_flags(PORTS) == {"p(1)": ("NO_FLOOD", "NO_PACKET_IN"), "br0": ()}
    assert openflow.parse_flows("OFPST_FLOW reply (OF1.5):\n priority=0 actions=NORMAL\n") == [
        "priority=0 actions=NORMAL"]
    assert openflow.parse_groups("OFPST_GROUP_DESC reply:\n group_id=1,type=all,bucket=actions=drop\n") == [
        "group_id=1,type=all,bucket=actions=drop"]


def test_json_round_trip() -> None:
    s = openflow.BridgeOpenFlow("br0", "OpenFlow13", ("a",), ("group_id=1",), ("meter=1",), ("m",),
                                {"p": ("NO_FLOOD",)})
    assert openflow.BridgeOpenFlow.from_json(s.to_json()) == s


@pytest.mark.netdev
@pytest.mark.ovs_ports(2)
async def test_save_wipe_restore_round_trip(ovs: Sandbox) -> None:
    br, env = ovs.bridges[0], ovs.env
    p1, p2 = ovs.ports
    of15 = ("ovs-ofctl", "-O", "OpenFlow15")
    await ovs.run(*of15, "add-meter", br, "meter=1 kbps burst bands=type=drop rate=1000 burst_size=100")
    await ovs.run(*of15, "add-meter", br, "meter=7 pktps bands=type=drop rate=10")
    await ovs.run(*of15, "add-group", br, f"group_id=3,type=all,bucket=output:{p2.ofport}")
    await ovs.run("ovs-ofctl", "add-tlv-map", br, "{class=0xffff,type=0,len=4}->tun_metadata0")
    await ovs.run(*of15, "add-flow", br, f"priority=10,ip,in_port={p1.ofport},actions=meter:1,group:3")
    await ovs.run(*of15, "add-flow", br, "table=1,cookie=0x42,priority=5,tun_metadata0=0x5,actions=drop")
    await ovs.run(*of15, "add-flow", br, "idle_timeout=300,priority=7,arp,actions=NORMAL")
    await ovs.run("ovs-ofctl", "mod-port", br, p1.port, "no-flood")

    saved = await openflow.save_bridge(br, env)
    assert len(saved.flows) == 4 and len(saved.meters) == 2 and len(saved.groups) == 1
    assert saved.tlv_map == ("{class=0xffff,type=0,len=4}->tun_metadata0",)
    assert saved.port_flags[p1.port] == ("NO_FLOOD",) and saved.port_flags[p2.port] == ()
    assert [s.bridge for s in await openflow.save_all(env)] == [br]

    # What a vswitchd restart loses: all of it.
    await ovs.run("ovs-ofctl", "del-flows", br)
    await ovs.run(*of15, "del-groups", br)
    await ovs.run(*of15, "del-meters", br)
    await ovs.run("ovs-ofctl", "del-tlv-map", br)
    await ovs.run("ovs-ofctl", "mod-port", br, p1.port, "flood")
    assert (await openflow.save_bridge(br, env)) != saved

    done = await openflow.restore_bridge(saved, env)
    assert any("replace-flows (4 flows, one bundle)" in d for d in done)
    assert any("no-flood" in d for d in done)
    assert await openflow.save_bridge(br, env) == saved
    # idempotent: replace-flows finds nothing to change (it is always run: the flows are not read first)
    assert await openflow.restore_bridge(saved, env) == [f"{br}: replace-flows (4 flows, one bundle)"]
    assert await openflow.save_bridge(br, env) == saved
    await ovs.ping(p1, p2)  # forwarding still goes through the restored tables


@pytest.mark.netdev
@pytest.mark.ovs_ports(0)
async def test_errors_are_one_line(ovs: Sandbox) -> None:
    with pytest.raises(openflow.OpenFlowError, match=r'^no bridge named nosuchbr$'):
        await openflow.save_bridge("nosuchbr", ovs.env)
    # the dumps run side by side, and all of them fail: still the error itself, not a nursery's group
    # (the crash guard's checkpoint died of one when a daemon was restarting, in the systemd guest)
    with pytest.raises(openflow.OpenFlowError, match=r"nosuchbr"):
        await openflow.save_bridge("nosuchbr", ovs.env, protos=["OpenFlow10", "OpenFlow15"])


@pytest.mark.netdev
@pytest.mark.ovs_ports(0)
@pytest.mark.parametrize(("protocols", "flags"), [("OpenFlow10", True), ("OpenFlow13", False),
                                                  ("OpenFlow10,OpenFlow14", True)])
async def test_bridge_with_restricted_protocols(ovs: Sandbox, protocols: str, flags: bool) -> None:
    br = ovs.bridges[0]
    await ovs.vsctl("set", "bridge", br, f"protocols={protocols}")
    await ovs.run("ovs-ofctl", "-O", protocols.split(",")[-1], "add-flow", br, "priority=3,arp,actions=drop")
    saved = await openflow.save_bridge(br, ovs.env)
    assert saved.version == protocols.split(",")[-1]
    assert "priority=3,arp actions=drop" in saved.flows
    assert (br in saved.port_flags) == flags
    await ovs.run("ovs-ofctl", "-O", saved.version, "del-flows", br)
    assert await openflow.restore_bridge(saved, ovs.env)
    assert await openflow.save_bridge(br, ovs.env) == saved
