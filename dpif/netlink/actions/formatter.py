"""Datapath actions as ovs-dpctl prints them (OVS `format_odp_actions`, byte for byte)."""

from __future__ import annotations

import struct
from collections.abc import Mapping

from dpif.netlink import flowkey as fk
from dpif.netlink.actions.tables import (
    ACTION_MAX,
    ACTIONS,
    ADD_MPLS,
    CHECK_PKT_LEN,
    CLONE,
    CPL_IF_GREATER,
    CPL_IF_LESS_EQUAL,
    CPL_PKT_LEN,
    CT,
    CT_CLEAR,
    CT_COMMIT,
    CT_FORCE_COMMIT,
    CT_HELPER,
    CT_LABELS,
    CT_MARK,
    CT_NAT,
    CT_TIMEOUT,
    CT_ZONE,
    DEC_TTL,
    DEC_TTL_ACTION,
    DROP,
    HASH,
    HASH_ALG_L4,
    HASH_ALG_SYM_L4,
    LB_OUTPUT,
    METER,
    NAT_DST,
    NAT_IP_MAX,
    NAT_IP_MIN,
    NAT_PERSISTENT,
    NAT_PROTO_HASH,
    NAT_PROTO_MAX,
    NAT_PROTO_MIN,
    NAT_PROTO_RANDOM,
    NAT_SRC,
    OUTPUT,
    POP_ETH,
    POP_MPLS,
    POP_NSH,
    POP_VLAN,
    PSAMPLE,
    PSAMPLE_COOKIE,
    PSAMPLE_GROUP,
    PUSH_ETH,
    PUSH_MPLS,
    PUSH_NSH,
    PUSH_VLAN,
    RECIRC,
    SAMPLE,
    SAMPLE_ACTIONS,
    SAMPLE_PROBABILITY,
    SET,
    SET_MASKED,
    TRUNC,
    TUNNEL_POP,
    US_ACTIONS,
    US_EGRESS_TUN_PORT,
    US_PID,
    US_USERDATA,
    USERSPACE,
    VARIABLE,
)
from dpif.netlink.wire import NLA_HDR, NLA_TYPE_MASK, align4

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
        ln, t = NLA_HDR.unpack_from(mv, off)
        if ln < 4 or ln > end - off:
            return None
        t &= NLA_TYPE_MASK
        p = mv[off + 4 : off + ln]
        if t in policy:
            lo, hi = policy[t]
            if len(p) < lo or (hi >= 0 and len(p) > hi):
                return None
            found[t] = p
        off += align4(ln)
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
