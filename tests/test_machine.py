"""The freeze state machine table, the lease and the persisted state file (pure)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dpfreeze.freeze.machine import (
    TRANSITIONS,
    Event,
    FreezeState,
    State,
    StateFileError,
    StateStore,
    TransitionRefused,
    step,
)

FREEZE_ARGS: dict[str, Any] = {"ttl": 60, "datapath": "ovs-system", "snapshot_path": "/x/freeze.snapshot"}


def frozen(now: float = 1000.0) -> FreezeState:
    return step(FreezeState(), Event.FREEZE, now=now, **FREEZE_ARGS)


def test_freeze_takes_a_lease() -> None:
    s = frozen(1000.0)
    assert s.state is State.FROZEN
    assert s.lease_expires == 1060.0
    assert s.lease_remaining(1010.0) == 50.0
    assert not s.expired(1059.9)
    assert s.expired(1060.0)


def test_full_cycle_and_refreeze() -> None:
    s = frozen()
    s = step(s, Event.THAW, now=1001.0)
    assert s.state is State.HANDING_OVER
    s = step(s, Event.DONE, now=1002.0, report={"outcome": "ok"})
    assert s.state is State.THAWED and s.lease_expires == 0.0 and s.report == {"outcome": "ok"}
    assert s.lease_remaining(1003.0) is None
    again = step(s, Event.FREEZE, now=2000.0, **FREEZE_ARGS)
    assert again.state is State.FROZEN and again.report == {} and again.error == ""


def test_failure_always_reaches_thawed_with_the_error() -> None:
    s = step(frozen(), Event.FAIL, detail="boom")
    assert s.state is State.HANDING_OVER and s.error == "boom"
    s = step(s, Event.FAIL, detail="boom")
    assert s.state is State.THAWED and s.error == "boom"


def test_renew_extends_only_the_lease() -> None:
    s = step(frozen(1000.0), Event.RENEW, now=1050.0, ttl=120)
    assert s.state is State.FROZEN and s.lease_expires == 1170.0 and s.frozen_at == 1000.0


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("event", list(Event))
def test_everything_not_in_the_table_is_refused_and_changes_nothing(state: State, event: Event) -> None:
    if (state, event) in TRANSITIONS:
        return
    before = FreezeState(state=state, datapath="dp", ttl=5, lease_expires=7.0)
    with pytest.raises(TransitionRefused):
        step(before, event, now=1.0, **(FREEZE_ARGS if event is Event.FREEZE else {}))
    assert before == FreezeState(state=state, datapath="dp", ttl=5, lease_expires=7.0)


@pytest.mark.parametrize("ttl", [0, -1, 10**9])
def test_bad_ttl_is_refused(ttl: float) -> None:
    with pytest.raises(TransitionRefused, match="TTL"):
        step(FreezeState(), Event.FREEZE, now=0.0, **{**FREEZE_ARGS, "ttl": ttl})


def test_state_file_round_trip(tmp_path) -> None:
    store = StateStore(tmp_path / "d" / "state.json")
    assert store.load() == FreezeState()
    s = step(frozen(), Event.THAW, now=1001.0, counters={"flows": 3})
    store.save(s)
    assert store.load() == s
    assert [p.name for p in store.path.parent.iterdir()] == ["state.json"]  # no temp file left behind


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not JSON"),
        ('{"dpfreeze_state": 99, "state": "idle"}', "version 1"),
        ('["a list"]', "version 1"),
        ('{"dpfreeze_state": 1, "state": "melted"}', "malformed"),
        ('{"dpfreeze_state": 1, "state": "idle"}', "malformed"),
    ],
)
def test_corrupt_or_foreign_state_file_is_refused(tmp_path, content: str, message: str) -> None:
    path = tmp_path / "state.json"
    path.write_text(content)
    with pytest.raises(StateFileError, match=message):
        StateStore(path).load()
    assert path.read_text() == content


def test_state_json_is_stable() -> None:
    doc = frozen().to_json()
    assert doc["dpfreeze_state"] == 1 and doc["state"] == "frozen"
    assert FreezeState.from_json(json.loads(json.dumps(doc))) == frozen()
