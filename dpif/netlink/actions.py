"""Datapath actions (OVS_ACTION_ATTR_*): table as data, typed values, ovs-dpctl text and its parser.

Formatting follows OVS `format_odp_actions` (lib/odp-util.c) byte for byte.  Numbering is the kernel's
(DEC_TTL=23, DROP=24, PSAMPLE=25, as in current OVS); OVS 3.1's userspace-only numbers collide with
DEC_TTL/DROP there, which is why 3.1 cannot print them and why "drop" parses to an empty action list
(the portable drop every kernel accepts) rather than to a DROP attribute a 6.1 kernel would refuse.
Parsing accepts everything `odp_actions_from_string` accepts, plus the forms OVS prints but 3.1 cannot
read back (push_mpls, pop_mpls, hash, push_eth, pop_eth, dec_ttl, psample, hex recirc ids), so that
whatever `format_actions` prints re-parses to the same bytes.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from dpif.netlink import flowkey as fk
from dpif.netlink.flowkey import ParseError, Scanner, WireError

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


def decode_actions(buf: bytes | memoryview) -> tuple[Action, ...]:
    """Typed actions; raises WireError on truncation or a fixed-size action of the wrong size."""
    out = []
    for t, v in fk.iter_nla(buf):
        spec = ACTIONS.get(t)
        if spec is not None and spec.length >= 0 and len(v) != spec.length:
            raise WireError(f"action {spec.name}: expected {spec.length} bytes, got {len(v)}")
        children = None
        if t in _ACTION_LISTS:
            subs = _ACTION_LISTS[t]
            if subs is None:
                children = decode_actions(v)
            else:
                kids: list[Action] = []
                for st, sv in fk.iter_nla(v):
                    if st in subs:
                        kids.extend(decode_actions(sv))
                children = tuple(kids)
        elif t in (SET, SET_MASKED):
            inner = list(fk.iter_nla(v))
            if len(inner) != 1:
                raise WireError(f"{spec.name if spec else t}: expected one key attribute, got {len(inner)}")
        elif spec is not None and spec.nested:
            for _ in fk.iter_nla(v):  # well-formed sub-attributes, or WireError
                pass
        out.append(Action(t, bytes(v), children))
    return tuple(out)


def encode_actions(actions: Iterable[Action]) -> bytes:
    """Re-encode from raw payloads (verbatim; like OVS and the kernel, nests carry no NLA_F_NESTED)."""
    return b"".join(fk.nla(a.type, a.raw) for a in actions)


# --- formatting ----------------------------------------------------------------------------------------


def format_actions(buf: bytes | memoryview | None, port_names: Mapping[int, str] | None = None) -> str:
    """The text ovs-dpctl prints after "actions:" (format_odp_actions)."""
    if buf is None or not len(buf):
        return "drop"
    if port_names:
        return _format_actions(memoryview(buf), port_names)
    data = bytes(buf)  # without port names the text depends on the bytes alone: memoize (dumps repeat them)
    text = TEXT_MEMO.get(data)
    if text is None:
        if len(TEXT_MEMO) >= 1 << 14:
            TEXT_MEMO.clear()
        text = TEXT_MEMO[data] = _format_actions(memoryview(data), None)
    return text


TEXT_MEMO: dict[bytes, str] = {}  # actions bytes -> text (without port names); dumptext's C loop reads it


def _format_actions(mv: memoryview, port_names: Mapping[int, str] | None) -> str:
    items, left = fk.walk_attrs(mv)
    s = ",".join(_format_action(t, v, port_names) for t, v in items)
    if left:
        if left == len(mv):
            s += "<empty>"
        s += f",***{left} leftover bytes*** (" + bytes(mv[len(mv) - left :]).hex() + ")"
    return s


def _generic(t: int, v: memoryview | bytes) -> str:
    s = f"action{t}"
    if len(v):
        s += "(" + " ".join(f"{x:02x}" for x in bytes(v)) + ")"
    return s


def _expected_len(t: int) -> int:
    if t > ACTION_MAX or t == 0:
        return -1
    return ACTIONS[t].length


def _format_action(t: int, v: memoryview, ports: Mapping[int, str] | None) -> str:
    exp = _expected_len(t)
    if exp != VARIABLE and len(v) != exp:
        return f"bad length {len(v)}, expected {exp} for: " + _generic(t, v)
    fmt = _FORMATTERS.get(t)
    return fmt(v, ports) if fmt else _generic(t, v)


def _u32(v: memoryview | bytes) -> int:
    return int(struct.unpack_from("=I", v)[0])


def _nested(v: memoryview | bytes, policy: Mapping[int, tuple[int, int]]) -> dict[int, memoryview] | None:
    """nl_parse_nested: the last attribute of each type, checked against (min, max) lengths; None = error."""
    found: dict[int, memoryview] = {}
    mv = memoryview(v)
    off, end = 0, len(mv)
    while end - off >= 4:
        ln, t = fk.NLA_HDR.unpack_from(mv, off)
        if ln < 4 or ln > end - off:
            return None
        t &= fk.NLA_TYPE_MASK
        p = mv[off + 4 : off + ln]
        if t in policy:
            lo, hi = policy[t]
            if len(p) < lo or (hi >= 0 and len(p) > hi):
                return None
            found[t] = p
        off += fk.align4(ln)
    if off < end:
        return None
    return found


def _fmt_output(v: memoryview, ports: Mapping[int, str] | None) -> str:
    return fk.port_name(_u32(v), ports)


_SLOW_PATH_NAMES = {1: "cfm", 2: "bfd", 4: "lacp", 8: "stp", 16: "lldp", 32: "action", 64: "match"}
COOKIE_SIZE = 48
COOKIE_SFLOW, COOKIE_SLOW_PATH, COOKIE_FLOW_SAMPLE, COOKIE_IPFIX, COOKIE_CONTROLLER = 1, 2, 3, 4, 5
OFPP_NONE = 0xFFFF


def _fmt_userspace(v: memoryview, ports: Mapping[int, str] | None) -> str:
    a = _nested(v, {US_PID: (4, 4), US_USERDATA: (0, -1), US_EGRESS_TUN_PORT: (4, 4), US_ACTIONS: (0, -1)})
    if a is None or US_PID not in a:
        return "userspace(error)"
    s = f"userspace(pid={_u32(a[US_PID])}"
    ud = a.get(US_USERDATA)
    if ud is not None:
        text = _cookie_text(bytes(ud), ports) if len(ud) == COOKIE_SIZE else None
        s += text if text is not None else f",userdata({bytes(ud).hex()})"
    if US_ACTIONS in a:
        s += ",actions"
    if US_EGRESS_TUN_PORT in a:
        s += ",tunnel_out_port=" + fk.port_name(_u32(a[US_EGRESS_TUN_PORT]), ports)
    return s + ")"


def _cookie_text(c: bytes, ports: Mapping[int, str] | None) -> str | None:
    """struct user_action_cookie (OVS-internal, host order): type u16, in_port u32 at 4, uuid, union at 24."""
    ctype = struct.unpack_from("=H", c, 0)[0]
    if ctype == COOKIE_SFLOW:
        tci, output = struct.unpack_from("!H", c, 24)[0], struct.unpack_from("=I", c, 28)[0]
        return f",sFlow(vid={tci & 0xFFF},pcp={tci >> 13},output={output})"
    if ctype == COOKIE_SLOW_PATH:
        return ",slow_path(" + fk.flags_text(_SLOW_PATH_NAMES, struct.unpack_from("=I", c, 28)[0], ",") + ")"
    if ctype == COOKIE_FLOW_SAMPLE:
        prob = struct.unpack_from("=H", c, 24)[0]
        cs, od, op, port, direction = struct.unpack_from("=5I", c, 28)
        s = (f",flow_sample(probability={prob},collector_set_id={cs},obs_domain_id={od},obs_point_id={op}"
             f",output_port={fk.port_name(port, ports)}")
        s += {1: ",ingress", 2: ",egress"}.get(direction, "")
        return s + ")"
    if ctype == COOKIE_IPFIX:
        return f",ipfix(output_port={fk.port_name(struct.unpack_from('=I', c, 24)[0], ports)})"
    if ctype == COOKIE_CONTROLLER:
        dont_send, cont, reason, recirc = struct.unpack_from("=BBHI", c, 24)
        cookie = struct.unpack_from("!Q", c, 32)[0]
        cid, max_len = struct.unpack_from("=HH", c, 40)
        return (f",controller(reason={reason},dont_send={int(bool(dont_send))},continuation={int(bool(cont))}"
                f",recirc_id={recirc},rule_cookie={fk.hx(cookie)},controller_id={cid},max_len={max_len})")
    return None


def _fmt_set(v: memoryview, ports: Mapping[int, str] | None) -> str:
    items, _ = fk.walk_attrs(v)
    if not items:
        return "set()"
    t, a = items[0]
    err = fk.check_attr_len(t, a, None, fk.KEY_ATTRS, fk.KEY_ATTR_MAX, False)
    return "set(" + (err if err is not None else fk.format_key_attr(t, a, None, True, None)) + ")"


def _fmt_set_masked(v: memoryview, ports: Mapping[int, str] | None) -> str:
    items, _ = fk.walk_attrs(v)
    if not items:
        return "set()"
    t, a = items[0]
    if t == fk.NSH:
        return _fmt_set_nsh(a)
    size = len(a) // 2
    if size <= 40:
        key, mask = a[:size], a[size : 2 * size]
        err = fk.check_attr_len(t, key, mask, fk.KEY_ATTRS, fk.KEY_ATTR_MAX, False)
        body = err if err is not None else fk.format_key_attr(t, key, mask, False, None)
    else:
        err = fk.check_attr_len(t, a, None, fk.KEY_ATTRS, fk.KEY_ATTR_MAX, False)
        body = err if err is not None else fk.format_key_attr(t, a, None, False, None)
    return "set(" + body + ")"


def _fmt_set_nsh(a: memoryview) -> str:
    base, ctx = bytes(8), bytes(16)
    mbase, mctx = b"\xff" * 8, b"\xff" * 16
    for t, v in fk.walk_attrs(a)[0]:
        if t >= fk.NSH_ATTR_MAX:
            return ""
        exp = fk.attr_len(fk.NSH_ATTRS, fk.NSH_ATTR_MAX, t)
        if exp is not None and exp != VARIABLE and len(v) != 2 * exp:
            return ""
        if t == fk.NSH_BASE:
            base, mbase = bytes(v[:8]), bytes(v[8:16])
        elif t == fk.NSH_MD1:
            ctx, mctx = bytes(v[:16]), bytes(v[16:32])
    return "set(nsh(" + fk.nsh_key_text(base, ctx, (mbase, mctx)) + "))"


def _fmt_push_vlan(v: memoryview, ports: Mapping[int, str] | None) -> str:
    tpid, tci = struct.unpack_from("!HH", v)
    s = "push_vlan(" + (f"tpid=0x{tpid:04x}," if tpid != 0x8100 else "")
    return s + fk.vlan_tci_text(tci, 0xFFFF, False) + ")"


def _fmt_sample(v: memoryview, ports: Mapping[int, str] | None) -> str:
    a = _nested(v, {SAMPLE_PROBABILITY: (4, 4), SAMPLE_ACTIONS: (0, -1)})
    if a is None or SAMPLE_PROBABILITY not in a or SAMPLE_ACTIONS not in a:
        return "sample(error)"
    pct = 100.0 * _u32(a[SAMPLE_PROBABILITY]) / 0xFFFFFFFF
    return f"sample(sample={pct:.1f}%,actions({format_actions(a[SAMPLE_ACTIONS], ports)}))"


def _fmt_hash(v: memoryview, ports: Mapping[int, str] | None) -> str:
    alg, basis = struct.unpack_from("=II", v)
    if alg == HASH_ALG_L4:
        return f"hash(l4({basis}))"
    if alg == HASH_ALG_SYM_L4:
        return f"hash(sym_l4({basis}))"
    return f"hash(Unknown hash algorithm({alg}))"


def _fmt_push_mpls(v: memoryview, ports: Mapping[int, str] | None) -> str:
    lse, eth = struct.unpack_from("!IH", v)
    return f"push_mpls({fk.mpls_lse_text(lse)},eth_type=0x{eth:x})"


def _fmt_add_mpls(v: memoryview, ports: Mapping[int, str] | None) -> str:
    lse, eth = struct.unpack_from("!IH", v)
    return f"add_mpls({fk.mpls_lse_text(lse)},eth_type=0x{eth:x})"


def _ct_nat_text(v: memoryview) -> str:
    a = _nested(v, {NAT_SRC: (0, 0), NAT_DST: (0, 0), NAT_IP_MIN: (4, 16), NAT_IP_MAX: (4, 16),
                    NAT_PROTO_MIN: (2, 2), NAT_PROTO_MAX: (2, 2), NAT_PERSISTENT: (0, 0),
                    NAT_PROTO_HASH: (0, 0), NAT_PROTO_RANDOM: (0, 0)})
    if a is None:
        return "nat(error: nl_parse_nested() failed.)"
    src, dst = NAT_SRC in a, NAT_DST in a
    if not (src or dst) and any(k in a for k in (NAT_IP_MIN, NAT_IP_MAX, NAT_PROTO_MIN, NAT_PROTO_MAX,
                                                  NAT_PERSISTENT, NAT_PROTO_HASH, NAT_PROTO_RANDOM)):
        return 'nat(error: options allowed only with "src" or "dst")'
    if src and dst:
        return 'nat(error: Only one of "src" or "dst" may be present.)'
    if NAT_IP_MIN not in a and NAT_PROTO_MIN in a:
        return "nat(error: proto but no IP.)"
    if (NAT_IP_MIN not in a and NAT_IP_MAX in a) or (NAT_PROTO_MIN not in a and NAT_PROTO_MAX in a):
        return "nat(error: range max without min.)"
    ipmin, ipmax = a.get(NAT_IP_MIN), a.get(NAT_IP_MAX)
    if (ipmin is not None and len(ipmin) not in (4, 16)) or (
            ipmin is not None and ipmax is not None and len(ipmin) != len(ipmax)):
        return "nat(error: IP address sizes do not match)"
    alen = len(ipmin) if ipmin is not None else 0
    pmin = struct.unpack("=H", a[NAT_PROTO_MIN])[0] if NAT_PROTO_MIN in a else 0
    pmax = struct.unpack("=H", a[NAT_PROTO_MAX])[0] if NAT_PROTO_MAX in a else 0
    lo = bytes(ipmin) if ipmin is not None else b""
    hi = bytes(ipmax) if ipmax is not None else bytes(alen)
    if (alen == 4 and any(hi) and lo > hi) or (alen == 16 and any(hi) and lo > hi) or (pmax and pmin > pmax):
        return "nat(range error)"
    s = "nat"
    if src or dst:
        s += "(" + ("src" if src else "dst")
        if alen:
            s += "="
            if alen == 4:
                s += fk.ip4(int.from_bytes(lo, "big"))
                if any(hi) and hi != lo:
                    s += "-" + fk.ip4(int.from_bytes(hi, "big"))
            else:
                s += _bracket(lo, bool(pmin))
                if any(hi) and hi != lo:
                    s += "-" + _bracket(hi, bool(pmin))
            if pmin:
                s += f":{pmin}"
                if pmax and pmax != pmin:
                    s += f"-{pmax}"
        s += ","
        if NAT_PERSISTENT in a:
            s += "persistent,"
        if NAT_PROTO_HASH in a:
            s += "hash,"
        if NAT_PROTO_RANDOM in a:
            s += "random,"
        s = s[:-1] + ")"
    return s


def _bracket(addr: bytes, bracket: bool) -> str:
    return f"[{fk.ip6(addr)}]" if bracket else fk.ip6(addr)


def _fmt_ct(v: memoryview, ports: Mapping[int, str] | None) -> str:
    a = _nested(v, {CT_COMMIT: (0, 0), CT_FORCE_COMMIT: (0, 0), CT_ZONE: (2, 2), CT_MARK: (8, -1),
                    CT_LABELS: (32, -1), CT_HELPER: (1, 16), CT_NAT: (0, -1), CT_TIMEOUT: (1, 32)})
    if a is None or any(t in a and (not len(a[t]) or a[t][-1] != 0) for t in (CT_HELPER, CT_TIMEOUT)):
        return "ct(error)"
    parts = []
    if CT_COMMIT in a:
        parts.append("commit")
    if CT_FORCE_COMMIT in a:
        parts.append("force_commit")
    zone = struct.unpack("=H", a[CT_ZONE])[0] if CT_ZONE in a else 0
    if zone:
        parts.append(f"zone={zone}")
    if CT_MARK in a:
        m, mm = struct.unpack_from("=II", a[CT_MARK])
        parts.append(f"mark={fk.hx(m)}/{fk.hx(mm)}")
    if CT_LABELS in a:
        lab = bytes(a[CT_LABELS])
        text = fk.u128_hex(lab[:16])
        if lab[16:32] != b"\xff" * 16:
            text += "/" + fk.u128_hex(lab[16:32])
        parts.append("label=" + text)
    if CT_HELPER in a:
        parts.append("helper=" + _cstr(a[CT_HELPER]))
    if CT_TIMEOUT in a:
        parts.append("timeout=" + _cstr(a[CT_TIMEOUT]))
    if CT_NAT in a:
        parts.append(_ct_nat_text(a[CT_NAT]))
    busy = zone or any(t in a for t in (CT_COMMIT, CT_FORCE_COMMIT, CT_MARK, CT_LABELS, CT_HELPER,
                                         CT_TIMEOUT, CT_NAT))
    return "ct(" + ",".join(parts) + ")" if busy else "ct"


def _cstr(v: memoryview) -> str:
    return bytes(v).split(b"\0", 1)[0].decode(errors="replace")


def _fmt_push_nsh(v: memoryview, ports: Mapping[int, str] | None) -> str:
    flags, ttl, mdtype, np_, path = 0, 63, 0, 0, 0
    md = b""
    outer = fk.walk_attrs(v)[0]
    for t, a in fk.walk_attrs(outer[0][1])[0] if outer else ():
        if t == fk.NSH_BASE and len(a) == 8:
            flags, ttl, mdtype, np_, path = struct.unpack("!BBBBI", a)
        elif t in (fk.NSH_MD1, fk.NSH_MD2):
            md = bytes(a)
    s = f"push_nsh(flags={flags},ttl={ttl},mdtype={mdtype},np={np_},spi=0x{path >> 8:x},si={path & 255}"
    if mdtype == 1:
        c = struct.unpack("!4I", md.ljust(16, b"\0")[:16])
        s += "".join(f",c{i + 1}=0x{c[i]:x}" for i in range(4))
    elif mdtype == 2:
        s += ",md2=" + fk.put_hex(md)
    else:
        s += ",<error: unknown mdtype>"
    return s + ")"


def _fmt_check_pkt_len(v: memoryview, ports: Mapping[int, str] | None) -> str:
    a = _nested(v, {CPL_PKT_LEN: (2, 2), CPL_IF_GREATER: (0, -1), CPL_IF_LESS_EQUAL: (0, -1)})
    if a is None or CPL_PKT_LEN not in a or CPL_IF_GREATER not in a or CPL_IF_LESS_EQUAL not in a:
        return "check_pkt_len(error)"
    size = struct.unpack("=H", a[CPL_PKT_LEN])[0]
    return (f"check_pkt_len(size={size},gt({format_actions(a[CPL_IF_GREATER], ports)}),"
            f"le({format_actions(a[CPL_IF_LESS_EQUAL], ports)}))")


def _fmt_dec_ttl(v: memoryview, ports: Mapping[int, str] | None) -> str:
    inner = next((a for t, a in fk.walk_attrs(v)[0] if t == DEC_TTL_ACTION), None)
    return "dec_ttl(le_1(" + (format_actions(inner, ports) if inner is not None else "") + "))"


def _fmt_psample(v: memoryview, ports: Mapping[int, str] | None) -> str:
    parts = []
    for t, a in fk.walk_attrs(v)[0]:
        if t == PSAMPLE_GROUP and len(a) == 4:
            parts.append(f"group={_u32(a)}")
        elif t == PSAMPLE_COOKIE:
            parts.append("cookie=" + fk.put_hex(a))
    return "psample(" + ",".join(parts) + ")"


_FORMATTERS = {
    OUTPUT: _fmt_output,
    USERSPACE: _fmt_userspace,
    SET: _fmt_set,
    PUSH_VLAN: _fmt_push_vlan,
    POP_VLAN: lambda v, p: "pop_vlan",
    SAMPLE: _fmt_sample,
    RECIRC: lambda v, p: f"recirc({fk.hx(_u32(v))})",
    HASH: _fmt_hash,
    PUSH_MPLS: _fmt_push_mpls,
    POP_MPLS: lambda v, p: f"pop_mpls(eth_type=0x{struct.unpack('!H', v)[0]:x})",
    SET_MASKED: _fmt_set_masked,
    CT: _fmt_ct,
    TRUNC: lambda v, p: f"trunc({_u32(v)})",
    PUSH_ETH: lambda v, p: f"push_eth(src={fk.mac(v[0:6])},dst={fk.mac(v[6:12])})",
    POP_ETH: lambda v, p: "pop_eth",
    CT_CLEAR: lambda v, p: "ct_clear",
    PUSH_NSH: _fmt_push_nsh,
    POP_NSH: lambda v, p: "pop_nsh()",
    METER: lambda v, p: f"meter({_u32(v)})",
    CLONE: lambda v, p: f"clone({format_actions(v, p)})",
    CHECK_PKT_LEN: _fmt_check_pkt_len,
    ADD_MPLS: _fmt_add_mpls,
    DEC_TTL: _fmt_dec_ttl,
    DROP: lambda v, p: "drop",
    PSAMPLE: _fmt_psample,
    TUNNEL_POP: lambda v, p: f"tnl_pop({fk.port_name(_u32(v), p)})",
    LB_OUTPUT: lambda v, p: f"lb_output({_u32(v)})",
}


# --- parsing -------------------------------------------------------------------------------------------


def parse_actions(text: str, *, port_names: Mapping[str, int] | None = None) -> bytes:
    """odp_actions_from_string -> the OVS_FLOW_ATTR_ACTIONS payload.  Raises ParseError.

    Memoized by text (flows share a handful of action lists), with the port names the parse consulted
    re-checked on a hit."""
    hit = _PARSED.get(text)
    if hit is not None and (not hit[1] or fk.same_answers(hit[1], port_names)):
        return hit[0]
    seen = fk.PortsSeen(port_names)
    data = _parse_actions(text, seen)
    fk.remember(_PARSED, text, (data, seen.answers()))
    return data


_PARSED: dict[str, tuple[bytes, fk.PortAnswers]] = {}


def _parse_actions(text: str, ports: Mapping[str, int]) -> bytes:
    if text.strip().lower() == "drop":
        return b""
    sc = Scanner(text)
    out: list[bytes] = []
    while True:
        sc.skip()
        if sc.i >= len(sc.s):
            return b"".join(out)
        _parse_action(sc, out, ports, 1)
        if sc.i < len(sc.s) and sc.s[sc.i] not in fk.DELIMS:
            raise sc.fail()


def nla(t: int, payload: bytes = b"") -> bytes:
    return fk.nla(t, payload)


def _nest(t: int, payload: bytes) -> bytes:
    """A nested action attribute: OVS's families never set NLA_F_NESTED, so neither do we."""
    return fk.nla(t, payload)


def _action_list(sc: Scanner, ports: Mapping[str, int] | None, depth: int) -> bytes:
    """parse_action_list: actions up to (not including) the closing ')'."""
    out: list[bytes] = []
    while True:
        sc.skip()
        if sc.peek() == ")":
            return b"".join(out)
        if sc.i >= len(sc.s):
            raise sc.fail("unterminated action list")
        _parse_action(sc, out, ports, depth + 1)


def _parse_action(sc: Scanner, out: list[bytes], ports: Mapping[str, int] | None, depth: int) -> None:
    if depth >= 32:
        raise sc.fail("actions nested too deeply")
    s, i = sc.s, sc.i
    c = sc.peek()
    if c.isdigit():
        out.append(nla(OUTPUT, struct.pack("=I", sc.num(32))))
        return
    if sc.take("lb_output("):
        out.append(nla(LB_OUTPUT, struct.pack("=I", sc.dec(32))))
        sc.expect(")")
        return
    if sc.take("trunc("):
        out.append(nla(TRUNC, struct.pack("=I", sc.num(32))))
        sc.expect(")")
        return
    if ports:
        j = i
        while j < len(s) and s[j] not in fk.DELIMS:
            j += 1
        if s[i:j] in ports:
            out.append(nla(OUTPUT, struct.pack("=I", ports[s[i:j]])))
            sc.i = j
            return
    if sc.take("recirc("):
        out.append(nla(RECIRC, struct.pack("=I", sc.num(32))))
        sc.expect(")")
        return
    if sc.take("userspace("):
        out.append(_parse_userspace(sc))
        return
    if sc.take("set("):
        out.append(_parse_set(sc, ports, depth))
        return
    if sc.take("push_vlan("):
        tpid, cfi = 0x8100, 1
        if sc.take("tpid="):
            tpid = sc.num(32)
            sc.expect(",")
        sc.expect("vid=")
        vid = sc.num(32)
        sc.expect(",pcp=")
        pcp = sc.num(32)
        if sc.take(",cfi="):
            cfi = sc.num(32)
        sc.expect(")")
        if vid & ~0xFFF or pcp & ~7:
            raise sc.fail("vlan field out of range")
        tci = vid | (pcp << 13) | (0x1000 if cfi else 0)
        out.append(nla(PUSH_VLAN, struct.pack("!HH", tpid & 0xFFFF, tci)))
        return
    if sc.take("pop_vlan"):
        out.append(nla(POP_VLAN))
        return
    if sc.take("meter("):
        out.append(nla(METER, struct.pack("=I", sc.num(64) & 0xFFFFFFFF)))
        sc.expect(")")
        return
    if sc.take("sample(sample="):
        j = sc.s.find("%", sc.i)
        try:
            pct = float(sc.s[sc.i : j]) if j > sc.i else -1.0
        except ValueError:
            pct = -1.0
        if not 0.0 <= pct <= 100.0:
            raise sc.fail("bad sample percentage")
        sc.i = j + 1
        sc.expect(",actions(")
        prob = math.floor(0xFFFFFFFF * (pct / 100.0) + 0.5)
        prob = 0 if prob <= 0 else min(prob, 0xFFFFFFFF)
        inner = _action_list(sc, ports, depth)
        sc.expect("))")
        out.append(_nest(SAMPLE, nla(SAMPLE_PROBABILITY, struct.pack("=I", prob))
                         + _nest(SAMPLE_ACTIONS, inner)))
        return
    if sc.take("clone("):
        inner = _action_list(sc, ports, depth)
        sc.expect(")")
        out.append(_nest(CLONE, inner))
        return
    if sc.take("push_nsh("):
        out.append(_parse_push_nsh(sc))
        return
    if sc.take("pop_nsh()"):
        out.append(nla(POP_NSH))
        return
    if sc.take("tnl_pop("):
        out.append(nla(TUNNEL_POP, struct.pack("=I", sc.num(32))))
        sc.expect(")")
        return
    if sc.take("ct_clear"):
        out.append(nla(CT_CLEAR))
        return
    if sc.take("check_pkt_len(size="):
        size = sc.num(16)
        sc.expect(",gt(")
        gt = b"" if _take_drop(sc) else _action_list(sc, ports, depth)
        sc.expect("),le(")
        le = b"" if _take_drop(sc) else _action_list(sc, ports, depth)
        sc.expect("))")
        out.append(_nest(CHECK_PKT_LEN, nla(CPL_PKT_LEN, struct.pack("=H", size))
                         + _nest(CPL_IF_GREATER, gt) + _nest(CPL_IF_LESS_EQUAL, le)))
        return
    if sc.take("ct_"):
        sc.i -= 3
        raise sc.fail()
    if sc.take("ct"):
        out.append(_parse_ct(sc))
        return
    for prefix, t in (("add_mpls(", ADD_MPLS), ("push_mpls(", PUSH_MPLS)):
        if sc.take(prefix):
            lse = 0
            for name, bits, shift in (("label=", 20, 12), ("tc=", 3, 9), ("ttl=", 8, 0), ("bos=", 1, 8)):
                sc.expect(name)
                lse |= (sc.num(32) & ((1 << bits) - 1)) << shift
                sc.expect(",")
            sc.expect("eth_type=")
            eth = sc.hexnum(16)
            sc.expect(")")
            out.append(nla(t, struct.pack("!IHH", lse, eth, 0)))
            return
    if sc.take("pop_mpls(eth_type="):
        eth = sc.hexnum(16)
        sc.expect(")")
        out.append(nla(POP_MPLS, struct.pack("!H", eth)))
        return
    if sc.take("hash("):
        alg = HASH_ALG_L4 if sc.take("l4(") else HASH_ALG_SYM_L4 if sc.take("sym_l4(") else -1
        if alg < 0:
            raise sc.fail("unknown hash algorithm")
        basis = sc.dec(32)
        sc.expect("))")
        out.append(nla(HASH, struct.pack("=II", alg, basis)))
        return
    if sc.take("push_eth(src="):
        src = sc.mac()
        sc.expect(",dst=")
        dst = sc.mac()
        sc.expect(")")
        out.append(nla(PUSH_ETH, src + dst))
        return
    if sc.take("pop_eth"):
        out.append(nla(POP_ETH))
        return
    if sc.take("dec_ttl(le_1("):
        inner = b"" if _take_drop(sc) else _action_list(sc, ports, depth)
        sc.expect("))")
        out.append(_nest(DEC_TTL, _nest(DEC_TTL_ACTION, inner)))
        return
    if sc.take("psample("):
        group: int | None = None
        cookie = b""
        while not sc.take(")"):
            sc.skip()
            if group is None and sc.take("group="):
                group = sc.num(32)
            elif not cookie and sc.take("cookie="):
                h = sc.hexnum(128)
                cookie = h.to_bytes(max(1, (h.bit_length() + 7) // 8), "big")
            else:
                raise sc.fail()
        if group is None:
            raise sc.fail("psample needs a group")
        body = nla(PSAMPLE_GROUP, struct.pack("=I", group))
        out.append(_nest(PSAMPLE, body + (nla(PSAMPLE_COOKIE, cookie) if cookie else b"")))
        return
    if sc.take("drop"):
        out.append(nla(DROP, struct.pack("=I", 0)))
        return
    raise sc.fail()


def _take_drop(sc: Scanner) -> bool:
    if sc.s[sc.i : sc.i + 4].lower() == "drop":
        sc.i += 4
        return True
    return False


def _parse_set(sc: Scanner, ports: Mapping[str, int] | None, depth: int) -> bytes:
    kb = fk.KeyBuilder(True)
    fk.parse_key_attr(sc, kb, ports, depth + 1)
    sc.expect(")")
    key = kb.key[0]
    assert kb.mask is not None
    mask = kb.mask[0]
    kt = fk.NLA_HDR.unpack_from(key)[1]
    kpay = key[4 : fk.NLA_HDR.unpack_from(key)[0]]
    mpay = mask[4 : fk.NLA_HDR.unpack_from(mask)[0]]
    if len(kpay) == len(mpay) and mpay != b"\xff" * len(mpay):
        return _nest(SET_MASKED, fk.nla(kt, kpay + mpay))
    return _nest(SET, key)


def _parse_userspace(sc: Scanner) -> bytes:
    sc.expect("pid=")
    pid = sc.num(32)
    cookie = bytearray(COOKIE_SIZE)  # the default userdata: an all-zero (UNSPEC) cookie, as OVS sends it
    userdata: bytes = bytes(cookie)

    def head(ctype: int) -> None:
        struct.pack_into("=HHI", cookie, 0, ctype, 0, OFPP_NONE)

    if sc.take(",sFlow(vid="):
        vid = sc.num(32)
        sc.expect(",pcp=")
        pcp = sc.num(32)
        sc.expect(",output=")
        output = sc.num(32)
        sc.expect(")")
        tci = (vid | (pcp << 13)) & 0xFFFF
        if tci:
            tci |= 0x1000
        head(COOKIE_SFLOW)
        struct.pack_into("!H", cookie, 24, tci)
        struct.pack_into("=I", cookie, 28, output)
        userdata = bytes(cookie)
    elif sc.take(",slow_path("):
        # OVS prints the reasons ','-separated but reads only '|': accept both
        j = sc.s.find(")", sc.i)
        sub = Scanner(sc.s[sc.i : j if j >= 0 else len(sc.s)].replace(",", "|") + ")")
        reason, _ = fk.scan_flags(sub, _SLOW_PATH_NAMES, 0x7F, ")", False)
        sc.i += sub.i
        sc.expect(")")
        head(COOKIE_SLOW_PATH)
        struct.pack_into("=I", cookie, 28, reason)
        userdata = bytes(cookie)
    elif sc.take(",flow_sample(probability="):
        prob = sc.num(32)
        vals = []
        for name in (",collector_set_id=", ",obs_domain_id=", ",obs_point_id=", ",output_port="):
            sc.expect(name)
            vals.append(sc.num(32))
        direction = 1 if sc.take(",ingress") else 2 if sc.take(",egress") else 0
        sc.expect(")")
        head(COOKIE_FLOW_SAMPLE)
        struct.pack_into("=H", cookie, 24, prob & 0xFFFF)
        struct.pack_into("=5I", cookie, 28, *vals, direction)
        userdata = bytes(cookie)
    elif sc.take(",ipfix(output_port="):
        port = sc.num(32)
        sc.expect(")")
        head(COOKIE_IPFIX)
        struct.pack_into("=I", cookie, 24, port)
        userdata = bytes(cookie)
    elif sc.take(",controller(reason="):
        reason = sc.dec(16)
        sc.expect(",dont_send=")
        dont_send = sc.dec(8)
        sc.expect(",continuation=")
        cont = sc.dec(8)
        sc.expect(",recirc_id=")
        recirc = sc.dec(32)
        sc.expect(",rule_cookie=")
        rule_cookie = sc.hexnum(64)
        sc.expect(",controller_id=")
        cid = sc.dec(16)
        sc.expect(",max_len=")
        max_len = sc.dec(16)
        sc.expect(")")
        head(COOKIE_CONTROLLER)
        struct.pack_into("=BBHI", cookie, 24, 1 if dont_send else 0, 1 if cont else 0, reason, recirc)
        struct.pack_into("!Q", cookie, 32, rule_cookie)
        struct.pack_into("=HH", cookie, 40, cid, max_len)
        userdata = bytes(cookie)
    elif sc.take(",userdata("):
        j = sc.i
        while j < len(sc.s) and sc.s[j] in "0123456789abcdefABCDEF":
            j += 1
        digits = sc.s[sc.i : j]
        if len(digits) % 2:
            raise sc.fail("odd number of hex digits")
        userdata = bytes.fromhex(digits)
        sc.i = j
        sc.expect(")")
    include_actions = sc.take(",actions")
    tun_port = None
    if sc.take(",tunnel_out_port="):
        tun_port = sc.num(32)
    sc.expect(")")
    body = nla(US_PID, struct.pack("=I", pid))
    body += nla(US_USERDATA, userdata.ljust(8, b"\0"))
    if tun_port is not None:
        body += nla(US_EGRESS_TUN_PORT, struct.pack("=I", tun_port))
    if include_actions:
        body += nla(US_ACTIONS)
    return _nest(USERSPACE, body)


def _parse_ct(sc: Scanner) -> bytes:
    commit = force = False
    zone = 0
    mark: tuple[int, int] | None = None
    label: tuple[bytes, bytes] | None = None
    helper = timeout = None
    nat: bytes | None = None
    if sc.take("("):
        while not sc.take(")"):
            sc.skip(fk.DELIMS.replace(")", ""))
            if sc.take(")"):
                break
            if sc.take("commit"):
                commit = True
            elif sc.take("force_commit"):
                force = True
            elif sc.take("zone="):
                zone = sc.dec(16)
            elif sc.take("mark="):
                mv = sc.hexnum(32)
                mark = (mv, sc.hexnum(32) if sc.take("/") else 0xFFFFFFFF)
            elif sc.take("label="):
                lv = sc.int_string(16)
                lm = sc.int_string(16) if sc.take("/") else b"\xff" * 16
                label = (lv, lm)
            elif sc.take("helper="):
                helper = _word(sc, 15)
            elif sc.take("timeout="):
                timeout = _word(sc, 31)
            elif sc.take("nat"):
                nat = _parse_nat(sc)
            else:
                raise sc.fail()
    if commit and force:
        raise sc.fail("commit and force_commit are exclusive")
    body = b""
    if commit:
        body += nla(CT_COMMIT)
    elif force:
        body += nla(CT_FORCE_COMMIT)
    if zone:
        body += nla(CT_ZONE, struct.pack("=H", zone))
    if mark is not None and mark[1]:
        body += nla(CT_MARK, struct.pack("=II", *mark))
    if label is not None and any(label[1]):
        body += nla(CT_LABELS, label[0][::-1] + label[1][::-1])
    if helper is not None:
        body += nla(CT_HELPER, helper.encode() + b"\0")
    if timeout is not None:
        body += nla(CT_TIMEOUT, timeout.encode() + b"\0")
    if nat is not None:
        body += nat
    return _nest(CT, body)


def _word(sc: Scanner, max_len: int) -> str:
    j = sc.i
    while j < len(sc.s) and sc.s[j] not in fk.DELIMS + ")":
        j += 1
    w = sc.s[sc.i : j]
    if not w or len(w) > max_len:
        raise sc.fail("bad name length")
    sc.i = j
    return w


def _parse_nat(sc: Scanner) -> bytes:
    src = dst = persistent = phash = prandom = False
    amin = amax = b""
    pmin = pmax = 0
    if sc.take("("):
        while not sc.take(")"):
            sc.skip()
            if sc.take(")"):
                break
            if sc.take("src") or sc.take("dst"):
                if sc.s[sc.i - 3 : sc.i] == "src":
                    src = True
                else:
                    dst = True
                if sc.take("="):
                    amin, amax, pmin, pmax = _nat_range(sc)
            elif sc.take("persistent"):
                persistent = True
            elif sc.take("hash"):
                phash = True
            elif sc.take("random"):
                prandom = True
            else:
                raise sc.fail()
        if src and dst:
            raise sc.fail("nat: only one of src or dst")
        if (amin and any(amax) and amax < amin) or (pmax and pmax < pmin):
            raise sc.fail("nat: bad range")
        if phash and prandom:
            raise sc.fail("nat: hash and random are exclusive")
    body = b""
    if src or dst:
        body += nla(NAT_SRC if src else NAT_DST)
        if amin:
            body += nla(NAT_IP_MIN, amin)
            if amax and amax > amin:
                body += nla(NAT_IP_MAX, amax)
            if pmin:
                body += nla(NAT_PROTO_MIN, struct.pack("=H", pmin))
                if pmax and pmax > pmin:
                    body += nla(NAT_PROTO_MAX, struct.pack("=H", pmax))
            flags = ((persistent, NAT_PERSISTENT), (phash, NAT_PROTO_HASH), (prandom, NAT_PROTO_RANDOM))
            for flag, t in flags:
                if flag:
                    body += nla(t)
    return _nest(CT_NAT, body)


def _nat_addr(sc: Scanner) -> bytes:
    if fk.IP4_RE.match(sc.s, sc.i):
        return sc.ip4().to_bytes(4, "big")
    if sc.take("["):
        a = sc.ip6()
        sc.expect("]")
        return a
    return sc.ip6()


def _nat_range(sc: Scanner) -> tuple[bytes, bytes, int, int]:
    amin = _nat_addr(sc)
    amax = _nat_addr(sc) if sc.take("-") else bytes(len(amin))
    if len(amax) != len(amin):
        raise sc.fail("nat: address families differ")
    pmin = pmax = 0
    if sc.take(":"):
        pmin = sc.dec(16)
        if sc.take("-"):
            pmax = sc.dec(16)
    return amin, amax, pmin, pmax


def _parse_push_nsh(sc: Scanner) -> bytes:
    flags, ttl, mdtype, np_, spi, si = 0, 63, 1, 3, 0, 255
    ctx = [0, 0, 0, 0]
    md2 = b""
    while True:
        sc.skip()
        if sc.take(")"):
            break
        if sc.take("flags="):
            flags = sc.num(8)
        elif sc.take("ttl="):
            ttl = sc.num(8)
        elif sc.take("mdtype="):
            mdtype = sc.num(8)
            if mdtype not in (1, 2):
                raise sc.fail("bad NSH mdtype")
        elif sc.take("np="):
            np_ = sc.num(8)
        elif sc.take("spi=0x"):
            spi = sc.hexnum(32)
        elif sc.take("si="):
            si = sc.num(8)
        elif mdtype == 1 and any(sc.startswith(f"c{i}=0x") for i in range(1, 5)):
            i = int(sc.s[sc.i + 1]) - 1
            sc.i += 5
            ctx[i] = sc.hexnum(32)
        elif mdtype == 2 and sc.take("md2=0x"):
            j = sc.i
            while j < len(sc.s) and sc.s[j] in "0123456789abcdefABCDEF":
                j += 1
            digits = sc.s[sc.i : j]
            sc.i = j
            md2 = bytes.fromhex(digits if len(digits) % 2 == 0 else "0" + digits)
            md2 += bytes(-len(md2) % 4)
        else:
            raise sc.fail()
    path = ((spi & 0xFFFFFF) << 8) | (si & 0xFF)
    body = fk.nla(fk.NSH_BASE, struct.pack("!BBBBI", flags, ttl, mdtype, np_, path))
    if mdtype == 1:
        body += fk.nla(fk.NSH_MD1, struct.pack("!4I", *ctx))
    elif md2:
        body += fk.nla(fk.NSH_MD2, md2)
    return _nest(PUSH_NSH, _nest(fk.NSH, body))


__all__ = ["ACTIONS", "Action", "ActionSpec", "ParseError", "decode_actions", "encode_actions",
           "format_actions", "parse_actions"]
