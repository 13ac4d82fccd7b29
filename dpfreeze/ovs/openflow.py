"""OpenFlow state per bridge, saved and restored through ovs-ofctl.

ovs-vswitchd keeps flows, groups, meters, the Geneve TLV map and port-mod flags (no-flood, ...) only in
memory: a restart loses them unless a controller re-programs them.  `ovs-save` (what `ovs-ctl restart` uses)
saves flows, groups and the TLV map, but not meters nor port-mod flags; this module saves all of them.

Restore order follows the references: TLV map (matches use tun_metadataN), meters and groups (flows point to
them), then all flows in one bundle (`replace-flows --bundle`: the table switches atomically), then port
flags.  Every step compares with what the bridge already has, so restoring twice changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from dpfreeze import command
from dpfreeze.command import CommandFailed
from dpfreeze.errors import DpfreezeError, ungrouped
from dpfreeze.ovs import ovsdb
from dpfreeze.ovs.ovsenv import OvsEnv

DEFAULT_TIMEOUT = 10.0

# OpenFlow 1.0 port config bits (only OF1.0 has NO_FLOOD) and the mod-port words that set them.
PORT_FLAGS: dict[str, str] = {
    "NO_STP": "stp",
    "NO_RECV": "receive",
    "NO_RECV_STP": "receive-stp",
    "NO_FLOOD": "flood",
    "NO_FWD": "forward",
    "NO_PACKET_IN": "packet-in",
}

_METER_ID = re.compile(r"^meter=(\d+)\b")
_GROUP_ID = re.compile(r"^group_id=(\d+)\b")
_PORT_LINE = re.compile(r"^\s*(\w+)\((.+)\): addr:")
_TLV_LINE = re.compile(r"^\s*(0x[0-9a-f]+)\s+(\d+)\s+(\d+)\s+(tun_metadata\d+)\s*$")


class OpenFlowError(DpfreezeError):
    """ovs-ofctl or ovs-vsctl failed; the message is its last error line."""


@dataclass(frozen=True)
class BridgeOpenFlow:
    """One bridge's OpenFlow state, as ovs-ofctl text (the syntax its add-* commands read back)."""

    bridge: str
    version: str  # OpenFlow version used to dump and restore, e.g. "OpenFlow15"
    flows: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    meters: tuple[str, ...] = ()
    tlv_map: tuple[str, ...] = ()  # "{class=0xffff,type=0,len=4}->tun_metadata0"
    port_flags: dict[str, tuple[str, ...]] = field(default_factory=dict)  # port name -> NO_* flags set

    def to_json(self) -> dict[str, Any]:
        return {
            "bridge": self.bridge,
            "version": self.version,
            "flows": list(self.flows),
            "groups": list(self.groups),
            "meters": list(self.meters),
            "tlv_map": list(self.tlv_map),
            "port_flags": {k: list(v) for k, v in sorted(self.port_flags.items())},
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BridgeOpenFlow:
        return cls(
            bridge=str(d["bridge"]),
            version=str(d["version"]),
            flows=tuple(map(str, d["flows"])),
            groups=tuple(map(str, d["groups"])),
            meters=tuple(map(str, d["meters"])),
            tlv_map=tuple(map(str, d["tlv_map"])),
            port_flags={str(k): tuple(map(str, v)) for k, v in d["port_flags"].items()},
        )

    def describe(self) -> str:
        flagged = ", ".join(f"{p}:{'|'.join(f)}" for p, f in sorted(self.port_flags.items()) if f) or "-"
        return (f"{self.bridge} ({self.version}): {len(self.flows)} flows, {len(self.groups)} groups, "
                f"{len(self.meters)} meters, {len(self.tlv_map)} TLV mappings, port flags {flagged}")


async def _run(argv: Sequence[str], env: OvsEnv | None, *, stdin: bytes = b"",
               timeout: float = DEFAULT_TIMEOUT) -> str:
    try:
        done = await command.run(argv, timeout=timeout, env=env.environ() if env else None, stdin=stdin)
    except CommandFailed as exc:
        raise OpenFlowError(str(exc)) from None
    return done.text


def _ofctl(version: str, *args: str) -> list[str]:
    return ["ovs-ofctl", "-O", version, *args]


def parse_flows(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.startswith(" ") and line.strip()]


def parse_groups(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("group_id=")]


def parse_meters(text: str) -> list[str]:
    """dump-meters prints each meter over several lines (bands one per line): join them into one."""
    meters: list[str] = []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("meter="):
            meters.append(s)
        elif s.startswith("type=") and meters:
            meters[-1] += ("" if meters[-1].endswith("=") else " ") + s
    return meters


def parse_tlv_map(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        m = _TLV_LINE.match(line)
        if m:
            cls, typ, length, fieldname = m.groups()
            out.append(f"{{class={cls},type={typ},len={length}}}->{fieldname}")
    return out


def parse_port_flags(text: str) -> dict[str, tuple[str, ...]]:
    flags: dict[str, tuple[str, ...]] = {}
    port: str | None = None
    for line in text.splitlines():
        m = _PORT_LINE.match(line)
        if m:
            port = m.group(2)
            flags[port] = ()
        elif port is not None and line.strip().startswith("config:"):
            flags[port] = tuple(sorted(w for w in line.split()[1:] if w in PORT_FLAGS))
    return flags


def _numbered(lines: Sequence[str], pattern: re.Pattern[str]) -> tuple[str, ...]:
    """Sorted by id: OVS dumps meters in hash order, and a snapshot must compare equal to itself."""
    return tuple(sorted(lines, key=lambda line: int(m.group(1)) if (m := pattern.match(line)) else -1))


async def _protocols(bridge: str, env: OvsEnv | None, timeout: float) -> list[str]:
    try:
        bridges = await ovsdb.bridge_protocols(env, timeout)
    except ovsdb.OvsdbError as exc:
        raise OpenFlowError(str(exc)) from None
    if bridge not in bridges:
        raise OpenFlowError(f"no bridge named {bridge}")
    return bridges[bridge]


PARTS = frozenset({"flows", "groups", "meters", "tlv_map", "port_flags"})


async def save_bridge(bridge: str, env: OvsEnv | None = None, timeout: float = DEFAULT_TIMEOUT,
                      protos: Sequence[str] | None = None, parts: Collection[str] = PARTS) -> BridgeOpenFlow:
    """The bridge's OpenFlow state, read with the newest OpenFlow version it speaks (`protos`, its
    Bridge:protocols, is read from OVSDB when not given); only `parts` of it (the rest left empty)."""
    if protos is None:
        protos = await _protocols(bridge, env, timeout)
    version = protos[-1] if protos else "OpenFlow15"  # the newest, as ovs-save picks
    of10 = not protos or "OpenFlow10" in protos  # port-mod flags such as no-flood exist only in OF1.0
    # Groups need OpenFlow 1.1 and meters 1.3: a bridge limited to older versions cannot have them.

    dumps = {"flows": (version, "dump-flows", "--no-names", "--no-stats"),
             "tlv_map": (version, "dump-tlv-map")}
    if version >= "OpenFlow11":
        dumps["groups"] = (version, "dump-groups")
    if version >= "OpenFlow13":
        dumps["meters"] = (version, "dump-meters")
    if of10:
        dumps["port_flags"] = ("OpenFlow10", "dump-ports-desc")
    dumps = {k: v for k, v in dumps.items() if k in parts}
    out = dict.fromkeys(PARTS, "")

    async def dump(what: str, ver: str, *args: str) -> None:
        out[what] = await _run(_ofctl(ver, *args, bridge), env, timeout=timeout)

    with ungrouped():
        async with trio.open_nursery() as nursery:  # side by side: each is a process start and a round trip
            for what, (ver, *args) in dumps.items():
                nursery.start_soon(dump, what, ver, *args)
    return BridgeOpenFlow(
        bridge,
        version,
        flows=tuple(sorted(parse_flows(out["flows"]))),
        groups=_numbered(parse_groups(out["groups"]), _GROUP_ID),
        meters=_numbered(parse_meters(out["meters"]), _METER_ID),
        tlv_map=tuple(parse_tlv_map(out["tlv_map"])),
        port_flags=parse_port_flags(out["port_flags"]),
    )


async def save_all(env: OvsEnv | None = None, timeout: float = DEFAULT_TIMEOUT) -> list[BridgeOpenFlow]:
    try:
        bridges = await ovsdb.bridge_protocols(env, timeout)
    except ovsdb.OvsdbError as exc:
        raise OpenFlowError(str(exc)) from None
    saved: dict[str, BridgeOpenFlow] = {}

    async def save(br: str, protos: list[str]) -> None:
        saved[br] = await save_bridge(br, env, timeout, protos)

    with ungrouped():
        async with trio.open_nursery() as nursery:
            for br, protos in bridges.items():
                nursery.start_soon(save, br, protos)
    return [saved[br] for br in bridges]


def _by_id(lines: Sequence[str], pattern: re.Pattern[str]) -> dict[int, str]:
    out = {}
    for line in lines:
        m = pattern.match(line)
        if m:
            out[int(m.group(1))] = line
    return out


async def restore_bridge(state: BridgeOpenFlow, env: OvsEnv | None = None,
                         timeout: float = DEFAULT_TIMEOUT) -> list[str]:
    """Make the bridge's OpenFlow state equal to `state`; returns what it did, one line per change.

    Runs while new flows wait (the daemon holds flow-restore-wait), so it reads no more than it compares,
    with the versions `state` was read with (no OVSDB session): the TLV map, meters and groups only where
    `state` has them (extra ones are never removed), before the flows that use them.  The flows are not
    read: `replace-flows` compares them itself and sends only the difference, in one bundle, always
    reported; the port flags are read beside it."""
    br, ver = state.bridge, state.version
    parts = {k for k in ("groups", "meters", "tlv_map") if getattr(state, k)}
    current = await save_bridge(br, env, timeout, [ver], parts) if parts else BridgeOpenFlow(br, ver)
    done: list[str] = []
    missing_tlv = [m for m in state.tlv_map if m not in current.tlv_map]
    if missing_tlv:
        await _run(_ofctl(ver, "add-tlv-map", br, ",".join(missing_tlv)), env, timeout=timeout)
        done.append(f"{br}: tlv-map +{len(missing_tlv)}")
    have_meters = _by_id(current.meters, _METER_ID)
    for mid, line in _by_id(state.meters, _METER_ID).items():
        if mid not in have_meters:
            await _run(_ofctl(ver, "add-meter", br, line), env, timeout=timeout)
            done.append(f"{br}: add meter {mid}")
        elif have_meters[mid] != line:
            await _run(_ofctl(ver, "mod-meter", br, line), env, timeout=timeout)
            done.append(f"{br}: mod meter {mid}")
    have_groups = _by_id(current.groups, _GROUP_ID)
    for gid, line in _by_id(state.groups, _GROUP_ID).items():
        if have_groups.get(gid) != line:
            await _run(_ofctl(ver, "--may-create", "mod-group", br, line), env, timeout=timeout)
            done.append(f"{br}: set group {gid}")
    bundle = ["--bundle"] if ver >= "OpenFlow14" else []

    async def replace_flows() -> None:
        flows = ("\n".join(state.flows) + "\n").encode()
        await _run(_ofctl(ver, *bundle, "replace-flows", br, "-"), env, stdin=flows, timeout=timeout)

    async def read_port_flags() -> None:
        nonlocal current
        if state.port_flags:  # only OpenFlow 1.0 has them
            current = await save_bridge(br, env, timeout, ["OpenFlow10", ver], {"port_flags"})

    with ungrouped():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(replace_flows)
            nursery.start_soon(read_port_flags)
    done.append(f"{br}: replace-flows ({len(state.flows)} flows{', one bundle' if bundle else ''})")
    for port, flags in sorted(state.port_flags.items()):
        if port not in current.port_flags:
            continue  # the port is gone: nothing to set flags on (reported by the snapshot diff)
        have = set(current.port_flags[port])
        for flag, word in PORT_FLAGS.items():
            want = flag in flags
            if want != (flag in have):
                action = f"no-{word}" if want else word
                await _run(_ofctl("OpenFlow10", "mod-port", br, port, action), env, timeout=timeout)
                done.append(f"{br}: port {port} {action}")
    return done


__all__ = [
    "BridgeOpenFlow",
    "OpenFlowError",
    "parse_flows",
    "parse_groups",
    "parse_meters",
    "parse_port_flags",
    "parse_tlv_map",
    "restore_bridge",
    "save_all",
    "save_bridge",
]
