"""The freeze state machine: one transition table, its persisted state, the lease.

Why a table: every command and every failure path must land in a known state, and a refused command must
change nothing.  `step()` is the only way to change state; it returns a new `FreezeState` (never mutates),
so callers persist the result before acting on it and a `kill -9` at any point resumes from disk.

The lease is a wall-clock deadline (not monotonic) because it must survive a restart of the service.
"""

from __future__ import annotations

import enum
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from dpfreeze import files
from dpfreeze.errors import DpfreezeError, UserError
from dpfreeze.freeze.defaults import MAX_TTL

STATE_VERSION = 1


class State(enum.Enum):
    IDLE = "idle"
    FROZEN = "frozen"  # snapshot taken, flow-restore-wait set, flows pinned, upcalls taken over
    HANDING_OVER = "handing_over"  # flow-restore-wait cleared, waiting for the new daemon's pids and flush
    THAWED = "thawed"  # pin released; the report of the last freeze is kept until the next one


class Event(enum.Enum):
    FREEZE = "freeze"
    THAW = "thaw"  # operator (or upgrade) asks to thaw
    EXPIRE = "expire"  # the lease ran out: thaw anyway
    FAIL = "fail"  # an unrecoverable error while frozen: thaw (clear flow-restore-wait)
    DONE = "done"  # hand-over finished (flush seen and flows re-installed, or gave up waiting)
    RENEW = "renew"  # extend the lease of the freeze in progress


# (state, event) -> next state.  Anything not listed is refused.
TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.IDLE, Event.FREEZE): State.FROZEN,
    (State.THAWED, Event.FREEZE): State.FROZEN,
    (State.FROZEN, Event.RENEW): State.FROZEN,
    (State.FROZEN, Event.THAW): State.HANDING_OVER,
    (State.FROZEN, Event.EXPIRE): State.HANDING_OVER,
    (State.FROZEN, Event.FAIL): State.HANDING_OVER,
    (State.HANDING_OVER, Event.DONE): State.THAWED,
    (State.HANDING_OVER, Event.FAIL): State.THAWED,
}

# States in which flow-restore-wait may be set and the datapath is ours to guard.
ACTIVE = frozenset({State.FROZEN, State.HANDING_OVER})


class TransitionRefused(UserError):
    """A command that is not allowed in the current state; nothing was changed."""


class StateFileError(DpfreezeError):
    """The persisted state is unreadable, foreign or from another version."""


@dataclass(frozen=True)
class FreezeState:
    """Everything a restarted service needs to resume: persisted as one JSON document."""

    state: State = State.IDLE
    datapath: str = ""
    snapshot_path: str = ""
    ttl: float = 0.0
    lease_expires: float = 0.0  # time.time() deadline; 0 when no lease is held
    frozen_at: float = 0.0
    reason: str = ""  # why the last transition happened (event and detail)
    error: str = ""  # the last failure, if any
    counters: dict[str, int] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)  # the hand-over report of the last thaw
    boot_id: str = ""  # the kernel boot the freeze was made in: a reboot ends every datapath it pinned

    def lease_remaining(self, now: float | None = None) -> float | None:
        if self.state not in ACTIVE or not self.lease_expires:
            return None
        return self.lease_expires - (time.time() if now is None else now)

    def expired(self, now: float | None = None) -> bool:
        remaining = self.lease_remaining(now)
        return remaining is not None and remaining <= 0

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["state"] = self.state.value
        return {"dpfreeze_state": STATE_VERSION, **doc}

    @classmethod
    def from_json(cls, doc: Any) -> FreezeState:
        if not isinstance(doc, dict) or doc.get("dpfreeze_state") != STATE_VERSION:
            raise StateFileError(f"not a dpfreeze state file of version {STATE_VERSION}")
        try:
            return cls(
                state=State(doc["state"]),
                datapath=str(doc["datapath"]),
                snapshot_path=str(doc["snapshot_path"]),
                ttl=float(doc["ttl"]),
                lease_expires=float(doc["lease_expires"]),
                frozen_at=float(doc["frozen_at"]),
                reason=str(doc["reason"]),
                error=str(doc["error"]),
                counters={str(k): int(v) for k, v in dict(doc["counters"]).items()},
                report=dict(doc["report"]),
                boot_id=str(doc.get("boot_id", "")),  # absent from the files of earlier releases
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise StateFileError(f"malformed state file: {exc}") from exc


def current_boot(path: Path = Path("/proc/sys/kernel/random/boot_id")) -> str:
    """The kernel's id of this boot ("" where it cannot be read)."""
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def check_ttl(ttl: float) -> float:
    if not 0 < ttl <= MAX_TTL:
        raise TransitionRefused(f"lease TTL must be in (0, {MAX_TTL:.0f}] seconds, got {ttl}")
    return ttl


def step(
    current: FreezeState, event: Event, *, now: float | None = None, detail: str = "", **changes: Any
) -> FreezeState:
    """Apply one event: the next state, or TransitionRefused with `current` untouched.

    FREEZE needs datapath, snapshot_path and ttl; RENEW needs ttl; FAIL records `detail` as the error.
    """
    nxt = TRANSITIONS.get((current.state, event))
    if nxt is None:
        raise TransitionRefused(f"cannot {event.value} while {current.state.value}")
    now = time.time() if now is None else now
    reason = event.value + (f": {detail}" if detail else "")
    if event is Event.FREEZE:
        ttl = check_ttl(float(changes.pop("ttl")))
        return FreezeState(
            state=nxt, ttl=ttl, lease_expires=now + ttl, frozen_at=now, reason=reason, **changes
        )
    if event is Event.RENEW:
        ttl = check_ttl(float(changes.pop("ttl")))
        return replace(current, ttl=ttl, lease_expires=now + ttl, reason=reason, **changes)
    if event is Event.FAIL:
        changes.setdefault("error", detail)
    if nxt is State.THAWED:
        changes.setdefault("lease_expires", 0.0)
    return replace(current, state=nxt, reason=reason, **changes)


def decode_state(data: bytes, source: str) -> FreezeState:
    """The state file's bytes to a FreezeState; anything else is one StateFileError naming `source`."""
    try:
        doc = json.loads(data.decode())
    except UnicodeDecodeError as exc:
        raise StateFileError(f"{source}: not text (byte {exc.start} is not UTF-8)") from exc
    except json.JSONDecodeError as exc:
        raise StateFileError(f"{source}: not JSON ({exc.msg})") from exc
    except RecursionError as exc:
        raise StateFileError(f"{source}: not JSON (nested too deeply)") from exc
    try:
        return FreezeState.from_json(doc)
    except StateFileError as exc:
        raise StateFileError(f"{source}: {exc}") from exc


class StateStore:
    """The state file: written atomically (temp file, fsync, rename, fsync of the directory)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> FreezeState:
        """The persisted state; a missing file is IDLE.  A corrupt one raises StateFileError."""
        try:
            data = files.read_private(self.path)
        except FileNotFoundError:
            return FreezeState()
        except OSError as exc:
            raise StateFileError(f"{self.path}: cannot read: {exc.strerror or exc}") from exc
        return decode_state(data, str(self.path))

    def quarantine(self, now: float) -> Path:
        """Move an unreadable state file aside, kept for the post-mortem, out of the way of the next start."""
        dest = self.path.with_name(f"{self.path.name}.unreadable-{int(now)}")
        self.path.replace(dest)
        return dest

    def save(self, state: FreezeState) -> None:
        files.private_dir(self.path.parent)
        files.write_atomic(self.path, json.dumps(state.to_json(), indent=1, sort_keys=True).encode() + b"\n")
