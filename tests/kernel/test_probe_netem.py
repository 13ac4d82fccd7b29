"""Probes on the real kernel (test VM): netem duplicates and reordering are reported as such, nothing as
lost; and a tunnel lab on the kernel datapath carries every probe class.

Rates are low because Python runs 15-20x slower under qemu TCG."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from dpfreeze.lab.topology import lab_down, lab_up
from dpfreeze.probe import Endpoint, ProbeSpec, run_probes, sleep_disruption

pytestmark = pytest.mark.kernel

A, B = ("pzka", "pzkb")


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@pytest.fixture
def veth() -> Iterator[tuple[Endpoint, Endpoint]]:
    """Two namespaces joined by a bare veth pair (no switch): netem on the sender's side."""
    sh("modprobe", "sch_netem")
    for ns in (A, B):
        sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", "pzkva", "netns", A, "type", "veth", "peer", "name", "pzkvb", "netns", B)
        for ns, dev, ip in ((A, "pzkva", "10.9.0.1"), (B, "pzkvb", "10.9.0.2")):
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        yield Endpoint("pzkva", A), Endpoint("pzkvb", B)
    finally:
        for ns in (A, B):
            subprocess.run(["ip", "netns", "del", ns], check=False)


def established(src: Endpoint, dst: Endpoint) -> ProbeSpec:
    return ProbeSpec(src=src, dst=dst, rate=200, flows=2, newflow_ms=0, tcp_port=0, arp_ms=0, nd_ms=0)


def netem(*args: str) -> None:
    """For the whole window: adding or deleting the qdisc mid-stream would itself drop queued packets."""
    sh("ip", "netns", "exec", A, "tc", "qdisc", "add", "dev", "pzkva", "root", "netem", *args)


async def test_netem_duplicates_are_counted(veth: tuple[Endpoint, Endpoint]) -> None:
    netem("duplicate", "30%")
    rep = await run_probes(established(*veth), sleep_disruption(1.5))
    est = rep.cls("established")
    print(est)
    assert est.lost == 0 and est.reordered == 0
    assert 0.1 * est.sent <= est.duplicated <= 0.6 * est.sent


async def test_netem_reordering_is_counted(veth: tuple[Endpoint, Endpoint]) -> None:
    netem("delay", "30ms", "reorder", "50%")
    rep = await run_probes(established(*veth), sleep_disruption(1.5))
    est = rep.cls("established")
    print(est)
    assert est.lost == 0 and est.duplicated == 0
    assert est.reordered >= 0.05 * est.sent
    assert est.latency is not None and est.latency.max_ms >= 30


@pytest.fixture
async def tunnel_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                     request: pytest.FixtureRequest) -> AsyncIterator[list[Endpoint]]:
    monkeypatch.setenv("DPFREEZE_LAB_DIR", str(tmp_path))
    st = await lab_up("k", datapath="system", namespaces=2, tunnel=request.param)
    try:
        yield st.endpoints()
    finally:
        assert await lab_down("k") == []


@pytest.mark.parametrize("tunnel_lab", ["vxlan", "geneve"], indirect=True)
async def test_every_class_crosses_a_tunnel_lab(tunnel_lab: list[Endpoint]) -> None:
    a, b = tunnel_lab
    spec = ProbeSpec(src=a, dst=b, rate=100, flows=2, newflow_ms=100, tcp_ms=50, arp_ms=200, nd_ms=200,
                     lead_s=1.0)
    rep = await run_probes(spec, sleep_disruption(1.0))
    for c in rep.classes:
        print(c)
    assert [c.name for c in rep.classes] == ["established", "newflow", "tcp", "arp", "nd"]
    assert all(c.received > 0 for c in rep.classes)
    assert rep.cls("established").lost == 0
    tcp = rep.cls("tcp").tcp
    assert tcp is not None and tcp.survived
