"""ovs-dpctl's action text to action bytes (`odp_actions_from_string`, plus the forms OVS prints but
3.1 cannot read back)."""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping

from dpif.netlink import flowkey as fk
from dpif.netlink.actions.codec import decode_actions, encode_actions
from dpif.netlink.actions.formatter import (
    _SLOW_PATH_NAMES,
    COOKIE_CONTROLLER,
    COOKIE_FLOW_SAMPLE,
    COOKIE_IPFIX,
    COOKIE_SFLOW,
    COOKIE_SIZE,
    COOKIE_SLOW_PATH,
    OFPP_NONE,
    format_actions,
)
from dpif.netlink.actions.tables import (
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
    Action,
    ActionSpec,
)
from dpif.netlink.flowkey import ParseError, Scanner
from dpif.netlink.wire import NLA_HDR

# --- parsing -------------------------------------------------------------------------------------------


def parse_actions(text: str, *, port_names: Mapping[str, int] | None = None) -> bytes:
    """odp_actions_from_string -> the OVS_FLOW_ATTR_ACTIONS payload.  Raises ParseError.

    Memoized by text (flows share a handful of action lists), with the port names the parse consulted
    re-checked on a hit."""
    hit = PARSED.get(text)
    if hit is not None and (not hit[1] or fk.same_answers(hit[1], port_names)):
        return hit[0]
    seen = fk.PortsSeen(port_names)
    data = _parse_actions(text, seen)
    fk.remember(PARSED, text, (data, seen.answers()))
    return data


PARSED: dict[str, tuple[bytes, fk.PortAnswers]] = {}


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
    kt = NLA_HDR.unpack_from(key)[1]
    kpay = key[4 : NLA_HDR.unpack_from(key)[0]]
    mpay = mask[4 : NLA_HDR.unpack_from(mask)[0]]
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
