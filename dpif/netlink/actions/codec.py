"""Datapath actions as typed values (`Action`): bytes in, bytes out, verbatim."""

from __future__ import annotations

from collections.abc import Iterable

from dpif.netlink import flowkey as fk
from dpif.netlink.actions.tables import _ACTION_LISTS, ACTIONS, SET, SET_MASKED, Action
from dpif.netlink.wire import WireError


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
