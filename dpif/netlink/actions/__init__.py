"""Datapath actions (OVS_ACTION_ATTR_*): table as data, typed values, ovs-dpctl text and its parser.

Formatting follows OVS `format_odp_actions` (lib/odp-util.c) byte for byte.  Numbering is the kernel's
(DEC_TTL=23, DROP=24, PSAMPLE=25, as in current OVS); OVS 3.1's userspace-only numbers collide with
DEC_TTL/DROP there, which is why 3.1 cannot print them and why "drop" parses to an empty action list
(the portable drop every kernel accepts) rather than to a DROP attribute a 6.1 kernel would refuse.
Parsing accepts everything `odp_actions_from_string` accepts, plus the forms OVS prints but 3.1 cannot
read back (push_mpls, pop_mpls, hash, push_eth, pop_eth, dec_ttl, psample, hex recirc ids), so that
whatever `format_actions` prints re-parses to the same bytes.


The package splits the way h11 splits its protocol: `tables` (attributes as data), `codec` (bytes <-> typed
values), `formatter` (bytes -> ovs-dpctl text), `parser` (ovs-dpctl text -> bytes).  This module is the
public surface.
"""

from __future__ import annotations

from dpif.netlink.actions.codec import decode_actions, encode_actions
from dpif.netlink.actions.formatter import TEXT_MEMO, format_actions
from dpif.netlink.actions.parser import parse_actions
from dpif.netlink.actions.tables import (
    CHECK_PKT_LEN,
    CLONE,
    CPL_IF_GREATER,
    CPL_IF_LESS_EQUAL,
    DEC_TTL,
    DEC_TTL_ACTION,
    DROP,
    METER,
    OUTPUT,
    RECIRC,
    SAMPLE,
    SAMPLE_ACTIONS,
    SET,
    SET_MASKED,
    TUNNEL_POP,
    TUNNEL_PUSH,
    US_ACTIONS,
    US_EGRESS_TUN_PORT,
    USERSPACE,
)

__all__ = [
    "CHECK_PKT_LEN",
    "CLONE",
    "CPL_IF_GREATER",
    "CPL_IF_LESS_EQUAL",
    "DEC_TTL",
    "DEC_TTL_ACTION",
    "DROP",
    "METER",
    "OUTPUT",
    "RECIRC",
    "SAMPLE",
    "SAMPLE_ACTIONS",
    "SET",
    "SET_MASKED",
    "TEXT_MEMO",
    "TUNNEL_POP",
    "TUNNEL_PUSH",
    "USERSPACE",
    "US_ACTIONS",
    "US_EGRESS_TUN_PORT",
    "decode_actions",
    "encode_actions",
    "format_actions",
    "parse_actions",
]
