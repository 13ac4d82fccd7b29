"""Pure tests of the probe frame codec and the report arithmetic (no sockets)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from dpfreeze.probe import frames
from dpfreeze.probe.render import compare_svg, svg, table, timeline, write
from dpfreeze.probe.report import (
    Bucket,
    Latency,
    Report,
    Window,
    build_report,
    datagram_class,
    latency,
    load_schema,
    loss_runs,
    report_from_json,
    resolution_class,
)

MS = 1_000_000


def test_frame_roundtrip_and_in_place_stamp() -> None:
    f = frames.build_udp_frame(src_mac="02:00:00:00:00:01", dst_mac="02:00:00:00:00:02", src_ip="10.1.0.1",
                               dst_ip="10.1.0.2", sport=40001, dport=47000, cls=frames.ProbeClass.ESTABLISHED,
                               flow=3)
    assert len(f) == frames.FRAME_LEN
    before = bytes(f)
    frames.stamp(f, 0x01020304, 1_700_000_000_123_456_789)
    assert frames.parse(bytes(f)) == frames.Probe(1, 3, 0x01020304, 1_700_000_000_123_456_789)
    # only the 12 bytes of seq and time change: headers (and so checksums) stay valid
    changed = [i for i, (a, b) in enumerate(zip(before, f, strict=True)) if a != b]
    assert changed and min(changed) >= frames.SEQ_OFFSET and max(changed) < frames.SEQ_OFFSET + 12


def test_variant_equals_a_frame_built_by_scapy() -> None:
    def build(src_mac: str, src_ip: str, sport: int, flow: int) -> bytearray:
        return frames.build_udp_frame(src_mac=src_mac, dst_mac="02:00:00:00:00:02", src_ip=src_ip,
                                      dst_ip="10.1.0.2", sport=sport, dport=47000, cls=2, flow=flow)

    template = build("02:00:00:00:00:01", "10.1.0.1", 0, 0)
    cases = (("02:d9:f2:00:01:ff", "10.9.255.254", 41234, 65535), ("02:00:00:00:00:01", "10.1.0.1", 1, 7),
             ("0a:bb:cc:dd:ee:ff", "1.2.3.4", 0, 0))
    for mac, ip, sport, flow in cases:
        got = frames.variant(template, src_mac=mac, src_ip=ip, sport=sport, flow=flow)
        assert got == build(mac, ip, sport, flow)


def test_parse_rejects_other_traffic() -> None:
    f = bytearray(frames.build_udp_frame(src_mac="02:00:00:00:00:01", dst_mac="02:00:00:00:00:02",
                                         src_ip="10.1.0.1", dst_ip="10.1.0.2", sport=1, dport=2, cls=2,
                                         flow=0))
    assert frames.parse(bytes(f)) is not None
    f[frames.ETH_IP_UDP] ^= 0xFF  # magic
    assert frames.parse(bytes(f)) is None
    assert frames.parse(b"\x00" * 10) is None
    arp = frames.build_arp_request(src_mac="02:00:00:00:00:01", src_ip="10.1.0.1", target_ip="10.1.0.2")
    assert frames.parse(arp) is None


def test_solicited_node_and_nd_frames() -> None:
    assert frames.solicited_node("fd00::1:2:abcd:ef12") == ("ff02::1:ffcd:ef12", "33:33:ff:cd:ef:12")
    ns = frames.build_neighbor_solicitation(src_mac="02:00:00:00:00:01", src_ip6="fd00::1",
                                            target_ip6="fd00::2")
    assert ns[:6] == bytes.fromhex("3333ff000002") and ns[54] == 135
    from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6
    from scapy.layers.l2 import Ether

    na = bytes(Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01") / IPv6(src="fd00::2", dst="fd00::1")
               / ICMPv6ND_NA(tgt="fd00::2") / ICMPv6NDOptDstLLAddr(lladdr="02:00:00:00:00:02"))
    assert frames.is_neighbor_advert(na, target_ip6="fd00::2")
    assert not frames.is_neighbor_advert(na, target_ip6="fd00::3")
    assert not frames.is_neighbor_advert(ns, target_ip6="fd00::2")


def test_arp_reply_recognised() -> None:
    from scapy.layers.l2 import ARP, Ether

    rep = bytes(Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")
                / ARP(op=2, hwsrc="02:00:00:00:00:02", psrc="10.1.0.2", hwdst="02:00:00:00:00:01",
                      pdst="10.1.0.1"))
    assert frames.is_arp_reply(rep, from_ip="10.1.0.2", to_mac="02:00:00:00:00:01")
    assert not frames.is_arp_reply(rep, from_ip="10.1.0.3", to_mac="02:00:00:00:00:01")
    req = frames.build_arp_request(src_mac="02:00:00:00:00:02", src_ip="10.1.0.2", target_ip="10.1.0.1")
    assert not frames.is_arp_reply(req, from_ip="10.1.0.2", to_mac="02:00:00:00:00:01")


def test_newflow_macs_are_unique_local_unicast() -> None:
    macs = {frames.newflow_mac(k) for k in range(5000)}
    assert len(macs) == 5000
    assert all(int(m[:2], 16) & 0x03 == 0x02 for m in macs)


def test_latency_nearest_rank() -> None:
    lat = latency([i * MS for i in range(1, 101)])
    assert lat is not None and (lat.p50_ms, lat.p99_ms, lat.max_ms) == (50.0, 99.0, 100.0)
    assert latency([]) is None


def test_loss_runs_span_the_lost_packets() -> None:
    sent = [1000 * MS + i * MS for i in range(10)]
    ok = [True, True, False, False, False, True, True, False, True, False]
    runs = loss_runs(sent, ok, 1.0, 1000 * MS)
    assert [(r.start_ms, r.end_ms, r.lost) for r in runs] == [(2.0, 5.0, 3), (7.0, 8.0, 1), (9.0, 10.0, 1)]


def _stream(n: int, flows: int, t0: int) -> list[tuple[int, int, int]]:
    return [(k % flows, k // flows, t0 + k * MS) for k in range(n)]


def test_datagram_class_counts_loss_duplicates_reordering() -> None:
    t0 = 5_000 * MS
    sent = _stream(100, 2, t0)
    lost = set(range(40, 60))  # 20 ms outage
    rx = [(f, q, s, s + 2 * MS) for k, (f, q, s) in enumerate(sent) if k not in lost]
    rx.append(rx[0])  # a duplicate
    rx[10], rx[12] = rx[12], rx[10]  # flow 0: seq 6 before seq 5
    rx.append((7, 7, t0, t0))  # not ours: ignored
    c = datagram_class("established", sent, rx, 1.0, t0)
    assert (c.sent, c.received, c.lost, c.duplicated, c.reordered) == (100, 80, 20, 1, 1)
    assert c.largest_gap_ms == 20.0
    assert c.loss_intervals[0].start_ms == 40.0 and c.loss_intervals[0].lost == 20
    assert c.latency is not None and c.latency.max_ms == 2.0
    assert c.buckets == [Bucket(0.0, 100, 20, 2.0)]


def test_buckets_show_delay_and_loss_over_time() -> None:
    """A new flow queued for 3 s (dpfreeze holding the misses) is late, not lost; a dropped one is lost."""
    t0 = 0
    sent = [(0, k, k * 250 * MS) for k in range(8)]  # two per 500 ms step
    rx = [(0, 0, 0, 1 * MS), (0, 1, 250 * MS, 251 * MS), (0, 2, 500 * MS, 3500 * MS),
          (0, 3, 750 * MS, 3500 * MS), (0, 6, 1500 * MS, 1502 * MS), (0, 7, 1750 * MS, 1750 * MS)]
    c = datagram_class("newflow", sent, rx, 250.0, t0)
    assert c.buckets == [Bucket(0.0, 2, 0, 1.0), Bucket(500.0, 2, 0, 3000.0), Bucket(1000.0, 2, 2, None),
                         Bucket(1500.0, 2, 0, 2.0)]


def test_window_is_the_delay_and_loss_of_what_was_sent_during_the_disruption() -> None:
    """The whole run's p99 drowns a 3 s hold in on-time packets; the window between the events does not."""
    sent = [(0, k, k * 250 * MS) for k in range(8)]
    rx = [(0, 0, 0, 1 * MS), (0, 1, 250 * MS, 251 * MS), (0, 2, 500 * MS, 3500 * MS),
          (0, 3, 750 * MS, 3500 * MS), (0, 6, 1500 * MS, 1502 * MS), (0, 7, 1750 * MS, 1750 * MS)]
    c = datagram_class("newflow", sent, rx, 250.0, 0, span_ns=(500 * MS, 1000 * MS))
    assert c.window == Window(500.0, 1000.0, 3, 1, Latency(2750.0, 3000.0, 3000.0))
    assert datagram_class("newflow", sent, rx, 250.0, 0).window is None  # no events, no window
    assert _sample_report().cls("newflow").window == Window(5.0, 40.0, 1, 1, None)


def test_resolution_class_matches_replies_to_requests() -> None:
    t0 = 0
    req = [i * 100 * MS for i in range(6)]
    rep = [req[0] + MS, req[1] + 3 * MS, req[1] + 4 * MS, req[4] + 2 * MS, req[5] + 1 * MS]
    c = resolution_class("arp", req, rep, 100.0, t0)
    assert (c.sent, c.received, c.lost, c.duplicated) == (6, 4, 2, 1)
    assert c.largest_gap_ms == 200.0
    assert c.latency is not None and c.latency.max_ms == 3.0


def test_resolution_replies_slower_than_the_interval_are_not_loss() -> None:
    req = [i * 100 * MS for i in range(6)]
    c = resolution_class("nd", req, [t + 150 * MS for t in req], 100.0, 0)
    assert (c.sent, c.received, c.lost, c.duplicated) == (6, 6, 0, 0)
    late = resolution_class("nd", [0], [1500 * MS], 100.0, 0)  # beyond the timeout: not an answer
    assert (late.received, late.duplicated) == (0, 1)


def _sample_report() -> Report:
    t0 = 10_000 * MS
    est = _stream(50, 2, t0)
    sender = {"rate": 1000.0, "newflow_ms": 10.0, "tcp_ms": 10.0, "arp_ms": 100.0, "nd_ms": 100.0,
              "established": [x for row in est for x in row], "newflow": [0, t0, 1, t0 + 10 * MS],
              "send_errors": 0,
              "tcp": {"sent": [[0, t0], [1, t0 + 10 * MS]], "connected": True, "error": None,
                      "retransmissions": 2},
              "arp": {"requests": [t0], "replies": [t0 + MS]}, "nd": {"requests": [t0], "replies": []}}
    probes = [x for f, q, s in est[:30] for x in (1, f, q, s, s + MS)] + [2, 0, 0, t0, t0 + MS]
    receiver = {"probes": probes, "tcp": [[0, t0, t0 + MS], [1, t0 + 10 * MS, t0 + 60 * MS]]}
    return build_report(sender, receiver, [("freeze", t0 + 5 * MS), ("thaw", t0 + 40 * MS)], t0, t0 + 50 * MS,
                        {"src": "a:b"})


def test_report_json_validates_and_roundtrips() -> None:
    rep = _sample_report()
    data = json.loads(rep.to_json())
    jsonschema.validate(data, load_schema())
    assert [c["name"] for c in data["classes"]] == ["established", "newflow", "tcp", "arp", "nd"]
    assert rep.cls("established").lost == 20 and rep.cls("newflow").lost == 1
    tcp = rep.cls("tcp")
    assert tcp.tcp is not None and tcp.tcp.survived and tcp.tcp.retransmissions == 2
    assert tcp.largest_gap_ms == 49.0  # second record stalled 59 ms after the first: 49 beyond one interval
    assert rep.cls("nd").lost == 1
    assert report_from_json(rep.to_json()) == rep
    with pytest.raises(ValueError):
        report_from_json('{"schema": "other"}')


def test_schema_rejects_a_broken_report() -> None:
    data = json.loads(_sample_report().to_json())
    data["classes"][0]["lost"] = -1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, load_schema())


def test_write_saves_json_and_svg(tmp_path: Path) -> None:
    rep = _sample_report()
    j, s = write(rep, tmp_path / "out")
    assert report_from_json(j.read_text()) == rep
    assert s.read_text() == svg(rep)


def test_svg_and_table_render() -> None:
    rep = _sample_report()
    doc = svg(rep)
    import xml.etree.ElementTree as ET

    root = ET.fromstring(doc)
    assert root.tag.endswith("svg")
    assert doc.count('fill="#d9534f"') == sum(len(c.loss_intervals) for c in rep.classes)
    assert "freeze" in doc and "thaw" in doc
    from rich.console import Console

    lines = timeline(rep)
    order = [next(i for i, x in enumerate(lines) if key in x)
             for key in ("== freeze", "established: 20 lost until 50.0 ms", "== thaw")]
    assert order == sorted(order)  # freeze at 5 ms, the loss run from 30 ms, thaw at 40 ms
    console = Console(width=160, record=True)
    console.print(table(rep))
    assert "established" in console.export_text()


def test_the_demo_verdict_counts_every_class_of_dpfreeze_s_run_and_names_stock_s() -> None:
    from dpfreeze.lab.demo import verdict
    from dpfreeze.probe.report import ClassReport, Report, TcpDetails

    def cls(name: str, lost: int = 0, tcp: TcpDetails | None = None) -> ClassReport:
        return ClassReport(name, 100.0, 200, 200 - lost, lost, 0, 0, 0.0, None, [], tcp)

    def report(*classes: ClassReport) -> Report:
        return Report("s", 1, "now", 0, 20_000.0, list(classes), [], {})

    alive = TcpDetails(True, True, 0, None)
    stock = report(cls("established", 41), cls("newflow", 1818), cls("tcp", tcp=alive))
    ours = report(cls("established"), cls("nd"), cls("tcp", tcp=alive))
    ok, text = verdict({"stock": stock, "dpfreeze": ours})
    assert ok and text.startswith("HITLESS"), text
    assert text.endswith("stock lost 41 established, 1818 newflow"), text
    ok, text = verdict({"stock": stock, "dpfreeze": report(cls("established"), cls("arp", 2))})
    assert not ok and text.startswith("NOT hitless: 2 arp lost"), text
    ok, text = verdict({"dpfreeze": report(cls("tcp", tcp=TcpDetails(True, False, 3, "reset")))})
    assert not ok and "the TCP connection broke" in text, text
    assert verdict({"stock": stock}) == (False,
                                         "NOT measured: the probes gave no report of dpfreeze's upgrade")


def _upgrade_run(outage_s: float, late_s: float) -> Report:
    """A 20 s run at 100 pps, 'dpkg -i' at 5 s: `outage_s` of loss and then `late_s` of 2 s delays."""
    t0 = 1_000 * MS
    est = _stream(2000, 1, t0)
    est = [(f, q, t0 + q * 10 * MS) for f, q, _ in est]
    out0, out1 = t0 + 6000 * MS, t0 + int((6 + outage_s) * 1000) * MS
    probes = []
    for f, q, s in est:
        if out0 <= s < out1:
            continue
        delay = 2000 * MS if out1 <= s < out1 + int(late_s * 1000) * MS else MS
        probes += [1, f, q, s, s + delay]
    sender = {"rate": 100.0, "newflow_ms": 10.0, "established": [x for row in est for x in row],
              "newflow": [], "send_errors": 0}
    events = [("dpkg -i 3.1", t0 + 5000 * MS), ("dpkg done", t0 + 15000 * MS)]
    return build_report(sender, {"probes": probes, "tcp": []}, events, t0, t0 + 20000 * MS)


def test_compare_svg_aligns_runs_on_the_event_and_never_stacks_labels(tmp_path: Path) -> None:
    import xml.etree.ElementTree as ET

    stock, ours = _upgrade_run(4.0, 0.0), _upgrade_run(0.0, 3.0)
    doc = compare_svg([("stock", stock), ("dpfreeze", ours)], "dpkg -i 3.1", "2.15 -> 3.1 by dpkg -i")
    ET.fromstring(doc)
    assert "lost 400 of 2000, gap 4.0 s" in doc and "lost 0 of 2000, slowest 2.0 s" in doc
    assert doc.count('fill="#d9534f"><title>') == 8  # stock's 4 s outage: eight whole 0.5 s cells
    assert doc.count('fill="#c77c02"><title>') == 6  # dpfreeze's 3 s of late packets
    assert "stock: 1 dpkg -i 3.1 (+0.0 s), 2 dpkg done (+10.0 s)" in doc  # events explained once, below
    (tmp_path / "cmp.svg").write_text(doc)
