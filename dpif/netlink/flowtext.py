"""A whole datapath flow as one ovs-dpctl line: `[ufid:U, ]KEY/MASK, STATS, actions:ACTIONS`.

`format_flow` is OVS's `format_dpif_flow` (lib/dpctl.c) plus `dpif_flow_stats_format` (lib/dpif.c);
`parse_flow` reads what `ovs-dpctl add-flow(s)` reads (and what `format_flow` prints), so a flow added
by `dpfreeze dpctl` reads back identical through ovs-dpctl.  The "used" age depends on the caller's
monotonic clock, so it is a parameter: the codec stays pure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from dpif.model import FlowStats
from dpif.netlink import actions as act
from dpif.netlink import flowkey as fk
from dpif.netlink.flowkey import ParseError

# packet_format_tcp_flags: letters in OVS's order, not bit order
TCP_LETTERS = ((0x002, "S"), (0x001, "F"), (0x008, "P"), (0x004, "R"), (0x020, "U"), (0x010, "."),
                (0x040, "E"), (0x080, "C"), (0x100, "N"), (0x200, "[200]"), (0x400, "[400]"),
                (0x800, "[800]"))


@lru_cache(maxsize=1 << 12)  # a dump prints the same few flag combinations over and over
def tcp_flags_letters(flags: int) -> str:
    if not flags:
        return "none"
    return "".join(letter for bit, letter in TCP_LETTERS if flags & bit)


def format_stats(stats: FlowStats | None, now_ms: int) -> str:
    """dpif_flow_stats_format: `packets:N, bytes:N, used:X.XXXs|never[, flags:...]`."""
    st = stats or FlowStats()
    s = f"packets:{st.packets}, bytes:{st.bytes}, used:"
    s += f"{(now_ms - st.used_ms) / 1000.0:.3f}s" if st.used_ms else "never"
    if st.tcp_flags:
        s += ", flags:" + tcp_flags_letters(st.tcp_flags)
    return s


def format_flow(key: bytes | memoryview, mask: bytes | memoryview | None, actions: bytes | memoryview | None,
                ufid: bytes | None = None, stats: FlowStats | None = None, *, now_ms: int = 0,
                verbose: bool = False, port_names: Mapping[int, str] | None = None,
                dp_layer: str | None = "ovs") -> str:
    """The exact line `ovs-dpctl dump-flows` (or `-m` when verbose) prints for this flow.

    ovs-dpctl shows port names only when verbose unless --names is given: pass `port_names` to match.
    Verbose lines also name the datapath layer (", dp:ovs" for kernel and userspace flows alike).
    """
    head = fk.ufid_text(ufid) + ", " if verbose and ufid else ""
    tail = f", dp:{dp_layer}" if verbose and dp_layer else ""
    return (head + fk.format_key(key, mask, verbose=verbose, port_names=port_names) + ", "
            + format_stats(stats, now_ms) + tail + ", actions:" + act.format_actions(actions, port_names))


_STATS_RE = re.compile(r"packets:(\d+), bytes:(\d+), used:(never|[\d.]+s)(?:, flags:(\S+))?")
_TCP_BITS = {letter: bit for bit, letter in TCP_LETTERS}


def parse_stats(text: str, now_ms: int) -> FlowStats:
    """format_stats read back (`used` is an age from `now_ms`); a line without stats reads as none."""
    m = _STATS_RE.search(text)
    if m is None:
        return FlowStats()
    used = 0 if m.group(3) == "never" else max(1, now_ms - round(float(m.group(3)[:-1]) * 1000))
    flags = 0
    if m.group(4) and m.group(4) != "none":
        for letter in re.findall(r"\[\d+\]|.", m.group(4)):
            flags |= _TCP_BITS.get(letter, 0)
    return FlowStats(int(m.group(1)), int(m.group(2)), used, flags)


@dataclass(frozen=True)
class ParsedFlow:
    """A flow line read back: raw payloads ready for OVS_FLOW_CMD_NEW."""

    key: bytes
    mask: bytes
    actions: bytes
    ufid: bytes | None = None


def split_flow(text: str) -> tuple[str, str]:
    """(key text, actions text) of a dump-flows line (`KEY, stats, actions:A`) or of an add-flows line
    (`[add|modify] KEY ACTIONS`, the key being the first whitespace-free word, as dpctl splits it)."""
    line = text.strip()
    i = line.find("actions:")
    if i >= 0:
        key = line[:i]
        j = key.find(" packets:")
        if j >= 0:
            key = key[:j]
        return key.strip().rstrip(","), line[i + len("actions:") :].strip()
    words = line.split(None, 1)
    if words and words[0] in ("add", "modify"):
        words = words[1].split(None, 1) if len(words) > 1 else []
    if len(words) != 2:
        raise ParseError(line, len(line), "missing actions")
    return words[0], words[1].strip()


def parse_flow(text: str, *, port_names: Mapping[str, int] | None = None) -> ParsedFlow:
    """Parse one flow line into (key, mask, actions[, ufid]).  Raises ParseError with one clear line."""
    key_text, actions_text = split_flow(text)
    ufid = None
    stripped = key_text.lstrip()
    if stripped.startswith("ufid:"):
        sc = fk.Scanner(stripped, 5)
        ufid = fk.scan_ufid(sc)
        key_text = stripped[sc.i :].lstrip(", ")
    key, mask = fk.parse_key(key_text, port_names=port_names)
    assert mask is not None
    return ParsedFlow(key, mask, act.parse_actions(actions_text, port_names=port_names), ufid)


def strip_stats(line: str) -> str:
    """A dump-flows line without its volatile stats (and -m's dp:) part, for comparisons."""
    i = line.find(", packets:")
    j = line.find(", actions:")
    if i < 0 or j < 0:
        return line
    return line[:i] + line[j:]


__all__ = ["ParseError", "ParsedFlow", "format_flow", "format_stats", "parse_flow", "parse_stats",
           "split_flow", "strip_stats"]


def flow_line(raw: str) -> tuple[str, str, str | None] | None:
    """One line of a flow file: (command, flow, actions), None for a blank line or a comment."""
    line = raw.split("#", 1)[0].strip()
    if not line:
        return None
    word, _, rest = line.partition(" ")
    command = {"add": "add", "delete": "del", "modify": "mod"}.get(word.split(",")[0])
    if command is None or word != word.split(",")[0]:
        command, rest = "", line
    flow, _, actions = rest.strip().partition(" ")
    return command, flow, actions.strip() or None
