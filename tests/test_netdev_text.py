"""The userspace provider's readers of `ovs-appctl dpctl/*` text (samples from OVS 3.1's ovs-vswitchd)."""

from __future__ import annotations

from pathlib import Path

from dpif.model import FlowStats, VportType
from dpif.netdev_datapath import flow_args, parse_dump, parse_show
from dpif.netlink import flowtext

DATA = Path(__file__).parent / "data"

SHOW = """\
netdev@ovs-netdev:
  lookups: hit:11 missed:12 lost:1
  flows: 11
  port 0: ovs-netdev (tap)
  port 1: br0 (tap)
  port 2: p1
  port 3: vx0 (vxlan: packet_type=ptap, remote_ip=10.1.1.1)
  port 4: dpdk0 (dpdk: configured_rx_queues=1, mtu=1500)
"""


def test_show_gives_stats_and_ports_with_types() -> None:
    (shown,) = parse_show(SHOW).values()
    assert shown.info.name == "netdev@ovs-netdev"
    s = shown.info.stats
    assert (s.hit, s.missed, s.lost, s.flows) == (11, 12, 1, 11)
    assert [(p.port_no, p.name, p.type) for p in shown.ports] == [
        (0, "ovs-netdev", VportType.INTERNAL), (1, "br0", VportType.INTERNAL), (2, "p1", VportType.NETDEV),
        (3, "vx0", VportType.VXLAN), (4, "dpdk0", VportType.NETDEV)]


def test_stats_turn_the_age_back_into_a_used_time() -> None:
    assert flowtext.parse_stats("packets:0, bytes:0, used:never", 5000) == FlowStats()
    got = flowtext.parse_stats("packets:2, bytes:196, used:0.435s, flags:S.", 5000)
    assert got == FlowStats(2, 196, 4565, 0x12)


def test_dump_reads_every_flow_once_whatever_the_pmd_headers_and_extra_info() -> None:
    text = (DATA / "netdev-dump-m.txt").read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("ufid:")]
    doubled = text + "flow-dump from pmd on cpu core: 1\n" + "\n".join(lines) + "\n"  # a flow on two PMDs
    flows = parse_dump(doubled, now_ms=10_000)
    assert len(flows) == len(lines) >= 8
    # Printed back as ovs-appctl printed them, minus what only the daemon knows (dp-extra-info).
    for line, f in zip(lines, flows, strict=True):
        ours = flowtext.format_flow(f.key, f.mask, f.actions, f.ufid, f.stats, now_ms=10_000, verbose=True)
        assert ours == line.split(", dp-extra-info:")[0]


def test_a_flow_is_written_for_add_flow_with_its_wildcarded_attributes() -> None:
    """Without the all-wildcard arp(), dpif-netdev refuses an ARP flow (EINVAL): verbose key it is."""
    line = next(ln for ln in (DATA / "netdev-dump-m.txt").read_text().splitlines() if "arp(" in ln)
    (flow,) = parse_dump(line, now_ms=0)
    key, actions = flow_args(flow)
    assert key.startswith("ufid:") and ",arp(sip=" in key and "/0.0.0.0" in key
    parsed = flowtext.parse_flow(f"{key} {actions}")
    assert (parsed.key, parsed.mask, parsed.actions, parsed.ufid) == (flow.key, flow.mask, flow.actions,
                                                                       flow.ufid)
