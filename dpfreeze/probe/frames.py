"""Probe frames: built once with scapy, then patched in place (sequence number, send time) per packet.

Why a fixed 24-byte probe header after the UDP header: the receiver recognises probe traffic by its magic
at a known offset without parsing, and the sender changes only 12 bytes per packet.  The UDP checksum is 0
("none", legal over IPv4) so patching the payload never invalidates the frame.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

MAGIC = b"DPFZ"
VERSION = 1
# magic, version, class, flow, seq, send time (CLOCK_REALTIME ns)
HEADER = struct.Struct("!4sBBHIq")
ETH_IP_UDP = 14 + 20 + 8
SEQ_TS = struct.Struct("!Iq")
SEQ_OFFSET = ETH_IP_UDP + 8  # after magic, version, class, flow
FRAME_LEN = 64  # minimum Ethernet frame: small probes, fixed length


class ProbeClass(IntEnum):
    """Traffic classes that travel as UDP probe frames (the wire value is stable)."""

    ESTABLISHED = 1
    NEWFLOW = 2


@dataclass(frozen=True)
class Probe:
    """What the receiver learns from one probe frame."""

    cls: int
    flow: int
    seq: int
    sent_ns: int


def mac_bytes(mac: str) -> bytes:
    parts = mac.split(":")
    if len(parts) != 6:
        raise ValueError(f"bad MAC address {mac!r}")
    return bytes(int(p, 16) for p in parts)


def newflow_mac(k: int) -> str:
    """A locally administered unicast MAC unique to new flow `k` (each needs MAC learning, an upcall)."""
    return f"02:d9:f2:{(k >> 16) & 0xFF:02x}:{(k >> 8) & 0xFF:02x}:{k & 0xFF:02x}"


def build_udp_frame(*, src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, sport: int, dport: int,
                    cls: int, flow: int) -> bytearray:
    """One IPv4/UDP probe frame (sequence 0, time 0) as bytes ready to patch."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    payload = HEADER.pack(MAGIC, VERSION, cls, flow, 0, 0)
    pkt = (Ether(src=src_mac, dst=dst_mac) / IP(src=src_ip, dst=dst_ip, ttl=64, id=0, flags="DF")
           / UDP(sport=sport, dport=dport, chksum=0) / payload)
    raw = bytearray(bytes(pkt))
    if len(raw) < FRAME_LEN:
        raw += bytes(FRAME_LEN - len(raw))  # Ethernet padding after the IP datagram; IP length unchanged
    return raw


def ip_checksum(header: bytes | bytearray) -> int:
    """The IPv4 header checksum (RFC 1071) of `header` with its checksum field zeroed."""
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def variant(template: bytearray, *, src_mac: str, src_ip: str, sport: int, flow: int) -> bytearray:
    """A copy of a `build_udp_frame` frame with another source and flow number, without scapy.

    Why: a new flow is built every few milliseconds, and scapy costs milliseconds per frame under qemu TCG.
    """
    import socket

    frame = bytearray(template)
    frame[6:12] = mac_bytes(src_mac)
    frame[26:30] = socket.inet_aton(src_ip)
    frame[24:26] = b"\0\0"
    frame[24:26] = ip_checksum(frame[14:34]).to_bytes(2, "big")
    frame[34:36] = sport.to_bytes(2, "big")
    struct.pack_into("!H", frame, ETH_IP_UDP + 6, flow)
    return frame


def stamp(frame: bytearray, seq: int, sent_ns: int) -> None:
    SEQ_TS.pack_into(frame, SEQ_OFFSET, seq & 0xFFFFFFFF, sent_ns)


def parse(frame: bytes) -> Probe | None:
    """The probe carried by an Ethernet frame, or None if it is not (untagged IPv4/UDP) probe traffic."""
    if len(frame) < ETH_IP_UDP + HEADER.size or frame[12:14] != b"\x08\x00":
        return None
    ihl = (frame[14] & 0x0F) * 4
    if frame[23] != 17 or ihl < 20:
        return None
    off = 14 + ihl + 8
    if len(frame) < off + HEADER.size:
        return None
    magic, version, cls, flow, seq, sent = HEADER.unpack_from(frame, off)
    if magic != MAGIC or version != VERSION:
        return None
    return Probe(cls, flow, seq, sent)


def build_arp_request(*, src_mac: str, src_ip: str, target_ip: str) -> bytes:
    from scapy.layers.l2 import ARP, Ether

    return bytes(Ether(src=src_mac, dst="ff:ff:ff:ff:ff:ff")
                 / ARP(op=1, hwsrc=src_mac, psrc=src_ip, hwdst="00:00:00:00:00:00", pdst=target_ip))


def is_arp_reply(frame: bytes, *, from_ip: str, to_mac: str) -> bool:
    """An ARP reply from `from_ip` addressed to us (by hardware address)."""
    import socket

    if len(frame) < 42 or frame[12:14] != b"\x08\x06" or frame[20:22] != b"\x00\x02":
        return False
    return frame[28:32] == socket.inet_aton(from_ip) and frame[32:38] == mac_bytes(to_mac)


def solicited_node(ip6: str) -> tuple[str, str]:
    """The solicited-node multicast (IPv6 address, MAC) for `ip6` (RFC 4291 2.7.1, RFC 2464 7)."""
    import ipaddress

    low = ipaddress.IPv6Address(ip6).packed[-3:]
    group = ipaddress.IPv6Address(bytes.fromhex("ff0200000000000000000001ff") + low)
    mac = "33:33:ff:" + ":".join(f"{b:02x}" for b in low)
    return str(group), mac


def build_neighbor_solicitation(*, src_mac: str, src_ip6: str, target_ip6: str) -> bytes:
    from scapy.layers.inet6 import ICMPv6ND_NS, ICMPv6NDOptSrcLLAddr, IPv6
    from scapy.layers.l2 import Ether

    group, mac = solicited_node(target_ip6)
    return bytes(Ether(src=src_mac, dst=mac) / IPv6(src=src_ip6, dst=group, hlim=255)
                 / ICMPv6ND_NS(tgt=target_ip6) / ICMPv6NDOptSrcLLAddr(lladdr=src_mac))


def is_neighbor_advert(frame: bytes, *, target_ip6: str) -> bool:
    """A neighbour advertisement for `target_ip6` (ICMPv6 type 136 right after a plain IPv6 header)."""
    import ipaddress

    if len(frame) < 14 + 40 + 24 or frame[12:14] != b"\x86\xdd" or frame[20] != 58 or frame[54] != 136:
        return False
    return frame[62:78] == ipaddress.IPv6Address(target_ip6).packed
