"""Datapath actions as data: the kernel's numbers and each action's name, length and nesting."""

from __future__ import annotations

from dataclasses import dataclass, field

from dpif.netlink import flowkey as fk

OUTPUT, USERSPACE, SET, PUSH_VLAN, POP_VLAN, SAMPLE, RECIRC, HASH = 1, 2, 3, 4, 5, 6, 7, 8
PUSH_MPLS, POP_MPLS, SET_MASKED, CT, TRUNC, PUSH_ETH, POP_ETH, CT_CLEAR = 9, 10, 11, 12, 13, 14, 15, 16
PUSH_NSH, POP_NSH, METER, CLONE, CHECK_PKT_LEN, ADD_MPLS, DEC_TTL, DROP = 17, 18, 19, 20, 21, 22, 23, 24
PSAMPLE, TUNNEL_PUSH, TUNNEL_POP, LB_OUTPUT = 25, 26, 27, 28
ACTION_MAX = LB_OUTPUT

US_PID, US_USERDATA, US_EGRESS_TUN_PORT, US_ACTIONS = 1, 2, 3, 4
SAMPLE_PROBABILITY, SAMPLE_ACTIONS = 1, 2
CT_COMMIT, CT_ZONE, CT_MARK, CT_LABELS, CT_HELPER, CT_NAT = 1, 2, 3, 4, 5, 6
CT_FORCE_COMMIT, CT_EVENTMASK, CT_TIMEOUT = 7, 8, 9
NAT_SRC, NAT_DST, NAT_IP_MIN, NAT_IP_MAX, NAT_PROTO_MIN, NAT_PROTO_MAX = 1, 2, 3, 4, 5, 6
NAT_PERSISTENT, NAT_PROTO_HASH, NAT_PROTO_RANDOM = 7, 8, 9
CPL_PKT_LEN, CPL_IF_GREATER, CPL_IF_LESS_EQUAL = 1, 2, 3
DEC_TTL_ACTION = 1
PSAMPLE_GROUP, PSAMPLE_COOKIE = 1, 2
HASH_ALG_L4, HASH_ALG_SYM_L4 = 0, 1

VARIABLE = fk.VARIABLE


@dataclass(frozen=True)
class ActionSpec:
    num: int
    name: str
    length: int  # fixed payload length, or VARIABLE
    nested: bool = False  # payload is a list of actions (clone) or of sub-attributes


ACTIONS: dict[int, ActionSpec] = {a.num: a for a in (
    ActionSpec(OUTPUT, "output", 4),
    ActionSpec(USERSPACE, "userspace", VARIABLE, True),
    ActionSpec(SET, "set", VARIABLE, True),
    ActionSpec(PUSH_VLAN, "push_vlan", 4),
    ActionSpec(POP_VLAN, "pop_vlan", 0),
    ActionSpec(SAMPLE, "sample", VARIABLE, True),
    ActionSpec(RECIRC, "recirc", 4),
    ActionSpec(HASH, "hash", 8),
    ActionSpec(PUSH_MPLS, "push_mpls", 8),
    ActionSpec(POP_MPLS, "pop_mpls", 2),
    ActionSpec(SET_MASKED, "set_masked", VARIABLE),
    ActionSpec(CT, "ct", VARIABLE, True),
    ActionSpec(TRUNC, "trunc", 4),
    ActionSpec(PUSH_ETH, "push_eth", 12),
    ActionSpec(POP_ETH, "pop_eth", 0),
    ActionSpec(CT_CLEAR, "ct_clear", 0),
    ActionSpec(PUSH_NSH, "push_nsh", VARIABLE, True),
    ActionSpec(POP_NSH, "pop_nsh", 0),
    ActionSpec(METER, "meter", 4),
    ActionSpec(CLONE, "clone", VARIABLE, True),
    ActionSpec(CHECK_PKT_LEN, "check_pkt_len", VARIABLE, True),
    ActionSpec(ADD_MPLS, "add_mpls", 8),
    ActionSpec(DEC_TTL, "dec_ttl", VARIABLE, True),
    ActionSpec(DROP, "drop", 4),
    ActionSpec(PSAMPLE, "psample", VARIABLE, True),
    ActionSpec(TUNNEL_PUSH, "tnl_push", VARIABLE),
    ActionSpec(TUNNEL_POP, "tnl_pop", 4),
    ActionSpec(LB_OUTPUT, "lb_output", 4),
)}

# Which nested payloads hold a list of actions (directly or in the named sub-attributes).
_ACTION_LISTS = {CLONE: None, SAMPLE: (SAMPLE_ACTIONS,), CHECK_PKT_LEN: (CPL_IF_GREATER, CPL_IF_LESS_EQUAL),
                 DEC_TTL: (DEC_TTL_ACTION,)}


@dataclass(frozen=True)
class Action:
    """One action: type, raw payload, and the decoded sub-actions of clone/sample/check_pkt_len/dec_ttl."""

    type: int
    raw: bytes
    children: tuple[Action, ...] | None = field(default=None, compare=False)

    @property
    def name(self) -> str:
        spec = ACTIONS.get(self.type)
        return spec.name if spec else f"action{self.type}"
