"""Fuzz targets: every decoder that takes bytes from outside, each with the one error it may raise.

A target takes bytes and returns nothing; raising one of its `allowed` errors is a refusal (fine), and
anything else — another exception, a hang, a crash — is a bug.  `fuzz/run.py` drives them with atheris
(coverage-guided); `tests/test_fuzz.py` replays the corpus and runs each briefly in CI.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from dpfreeze.freeze import control
from dpfreeze.freeze.machine import StateFileError, decode_state
from dpfreeze.snapshot import FORMAT_VERSION, MAGIC, Snapshot, SnapshotError, checksum
from dpif import unixctl
from dpif.netlink import actions as act
from dpif.netlink import flowkey as fk
from dpif.netlink import flowtext
from dpif.netlink import messages as m
from dpif.netlink.flowkey.tables import TUNNEL
from dpif.netlink.wire import KernelError, WireError, iter_messages, parse_error


@dataclass(frozen=True)
class Target:
    run: Callable[[bytes], None]
    allowed: tuple[type[BaseException], ...]
    why: str


def netlink(data: bytes) -> None:
    """Kernel replies and notifications: every message through every family decoder."""
    for msg in iter_messages(data):
        parse_error(msg)
        for decode in (m.decode_datapath, m.decode_vport, m.decode_flow_row, m.decode_upcall,
                       m.decode_meter_stats, m.decode_family):
            with contextlib.suppress(WireError):
                decode(msg.payload)


def flow_key(data: bytes) -> None:
    """A flow key (and, split in two, a key and its mask): decoded, and formatted as ovs-dpctl would."""
    fk.decode_key(data)
    fk.format_key(data)
    half = len(data) // 2
    fk.format_key(data[:half], data[half:], verbose=True)


def flow_actions(data: bytes) -> None:
    act.decode_actions(data)
    act.format_actions(data)


def flow_text(data: bytes) -> None:
    """A flow line as `dpctl add-flow` reads it; what parses prints as a line that parses again.  (Not
    always to the same bytes: OVS's own text is no fixed point either, e.g. a tun_id with a zero mask
    prints as flags(+key) alone, which reads back as no tun_id at all; the golden tests hold us to OVS.)"""
    parsed = flowtext.parse_flow(data.decode("utf-8", "replace"))
    printed = flowtext.format_flow(parsed.key, parsed.mask, parsed.actions)
    if printed.startswith("<empty>"):
        return  # an empty key: OVS prints it so and cannot read that back either (odp_flow_format)
    if _masked_tunnel_set(parsed.actions):
        # set(tunnel(...)) whose mask is not all ones and, by chance, as long as its key: OVS's parser
        # makes it a masked set too, the kernel refuses it (validate_set), and OVS prints the two halves
        # as one tunnel it cannot read back (found by this target, 2026-12-05: erspan(ver=255)).
        return
    try:
        flowtext.parse_flow(printed)
    except ValueError as exc:
        raise AssertionError(f"we print what we cannot read: {printed} ({exc})") from None


def _masked_tunnel_set(actions: bytes | None) -> bool:
    pending = list(act.decode_actions(actions)) if actions else []
    while pending:
        a = pending.pop()
        if a.type == act.SET_MASKED and len(a.raw) >= 4 and int.from_bytes(a.raw[2:4], "little") == TUNNEL:
            return True
        pending.extend(a.children or ())
    return False


def snapshot_file(data: bytes) -> None:
    Snapshot.decode(data, "fuzz")


def snapshot_body(data: bytes) -> None:
    """The snapshot's JSON body behind a valid header: what a checksum no longer guards."""
    header = b"%s %d %s length=%d\n" % (MAGIC, FORMAT_VERSION, checksum(data).encode(), len(data))
    Snapshot.decode(header + data, "fuzz")


def state_file(data: bytes) -> None:
    decode_state(data, "fuzz")


def control_request(data: bytes) -> None:
    for line in control.LineDecoder(max_line=4096).feed(data):
        control.decode_request(line)
        control.decode_response(line)


def unixctl_reply(data: bytes) -> None:
    reader = unixctl.ReplyReader()
    reader.feed(data)
    reader.finish()


TARGETS: dict[str, Target] = {
    "netlink": Target(netlink, (WireError, KernelError), "netlink messages from the kernel"),
    "flow_key": Target(flow_key, (WireError,), "flow keys and masks"),
    "flow_actions": Target(flow_actions, (WireError,), "flow actions"),
    "flow_text": Target(flow_text, (ValueError,), "ovs-dpctl flow text (ParseError is a ValueError)"),
    "snapshot_file": Target(snapshot_file, (SnapshotError,), "snapshot files"),
    "snapshot_body": Target(snapshot_body, (SnapshotError,), "snapshot bodies behind a valid header"),
    "state_file": Target(state_file, (StateFileError,), "the service's state file"),
    "control": Target(control_request, (control.ControlError,), "control socket lines"),
    "unixctl": Target(unixctl_reply, (unixctl.ProtocolError, unixctl.UnixctlError), "ovs-appctl replies"),
}


def check(name: str, data: bytes) -> None:
    """Run one input; an allowed refusal is swallowed, anything else propagates."""
    target = TARGETS[name]
    with contextlib.suppress(*target.allowed):
        target.run(data)
