"""The probe agents: one process per network namespace, started as `python -m dpfreeze.probe CONFIG`.

Why separate processes: each must live in its own netns (`ip netns exec`) and a sender must not share a GIL
with the orchestrator that is busy restarting OVS.  Protocol: the agent prints `ready` once its sockets are
open, runs until SIGTERM/SIGINT, then writes its raw log (JSON) to `out` and exits 0.  All times are
CLOCK_REALTIME ns, shared by every netns of one host (or VM) and by the orchestrator's event marks.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import signal
import socket
import struct
import sys
import time
from array import array
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import trio

from dpfreeze.probe import frames

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
PACKET_OUTGOING = 4
SO_TIMESTAMPNS = 35  # Linux asm-generic; SCM_TIMESTAMPNS has the same value
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
SOL_PACKET = 263
PACKET_STATISTICS = 6  # struct tpacket_stats: packets, drops (reading resets them)
RX_BUFFER = 16 << 20
TX_BUFFER = 1 << 20  # about 1000 probe frames: the veth backlog's depth
TICK = 0.005  # the sender wakes at most this often per class; late packets go out together
TIMESPEC = struct.Struct("qq")
TCP_RECORD = struct.Struct("!Qq")  # seq, send time
TCP_INFO_TOTAL_RETRANS = 100  # offset of tcpi_total_retrans in struct tcp_info
TCP_CONNECT_TIMEOUT = 5.0


@dataclass
class SenderConfig:
    iface: str
    src_mac: str
    dst_mac: str
    src_ip: str
    dst_ip: str
    out: str
    src_ip6: str | None = None
    dst_ip6: str | None = None
    rate: float = 1000.0
    flows: int = 4
    udp_port: int = 47000
    sport_base: int = 40000
    newflow_ms: float = 50.0
    newflow_hosts: bool = True
    newflow_ip_base: str | None = None
    newflow_first: int = 0
    tcp_port: int = 0
    tcp_ms: float = 10.0
    arp_ms: float = 100.0
    nd_ms: float = 100.0
    role: str = field(default="sender")


@dataclass
class ReceiverConfig:
    iface: str
    out: str
    udp_port: int = 47000
    tcp_port: int = 0
    role: str = field(default="receiver")


def config_from_json(text: str) -> SenderConfig | ReceiverConfig:
    data = json.loads(text)
    return ReceiverConfig(**data) if data.get("role") == "receiver" else SenderConfig(**data)


def config_to_json(cfg: SenderConfig | ReceiverConfig) -> str:
    return json.dumps(asdict(cfg))


def _rx_socket(iface: str, proto: int) -> socket.socket:
    """A capture socket with kernel receive times and a buffer deep enough to ride out a stalled agent."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(proto))
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    with contextlib.suppress(OSError):  # needs CAP_NET_ADMIN; the default buffer then
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RX_BUFFER)
    sock.bind((iface, 0))
    sock.setblocking(False)
    return sock


def _rx_time(ancdata: list[tuple[int, int, bytes]]) -> int:
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= TIMESPEC.size:
            sec, nsec = TIMESPEC.unpack_from(data)
            return int(sec * 1_000_000_000 + nsec)
    return time.time_ns()


async def _recv_frames(sock: socket.socket) -> AsyncIterator[tuple[bytes, int]]:
    """Yield (frame, kernel receive time) for incoming frames only; a link going down is traffic lost,
    not an error (the kernel reports it once, as ENETDOWN, on every packet socket bound to the link).

    Why not trio's socket wrapper: it yields to the scheduler after every datagram, which under qemu TCG
    costs about a millisecond; one wake-up drains everything queued instead.
    """
    while True:
        await trio.lowlevel.wait_readable(sock)
        for frame in _drain(sock):
            yield frame


def _drain(sock: socket.socket) -> Iterator[tuple[bytes, int]]:
    """Every incoming frame queued on a non-blocking capture socket now, with its receive time."""
    while True:
        try:
            data, anc, _flags, addr = sock.recvmsg(2048, socket.CMSG_SPACE(TIMESPEC.size))
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno == errno.ENETDOWN:
                continue
            raise
        if cast(tuple[Any, ...], addr)[2] != PACKET_OUTGOING:
            yield data, _rx_time(anc)


class Sender:
    """Established stream, new-flow probes, a TCP connection and ARP/ND attempts from one namespace."""

    def __init__(self, cfg: SenderConfig) -> None:
        self.cfg = cfg
        self.est = array("q")  # flow, seq, sent_ns triples
        self.new = array("q")  # k, sent_ns pairs
        self.send_errors = 0
        self.send_errnos: Counter[str] = Counter()  # why: a full socket buffer is not a link that is down
        self.tcp: dict[str, Any] = {"sent": [], "connected": False, "error": None, "retransmissions": None}
        self.arp: dict[str, list[int]] = {"requests": [], "replies": []}
        self.nd: dict[str, list[int]] = {"requests": [], "replies": []}
        self.tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: send only, no RX load
        self.tx.bind((cfg.iface, 0))
        with contextlib.suppress(OSError):  # a stalled guest queues packets rather than refusing them
            self.tx.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, TX_BUFFER)
        self.tx.setblocking(False)
        # Built before `ready` (scapy is slow to import): t0 must not precede the first packet by much.
        self.pool = [frames.build_udp_frame(src_mac=cfg.src_mac, dst_mac=cfg.dst_mac, src_ip=cfg.src_ip,
                                            dst_ip=cfg.dst_ip, sport=cfg.sport_base + i, dport=cfg.udp_port,
                                            cls=frames.ProbeClass.ESTABLISHED, flow=i)
                     for i in range(cfg.flows)]
        self.newflow_template = frames.build_udp_frame(
            src_mac=cfg.src_mac, dst_mac=cfg.dst_mac, src_ip=cfg.src_ip, dst_ip=cfg.dst_ip, sport=0,
            dport=cfg.udp_port, cls=frames.ProbeClass.NEWFLOW, flow=0)
        self.first_newflow = self._newflow_frame(0)

    def _send(self, frame: bytes | bytearray) -> None:
        """Send, counting local failures: a packet the schedule called for is logged as sent either way,
        so a link that is down shows as loss rather than as a quieter stream."""
        try:
            self.tx.send(frame)
        except OSError as exc:
            self._send_failed(exc)

    def _send_failed(self, exc: OSError) -> None:
        self.send_errors += 1
        self.send_errnos[errno.errorcode.get(exc.errno or 0, str(exc.errno))] += 1

    async def established(self) -> None:
        """`flows` flows round-robin at `rate` pps in all, on an absolute schedule (no drift).

        Why the tick: each wake-up costs about a millisecond of CPU under qemu TCG, and a sender that keeps
        its CPU busy (it runs at real-time priority) starves the softirq that carries its own packets."""
        cfg, pool = self.cfg, self.pool
        interval = 1.0 / cfg.rate
        start, k = trio.current_time(), 0
        while True:
            await trio.sleep_until(max(start + k * interval, trio.current_time() + TICK))
            now = trio.current_time()
            while start + k * interval <= now:  # catch up after a late wake-up: keep the schedule
                flow, seq = k % cfg.flows, k // cfg.flows
                frame = pool[flow]
                sent = time.time_ns()
                frames.stamp(frame, seq, sent)
                self._send(frame)
                self.est.extend((flow, seq, sent))
                k += 1

    def _newflow_frame(self, k: int) -> bytearray:
        cfg = self.cfg
        src_mac, src_ip = cfg.src_mac, cfg.src_ip
        if cfg.newflow_hosts:
            src_mac = frames.newflow_mac(k)
            if cfg.newflow_ip_base:
                base = int.from_bytes(socket.inet_aton(cfg.newflow_ip_base), "big")
                src_ip = socket.inet_ntoa((base + k % 64).to_bytes(4, "big"))
        return frames.variant(self.newflow_template, src_mac=src_mac, src_ip=src_ip,
                              sport=cfg.sport_base + 1000 + (cfg.newflow_first + k) % 20000, flow=k & 0xFFFF)

    async def newflows(self) -> None:
        """One packet of a brand-new flow every `newflow_ms`: each one needs an upcall."""
        interval = self.cfg.newflow_ms / 1000
        start, k = trio.current_time(), 0
        frame = self.first_newflow
        while True:
            await trio.sleep_until(start + k * interval)
            sent = time.time_ns()
            frames.stamp(frame, k, sent)
            self._send(frame)
            self.new.extend((k, sent))
            k += 1
            frame = self._newflow_frame(k)  # built while waiting for the next slot

    async def tcp_client(self) -> None:
        """Small timestamped writes on one long-lived connection; an error ends it (it did not survive)."""
        cfg, interval = self.cfg, self.cfg.tcp_ms / 1000
        try:
            with trio.fail_after(TCP_CONNECT_TIMEOUT):
                stream = await trio.open_tcp_stream(cfg.dst_ip, cfg.tcp_port)
        except (OSError, trio.TooSlowError) as exc:
            self.tcp["error"] = f"connect: {exc or 'timeout'}"
            return
        self.tcp["connected"] = True
        start, k = trio.current_time(), 0
        async with stream:
            try:
                while True:
                    await trio.sleep_until(start + k * interval)
                    sent = time.time_ns()
                    await stream.send_all(TCP_RECORD.pack(k, sent))
                    self.tcp["sent"].append((k, sent))
                    k += 1
            except (OSError, trio.BrokenResourceError) as exc:
                self.tcp["error"] = str(exc) or type(exc).__name__
            finally:  # also when cancelled at the end of the window: read it before the socket closes
                self._read_retrans(stream.socket)

    def _read_retrans(self, sock: trio.socket.SocketType) -> None:
        try:
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_TOTAL_RETRANS + 4)
            self.tcp["retransmissions"] = struct.unpack_from("I", info, TCP_INFO_TOTAL_RETRANS)[0]
        except OSError:
            pass

    async def resolver(self, log: dict[str, list[int]], proto: int, request: bytes, interval_ms: float,
                       is_reply: Callable[[bytes], bool]) -> None:
        """ARP or ND attempts every `interval_ms`; replies are matched to requests by time in the report."""
        sock = _rx_socket(self.cfg.iface, proto)

        async def listen() -> None:
            async for data, when in _recv_frames(sock):
                if is_reply(data):
                    log["replies"].append(when)

        with sock:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(listen)
                start, k = trio.current_time(), 0
                while True:
                    await trio.sleep_until(start + k * interval_ms / 1000)
                    sent = time.time_ns()
                    log["requests"].append(sent)
                    try:
                        sock.send(request)
                    except OSError as exc:
                        self._send_failed(exc)
                    k += 1

    async def run(self, ready: trio.Event) -> None:
        cfg = self.cfg
        async with trio.open_nursery() as nursery:
            if cfg.rate > 0 and cfg.flows > 0:
                nursery.start_soon(self.established)
            if cfg.newflow_ms > 0:
                nursery.start_soon(self.newflows)
            if cfg.tcp_port and cfg.tcp_ms > 0:
                nursery.start_soon(self.tcp_client)
            if cfg.arp_ms > 0:
                arp = frames.build_arp_request(src_mac=cfg.src_mac, src_ip=cfg.src_ip, target_ip=cfg.dst_ip)
                nursery.start_soon(self.resolver, self.arp, ETH_P_ARP, arp, cfg.arp_ms,
                                   lambda f: frames.is_arp_reply(f, from_ip=cfg.dst_ip, to_mac=cfg.src_mac))
            if cfg.nd_ms > 0 and cfg.src_ip6 and cfg.dst_ip6:
                dst6 = cfg.dst_ip6
                ns = frames.build_neighbor_solicitation(src_mac=cfg.src_mac, src_ip6=cfg.src_ip6,
                                                        target_ip6=dst6)
                nursery.start_soon(self.resolver, self.nd, ETH_P_IPV6, ns, cfg.nd_ms,
                                   lambda f: frames.is_neighbor_advert(f, target_ip6=dst6))
            ready.set()

    def result(self) -> dict[str, Any]:
        return {"role": "sender", "rate": self.cfg.rate, "flows": self.cfg.flows,
                "newflow_ms": self.cfg.newflow_ms, "tcp_ms": self.cfg.tcp_ms,
                "arp_ms": self.cfg.arp_ms, "nd_ms": self.cfg.nd_ms,
                "established": list(self.est), "newflow": list(self.new), "send_errors": self.send_errors,
                "send_errnos": dict(self.send_errnos),
                "tcp": self.tcp if self.cfg.tcp_port else None,
                "arp": self.arp if self.cfg.arp_ms > 0 else None,
                "nd": self.nd if self.cfg.nd_ms > 0 and self.cfg.src_ip6 and self.cfg.dst_ip6 else None}


class Receiver:
    """Records every probe frame (class, flow, seq, sent, received) and every TCP record seen."""

    def __init__(self, cfg: ReceiverConfig) -> None:
        self.cfg = cfg
        self.probes = array("q")  # cls, flow, seq, sent, recv
        self.tcp: list[tuple[int, int, int]] = []  # seq, sent, recv
        # A bound UDP socket so the kernel does not answer probes with ICMP port unreachable; never read.
        self.sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sink.bind(("0.0.0.0", cfg.udp_port))
        self.rx = _rx_socket(cfg.iface, ETH_P_IP)
        self.drops = 0

    def _record(self, data: bytes, when: int) -> None:
        p = frames.parse(data)
        if p is not None:
            self.probes.extend((p.cls, p.flow, p.seq, p.sent_ns, when))

    async def capture(self) -> None:
        async for data, when in _recv_frames(self.rx):
            self._record(data, when)

    def finish(self) -> None:
        """Take what is still queued (a slow agent lags its socket), then the kernel's drop count."""
        for data, when in _drain(self.rx):
            self._record(data, when)
        self.drops = struct.unpack("II", self.rx.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))[1]

    async def tcp_server(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.cfg.tcp_port, host="0.0.0.0")
        task_status.started()
        await trio.serve_listeners(self._tcp_conn, listeners)

    async def _tcp_conn(self, stream: trio.SocketStream) -> None:
        buf = bytearray()
        async with stream:
            try:
                async for chunk in stream:
                    now = time.time_ns()
                    buf += chunk
                    while len(buf) >= TCP_RECORD.size:
                        seq, sent = TCP_RECORD.unpack_from(buf)
                        del buf[:TCP_RECORD.size]
                        self.tcp.append((seq, sent, now))
            except trio.BrokenResourceError:
                pass

    async def run(self, ready: trio.Event) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.capture)
            if self.cfg.tcp_port:
                await nursery.start(self.tcp_server)
            ready.set()

    def result(self) -> dict[str, Any]:
        return {"role": "receiver", "probes": list(self.probes), "tcp": self.tcp, "drops": self.drops}


def _realtime() -> None:
    """Lowest real-time priority when allowed: a busy host (qemu, a restarting vswitchd) must not stall the
    schedule.  Safe only while an agent stays cheap: it sleeps between bursts (TICK) and drains its sockets
    per wake-up, else under qemu TCG it would take the whole vCPU from the softirq that moves its packets."""
    with contextlib.suppress(OSError):
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))


async def run_agent(cfg: SenderConfig | ReceiverConfig) -> None:
    _realtime()
    agent = Receiver(cfg) if isinstance(cfg, ReceiverConfig) else Sender(cfg)
    ready = trio.Event()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent.run, ready)
            await ready.wait()
            print("ready", flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
    if isinstance(agent, Receiver):
        agent.finish()
    with open(cfg.out, "w") as f:
        json.dump(agent.result(), f)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m dpfreeze.probe CONFIG_JSON", file=sys.stderr)
        return 2
    cfg = config_from_json(argv[0])
    if isinstance(cfg, SenderConfig) and (cfg.rate < 0 or not math.isfinite(cfg.rate)):
        print("agent: bad rate", file=sys.stderr)
        return 2
    trio.run(run_agent, cfg)
    return 0
