"""The rtnetlink codec snapshots read internal ports with: pure, from bytes to records."""

from __future__ import annotations

import socket
import struct

from dpif.netlink import rtnl
from dpif.netlink.wire import NLM_F_DUMP, NLMSG_HDR, attr


def test_link_payload_is_read_into_its_name_mac_mtu_and_flags() -> None:
    payload = (rtnl.IFINFOMSG.pack(0, 1, 7, 0x1043, 0) + attr(rtnl.IFLA_IFNAME, b"br0\0")
               + attr(rtnl.IFLA_ADDRESS, bytes.fromhex("02aabbccdd01"))
               + attr(rtnl.IFLA_MTU, struct.pack("=I", 1400)))
    assert rtnl.parse_link(memoryview(payload)) == rtnl.Link(7, "br0", "02:aa:bb:cc:dd:01", 1400, 0x1043)


def test_addresses_of_both_families_and_one_without_an_address() -> None:
    v4 = (rtnl.IFADDRMSG.pack(socket.AF_INET, 24, 0, 0, 7)
          + attr(rtnl.IFA_ADDRESS, socket.inet_aton("192.0.2.1")))
    v6 = (rtnl.IFADDRMSG.pack(socket.AF_INET6, 64, 0, 253, 7)
          + attr(rtnl.IFA_ADDRESS, socket.inet_pton(socket.AF_INET6, "2001:db8::1")))
    assert rtnl.parse_addr(memoryview(v4)) == rtnl.Addr(7, socket.AF_INET, "192.0.2.1", 24, 0)
    assert rtnl.parse_addr(memoryview(v6)) == rtnl.Addr(7, socket.AF_INET6, "2001:db8::1", 64, 253)
    assert rtnl.parse_addr(memoryview(rtnl.IFADDRMSG.pack(socket.AF_INET, 0, 0, 0, 7))) is None


def test_route_reads_its_table_attribute_over_the_header_byte() -> None:
    payload = (rtnl.RTMSG.pack(socket.AF_INET, 24, 0, 0, 252, 3, 0, 1, 0)
               + attr(rtnl.RTA_DST, socket.inet_aton("198.51.100.0"))
               + attr(rtnl.RTA_OIF, struct.pack("=I", 7))
               + attr(rtnl.RTA_GATEWAY, socket.inet_aton("192.0.2.254"))
               + attr(rtnl.RTA_PRIORITY, struct.pack("=I", 7))
               + attr(rtnl.RTA_TABLE, struct.pack("=I", 1000)))
    assert rtnl.parse_route(memoryview(payload)) == rtnl.RouteEntry(
        socket.AF_INET, "198.51.100.0", 24, "192.0.2.254", 1000, 7, 0, 3, 1, 7)
    default = rtnl.RTMSG.pack(socket.AF_INET6, 0, 0, 0, 254, 3, 0, 1, 0)
    assert rtnl.parse_route(memoryview(default)).dst is None


def test_requests_are_framed_dumps_or_one_named_link() -> None:
    _, mtype, flags, seq, _ = NLMSG_HDR.unpack_from(rtnl.route_dump_request(3, socket.AF_INET6))
    assert (mtype, flags & NLM_F_DUMP, seq) == (rtnl.RTM_GETROUTE, NLM_F_DUMP, 3)
    link = rtnl.link_request(1, "br0")
    assert NLMSG_HDR.unpack_from(link)[0] == len(link) and link.endswith(b"br0\0")
