"""The probe orchestrator: start the agents, run a disruption, stop the agents, build the report.

Why the disruption is a callable: the upgrade job (or a test) does whatever it wants in the window and marks
named events on the `Timeline`; the report aligns those marks with the losses because agents and
orchestrator stamp the same CLOCK_REALTIME.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import trio

from dpfreeze.errors import DpfreezeError
from dpfreeze.probe.agent import ReceiverConfig, SenderConfig, config_to_json
from dpfreeze.probe.report import Report, build_report


class ProbeError(DpfreezeError):
    """The probes could not run (bad endpoint, agent failed); one line for the operator."""


@dataclass(frozen=True)
class Endpoint:
    """One end of the probe path: an interface, optionally inside a network namespace."""

    iface: str
    netns: str | None = None
    mac: str | None = None
    ip4: str | None = None
    ip6: str | None = None

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """`NS:IFACE` or `IFACE`."""
        ns, _, iface = text.rpartition(":")
        if not iface:
            raise ProbeError(f"bad endpoint {text!r}: expected NETNS:IFACE or IFACE")
        return cls(iface=iface, netns=ns or None)

    def where(self) -> str:
        return f"{self.netns}:{self.iface}" if self.netns else self.iface


@dataclass(frozen=True)
class ProbeSpec:
    src: Endpoint
    dst: Endpoint
    rate: float = 1000.0
    flows: int = 4
    udp_port: int = 47000
    newflow_ms: float = 50.0
    newflow_hosts: bool = True
    newflow_ip_base: str | None = None
    newflow_first: int = 0  # the first new flow's index: runs close together use different source ports
    tcp_port: int = 47001  # 0: no TCP probe
    tcp_ms: float = 10.0
    arp_ms: float = 100.0  # 0: no ARP attempts
    nd_ms: float = 100.0  # 0: no ND attempts (also skipped when an end has no global IPv6 address)
    lead_s: float = 0.5  # steady traffic before the disruption
    tail_s: float = 0.5  # and after it
    drain_s: float = 0.3  # the receiver keeps listening after the sender stops
    ready_timeout_s: float = 60.0  # an agent imports scapy; under qemu TCG that alone takes several seconds
    stop_timeout_s: float = 10.0  # an agent writes its log on stop: a long run's takes a while under load


def _single(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """Unwrap a lone ProbeError (what the operator should see); anything else stays a group."""
    if len(group.exceptions) == 1 and isinstance(group.exceptions[0], ProbeError):
        return group.exceptions[0]
    return group


class Timeline:
    """Named instants on the probes' clock, e.g. freeze, daemon-stopped, daemon-started, thaw."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []

    def mark(self, name: str) -> None:
        self.events.append((name, time.time_ns()))


Disruption = Callable[[Timeline], Awaitable[object]]


def _in_ns(netns: str | None, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv] if netns else argv


async def resolve(ep: Endpoint) -> Endpoint:
    """Fill in the MAC and addresses that were not given, from `ip -j addr` in the endpoint's netns."""
    if ep.mac and ep.ip4:
        return ep
    argv = ["ip", *(["-n", ep.netns] if ep.netns else []), "-j", "addr", "show", "dev", ep.iface]
    res = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    if res.returncode != 0:
        raise ProbeError(f"{ep.where()}: {res.stderr.decode().strip() or 'no such interface'}")
    (link,) = json.loads(res.stdout)
    infos = link.get("addr_info", [])
    ip4 = next((a["local"] for a in infos if a["family"] == "inet"), None)
    ip6 = next((a["local"] for a in infos if a["family"] == "inet6" and a.get("scope") == "global"), None)
    ep = replace(ep, mac=ep.mac or link["address"], ip4=ep.ip4 or ip4, ip6=ep.ip6 or ip6)
    if not ep.ip4:
        raise ProbeError(f"{ep.where()} has no IPv4 address")
    return ep


class _Agent:
    """One running agent process: started, waited for `ready`, stopped with SIGTERM."""

    def __init__(self, name: str, proc: trio.Process, out: Path) -> None:
        self.name, self.proc, self.out = name, proc, out

    @classmethod
    async def start(cls, nursery: trio.Nursery, name: str, netns: str | None,
                    cfg: SenderConfig | ReceiverConfig, ready_timeout: float) -> _Agent:
        argv = _in_ns(netns, [sys.executable, "-m", "dpfreeze.probe", config_to_json(cfg)])
        proc: trio.Process = await nursery.start(partial(trio.run_process, argv, stdout=subprocess.PIPE,
                                                         check=False))
        agent = cls(name, proc, Path(cfg.out))
        assert proc.stdout is not None
        line = b""
        with trio.move_on_after(ready_timeout):
            while not line.endswith(b"\n"):
                chunk = await proc.stdout.receive_some(64)
                if not chunk:
                    break
                line += chunk
        if line.strip() != b"ready":
            proc.kill()
            raise ProbeError(f"{name} agent in {netns or 'the host netns'} did not start (see its stderr)")
        return agent

    async def stop(self, timeout: float) -> dict[str, Any]:
        self.proc.terminate()
        with trio.move_on_after(timeout):
            await self.proc.wait()
        if self.proc.returncode != 0 or not self.out.exists():
            self.proc.kill()
            raise ProbeError(f"{self.name} agent failed (exit status {self.proc.returncode})")
        return dict(json.loads(self.out.read_text()))


async def run_probes(spec: ProbeSpec, disruption: Disruption, *, workdir: Path | None = None) -> Report:
    """Run every probe class from spec.src to spec.dst around `disruption(timeline)`; return the report."""
    src, dst = await resolve(spec.src), await resolve(spec.dst)
    with tempfile.TemporaryDirectory(prefix="dpfz-probe-", dir=workdir) as tmp:
        rcfg = ReceiverConfig(iface=dst.iface, out=f"{tmp}/receiver.json", udp_port=spec.udp_port,
                              tcp_port=spec.tcp_port)
        assert src.mac and dst.mac and src.ip4 and dst.ip4
        scfg = SenderConfig(iface=src.iface, src_mac=src.mac, dst_mac=dst.mac, src_ip=src.ip4, dst_ip=dst.ip4,
                            src_ip6=src.ip6, dst_ip6=dst.ip6, out=f"{tmp}/sender.json", rate=spec.rate,
                            flows=spec.flows, udp_port=spec.udp_port, newflow_ms=spec.newflow_ms,
                            newflow_hosts=spec.newflow_hosts, newflow_ip_base=spec.newflow_ip_base,
                            newflow_first=spec.newflow_first, tcp_port=spec.tcp_port, tcp_ms=spec.tcp_ms,
                            arp_ms=spec.arp_ms, nd_ms=spec.nd_ms)
        timeline = Timeline()
        # An error or cancellation in here cancels the nursery, and trio.run_process then stops both agents.
        try:
            async with trio.open_nursery() as nursery:
                receiver = await _Agent.start(nursery, "receiver", dst.netns, rcfg, spec.ready_timeout_s)
                sender = await _Agent.start(nursery, "sender", src.netns, scfg, spec.ready_timeout_s)
                t0 = time.time_ns()
                await trio.sleep(spec.lead_s)
                await disruption(timeline)
                await trio.sleep(spec.tail_s)
                end = time.time_ns()
                sent = await sender.stop(spec.stop_timeout_s)
                await trio.sleep(spec.drain_s)
                got = await receiver.stop(spec.stop_timeout_s)
        except BaseExceptionGroup as group:
            raise _single(group) from None
        params = {"src": src.where(), "dst": dst.where(), "rate": spec.rate, "flows": spec.flows,
                  "newflow_ms": spec.newflow_ms, "newflow_hosts": spec.newflow_hosts, "tcp_ms": spec.tcp_ms,
                  "arp_ms": spec.arp_ms, "nd_ms": spec.nd_ms, "send_errors": sent["send_errors"],
                  "send_errnos": sent["send_errnos"], "receiver_drops": got["drops"]}
        return build_report(sent, got, timeline.events, t0, end, params)


def sleep_disruption(seconds: float) -> Disruption:
    """A disruption that does nothing for `seconds` (a baseline run)."""

    async def disrupt(timeline: Timeline) -> None:
        await trio.sleep(seconds)

    return disrupt
