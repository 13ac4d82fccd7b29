"""Probes against a real ovs-vswitchd on the userspace datapath: a clean path, a known outage, duplicates."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jsonschema
import pytest
import trio

from dpfreeze.lab.sandbox import NsPort, Sandbox
from dpfreeze.lab.topology import tx_checksum_off
from dpfreeze.probe import Endpoint, ProbeSpec, Timeline, run_probes, sleep_disruption
from dpfreeze.probe.agent import ReceiverConfig
from dpfreeze.probe.report import load_schema
from dpfreeze.probe.run import _Agent

pytestmark = pytest.mark.netdev

DROP_MS = 300


def spec(a: NsPort, b: NsPort, **kw: object) -> ProbeSpec:
    return ProbeSpec(src=Endpoint(a.ifname, a.netns), dst=Endpoint(b.ifname, b.netns), **kw)  # type: ignore[arg-type]


# Below the 1000 pps default: a starved userspace datapath (this 2-core host is shared) drops a few hundred
# ms of traffic at 1000 pps once its socket buffers overflow, which would blur what these tests measure.
RATE = 400


def only_established(a: NsPort, b: NsPort) -> ProbeSpec:
    return spec(a, b, rate=RATE, newflow_ms=0, tcp_port=0, arp_ms=0, nd_ms=0)


async def test_clean_path_carries_every_class(ovs: Sandbox) -> None:
    """Every class flows and nothing is duplicated.  Not "nothing lost": on this shared 2-core host the
    userspace datapath itself drops a few packets when starved (the receiver's own drops are 0)."""
    a, b = ovs.ports
    for p in (a, b):
        await tx_checksum_off(p.netns, p.ifname)  # or TCP never gets through the userspace datapath
    await ovs.ping(a, b, count=1)
    rep = await run_probes(spec(a, b, rate=RATE, newflow_ip_base="10.0.0.100"), sleep_disruption(1.5))
    print(rep.params, [(c.name, c.lost, c.loss_intervals[:3]) for c in rep.classes])
    jsonschema.validate(json.loads(rep.to_json()), load_schema())
    assert [c.name for c in rep.classes] == ["established", "newflow", "tcp", "arp", "nd"]
    assert rep.params["receiver_drops"] == 0 and rep.params["send_errors"] == 0
    for c in rep.classes:
        assert c.sent > 0 and c.received >= 0.8 * c.sent and c.duplicated == 0, c
        assert c.received + c.lost == c.sent
    est = rep.cls("established")
    assert est.lost <= 0.02 * est.sent
    assert est.sent >= RATE * (1.5 + 0.5 + 0.5) * 0.9  # the schedule was kept (loose: counts, not timing)
    tcp = rep.cls("tcp").tcp
    assert tcp is not None and tcp.survived


@pytest.mark.ovs_ports(3)
async def test_known_drop_is_measured_exactly(ovs: Sandbox, tmp_path: Path) -> None:
    """A flow steals the stream for DROP_MS (to a third namespace instead of its destination, so that
    the stolen packets can be counted exactly): the report's lost count is exactly what was stolen, and
    its gap is the flow's lifetime."""
    a, b, sink = ovs.ports
    br = a.bridge
    match = f"priority=1000,udp,dl_src={a.mac},tp_dst=47000"
    await ovs.ping(a, b, count=1)

    async def outage(tl: Timeline) -> None:
        tl.mark("drop-add")
        await ovs.run("ovs-ofctl", "add-flow", br, f"{match},actions=output:{sink.ofport}")
        tl.mark("drop-added")
        await trio.sleep(DROP_MS / 1000)
        tl.mark("drop-del")
        await ovs.run("ovs-ofctl", "del-flows", "--strict", br, match)
        tl.mark("drop-deleted")

    async with trio.open_nursery() as nursery:
        cfg = ReceiverConfig(iface=sink.ifname, out=str(tmp_path / "sink.json"))
        thief = await _Agent.start(nursery, "sink", sink.netns, cfg, ready_timeout=60.0)
        rep = await run_probes(only_established(a, b), outage)
        await trio.sleep(0.2)
        stolen = stolen_send_times(await thief.stop(timeout=10.0))
    est = rep.cls("established")
    ev = {e.name: e.t_ms for e in rep.events}
    print(f"stolen={len(stolen)} lost={est.lost} gap={est.largest_gap_ms} ms {est.loss_intervals} {ev}")
    assert stolen
    assert est.lost == len(stolen)
    assert len(est.loss_intervals) == 1
    # Ground truth for the outage: the send times of the first and last stolen packet.
    first, last = ((t - rep.t0_unix_ns) / 1e6 for t in (stolen[0], stolen[-1]))
    r = est.loss_intervals[0]
    assert abs(r.start_ms - first) < 0.01 and abs(r.end_ms - (last + est.interval_ms)) < 0.01
    assert abs(est.largest_gap_ms - (last - first + est.interval_ms)) < 0.01
    # And against the orchestrator's clock: each flow change takes effect while its command runs, or at
    # most one revalidation of the cached megaflows later.
    slack = 30.0
    assert ev["drop-add"] <= r.start_ms <= ev["drop-added"] + slack
    assert ev["drop-del"] <= r.end_ms <= ev["drop-deleted"] + slack
    lifetime = (ev["drop-del"] - ev["drop-added"], ev["drop-deleted"] - ev["drop-add"] + slack)
    assert lifetime[0] <= est.largest_gap_ms <= lifetime[1]


def stolen_send_times(log: dict[str, list[int]]) -> list[int]:
    p = log["probes"]
    return sorted({p[i + 3] for i in range(0, len(p), 5) if p[i] == 1})


async def test_duplicated_packets_are_reported(ovs: Sandbox) -> None:
    """OpenFlow outputs each established packet twice for a while: every copy is counted, nothing lost."""
    a, b = ovs.ports
    await ovs.ping(a, b, count=1)

    async def duplicate(tl: Timeline) -> None:
        await ovs.run("ovs-ofctl", "add-flow", a.bridge,
                      f"priority=1000,udp,dl_src={a.mac},tp_dst=47000,actions=output:{b.ofport},output:{b.ofport}")
        tl.mark("dup-on")
        start = time.monotonic()
        await trio.sleep(0.3)
        await ovs.run("ovs-ofctl", "del-flows", "--strict", a.bridge,
                      f"priority=1000,udp,dl_src={a.mac},tp_dst=47000")
        tl.mark("dup-off")
        assert time.monotonic() - start >= 0.3

    rep = await run_probes(only_established(a, b), duplicate)
    est = rep.cls("established")
    assert est.lost <= 0.02 * est.sent  # see test_clean_path_carries_every_class
    assert est.duplicated >= 0.2 * RATE  # 0.3 s of the stream, at least
    assert est.duplicated <= est.sent


async def test_tcp_survives_an_outage_with_retransmissions(ovs: Sandbox) -> None:
    """TCP dropped for 500 ms: the connection survives, nothing is lost, the stall and retransmits show."""
    a, b = ovs.ports
    for p in (a, b):
        await tx_checksum_off(p.netns, p.ifname)
    match = f"priority=1000,tcp,dl_src={a.mac}"
    await ovs.ping(a, b, count=1)

    async def outage(tl: Timeline) -> None:
        await ovs.run("ovs-ofctl", "add-flow", a.bridge, f"{match},actions=drop")
        tl.mark("tcp-drop")
        await trio.sleep(0.5)
        await ovs.run("ovs-ofctl", "del-flows", "--strict", a.bridge, match)
        tl.mark("tcp-restored")

    rep = await run_probes(spec(a, b, rate=0, newflow_ms=0, arp_ms=0, nd_ms=0, tail_s=1.5), outage)
    assert [c.name for c in rep.classes] == ["tcp"]
    tcp = rep.cls("tcp")
    print(tcp)
    assert tcp.tcp is not None and tcp.tcp.survived
    assert tcp.tcp.retransmissions is not None and tcp.tcp.retransmissions >= 1
    assert tcp.lost == 0 and tcp.sent > 100
    assert tcp.largest_gap_ms >= 400
    assert tcp.latency is not None and tcp.latency.max_ms >= 400
