"""Never worse than stock (docs/reliability.md): each failure ends with flow-restore-wait cleared and one
line for the operator; each refusal changes nothing.  Pure: the fake datapath and backend of
test_machine_service, the real command line."""

from __future__ import annotations

import argparse
import os
import socket
import stat
from pathlib import Path

import pytest
import trio
from test_machine_service import (
    FakeBackend,
    FakeDatapath,
    fake_proc,
    flow,
    frozen_service,
    make_service,
    until,
)

from dpfreeze import upgrade as upgrade_mod
from dpfreeze.cli import freeze as freeze_cli
from dpfreeze.cli.main import interrupted
from dpfreeze.cli.main import main as cli
from dpfreeze.errors import DpfreezeError, UserError
from dpfreeze.freeze import machine
from dpfreeze.freeze.machine import State, StateFileError, StateStore, TransitionRefused
from dpfreeze.freeze.pin import PinSet
from dpfreeze.freeze.service import FreezeService, _claim_socket_path
from dpfreeze.ovs import openflow
from dpfreeze.ovs.ovsenv import OvsEnv
from dpfreeze.snapshot import SnapshotError
from dpfreeze.upgrade import UpgradeError

__all__ = ["fake_proc"]  # the fixture, shared with test_machine_service


def test_operator_errors_are_one_line_errors() -> None:
    for cls in (TransitionRefused, StateFileError, SnapshotError, UpgradeError, openflow.OpenFlowError):
        assert issubclass(cls, DpfreezeError), cls
    assert issubclass(TransitionRefused, UserError)


@pytest.mark.parametrize("content", [b"\xff\xfe\x00garbage", b"{not json", b'{"version": 99}', b""])
def test_an_unreadable_state_file_is_a_state_file_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with pytest.raises(StateFileError, match=str(path)):
        StateStore(path).load()


def test_status_of_a_non_utf8_state_file_is_one_line(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "state.json").write_bytes(b"\xff\xfe")
    rc = cli(["status", "--state-dir", str(tmp_path), "--socket", str(tmp_path / "none.sock")])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "not text" in err and "Traceback" not in err


async def test_serve_on_a_corrupt_state_file_starts_idle_and_clears_flow_restore_wait(
        tmp_path: Path, fake_proc: object) -> None:
    state = tmp_path / "state" / "state.json"
    state.parent.mkdir()
    state.write_bytes(b"\xff corrupt")
    dp = FakeDatapath()
    backend = FakeBackend(dp)
    svc = make_service(tmp_path, dp, backend)  # no traceback, no crash loop under Restart=always
    assert svc.state.state is State.IDLE
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        assert backend.frw == [False]  # nothing can say whose freeze set it: cleared, as stock leaves it
        nursery.cancel_scope.cancel()
    kept = list(state.parent.glob("state.json.unreadable-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == b"\xff corrupt"


async def test_lease_expiry_thaws_even_when_the_state_cannot_be_saved(
        tmp_path: Path, fake_proc: object, monkeypatch: pytest.MonkeyPatch) -> None:
    async with frozen_service(tmp_path, ttl=0.3, flows=[flow(1)]) as (svc, _, backend):
        def full(_self: StateStore, _state: machine.FreezeState) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(StateStore, "save", full)
        await until(lambda: svc.state.state is State.THAWED)
        assert backend.frw == [True, False]


async def test_a_freeze_that_cannot_be_saved_is_refused(tmp_path: Path, fake_proc: object,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    dp = FakeDatapath()
    backend = FakeBackend(dp)
    svc = make_service(tmp_path, dp, backend)

    def read_only(_self: StateStore, _state: machine.FreezeState) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(StateStore, "save", read_only)
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        with pytest.raises(StateFileError, match="Read-only"):
            await svc.freeze(30, "ovs-system")
        assert svc.state.state is State.IDLE and backend.frw == []
        nursery.cancel_scope.cancel()


async def test_socket_path_naming_an_ordinary_file_is_refused_not_deleted(tmp_path: Path) -> None:
    victim = tmp_path / "precious.conf"
    victim.write_text("keep me")
    with pytest.raises(TransitionRefused, match="not a socket"):
        await _claim_socket_path(victim)
    assert victim.read_text() == "keep me"


async def test_a_dead_services_socket_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()  # bound, never listening: what a killed service leaves
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    await _claim_socket_path(path)
    assert not path.exists()


@pytest.mark.parametrize("where", ["the command", "the service"])
async def test_thaw_happens_when_the_openflow_restore_fails(
    tmp_path: Path, fake_proc: object, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """ExecStartPost's thaw, run by the command (no service answers `thaw-started`) or by the service."""
    async def no_restore(*_args: object, **_kw: object) -> list[str]:
        raise openflow.OpenFlowError("ovs-ofctl: br0 is not a bridge or a socket")

    async def daemon_up(*_args: object, **_kw: object) -> int:
        return 1

    monkeypatch.setattr(upgrade_mod, "restore_openflow", no_restore)
    monkeypatch.setattr(upgrade_mod, "wait_new_daemon", daemon_up)
    async with frozen_service(tmp_path) as (svc, _, backend):
        if where == "the command":
            args = argparse.Namespace(socket=str(svc.config.socket_path), no_openflow=False,
                                      openflow_timeout=5.0, no_wait=False, json=False)
            code = await freeze_cli.cmd_thaw(args)
        else:
            env = OvsEnv(tmp_path, tmp_path, tmp_path, tmp_path, tmp_path, Path("/usr/bin"))
            answer = await upgrade_mod.thaw_in_service(svc, env, {"openflow_timeout": 5.0})
            code = answer["code"]
            assert answer["failed"].startswith("OpenFlow state not restored: ovs-ofctl: br0"), answer
        assert code == 1  # the failed restore is reported ...
        assert svc.state.state is State.THAWED and backend.frw == [True, False]  # ... and the thaw done


@pytest.mark.parametrize("argv", [["upgrade", "--ttl", "0"], ["freeze", "--ttl", "nan"],
                                  ["renew", "--ttl", "-5"], ["thaw", "--openflow-timeout", "-1"]])
def test_bad_durations_are_refused_before_anything_happens(tmp_path: Path, argv: list[str],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli([*argv, "--state-dir", str(tmp_path), "--socket", str(tmp_path / "c.sock")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "seconds" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


async def test_freeze_on_a_fresh_machine_creates_the_state_directory(
        tmp_path: Path, fake_proc: object, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Path] = []
    real_write = Path.write_text

    def write_text_no_mkdir(self: Path, data: str, *args: object, **kw: object) -> int:
        assert self.parent.is_dir(), f"{self.parent} does not exist"  # as os.open(O_CREAT) fails there
        made.append(self.parent)
        return real_write(self, data)

    async def snapshot(self: FakeBackend, dp: FakeDatapath, path: Path, *, openflow: object = None,
                       profile: object = None) -> object:
        self.pins = PinSet(await dp.info(), tuple(await dp.ports()), tuple([*dp.table.values()]))
        write_text_no_mkdir(path, "snapshot")
        return self.pins

    monkeypatch.setattr(FakeBackend, "snapshot", snapshot)
    dp = FakeDatapath()
    svc = make_service(tmp_path / "fresh" / "var" / "lib", dp)
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        await svc.freeze(30, "ovs-system")
        assert svc.state.state is State.FROZEN
        assert stat.S_IMODE(os.stat(made[0]).st_mode) == 0o700
        await svc.thaw()
        nursery.cancel_scope.cancel()


async def test_a_freeze_of_another_boot_is_ended_not_resumed(tmp_path: Path, fake_proc: object) -> None:
    """After a quick reboot the state file still says FROZEN within its lease; the datapath of that name is
    a new one: it is not re-pinned with the old snapshot, and flow-restore-wait is cleared."""
    async with frozen_service(tmp_path, flows=[flow(1)]) as (first, dp, backend):
        assert first.state.boot_id == machine.current_boot() != ""
    await dp.flow_flush()  # the new boot's datapath: empty
    backend.frw.clear()
    second = FreezeService(first.config, backend, boot=lambda: "another-boot")
    async with trio.open_nursery() as nursery:
        await nursery.start(second.run)
        assert second.state.state is State.THAWED and "before this boot" in second.state.error
        assert backend.frw == [False] and len(dp.table) == 0
        nursery.cancel_scope.cancel()


async def test_thaw_with_nothing_frozen_is_not_an_error(tmp_path: Path, fake_proc: object,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Every ordinary start of ovs-vswitchd runs the drop-in's ExecStartPost `dpfreeze thaw`."""
    svc = make_service(tmp_path, FakeDatapath())
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        args = argparse.Namespace(socket=str(svc.config.socket_path), no_openflow=False, openflow_timeout=5.0,
                                  no_wait=False, json=False)
        assert await freeze_cli.cmd_thaw(args) == 0
        assert capsys.readouterr().out.strip() == "nothing to thaw: idle"
        nursery.cancel_scope.cancel()


class OrphanApi:
    """A freeze left by a dead `upgrade`: what finish_orphaned asks of the service."""

    def __init__(self) -> None:
        self.state, self.thaws = "frozen", 0

    async def status(self) -> dict[str, object]:
        return {"state": self.state, "snapshot_path": "/nonexistent"}

    async def thaw(self, *, wait: bool = True) -> dict[str, object]:
        self.thaws += 1
        self.state = "thawed"
        return {"state": "thawed"}


def _orphan(tmp_path: Path) -> upgrade_mod.Orphan:
    kept = tmp_path / "rollback" / "ovs-vswitchd"
    kept.parent.mkdir()
    kept.write_text("binary")
    return upgrade_mod.Orphan(old_pid=100, argv=["ovs-vswitchd", "--pidfile"], kept=kept, group=4242)


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """finish_orphaned's world: no real sleeping for the settle time, restores and rollbacks recorded."""
    done: list[str] = []

    async def restore(snapshot: object, env: object) -> list[str]:
        done.append("restore-openflow")
        return []

    monkeypatch.setattr(upgrade_mod, "ORPHAN_SETTLE", 0.2)
    monkeypatch.setattr(upgrade_mod, "restore_openflow", restore)
    return done


@pytest.mark.parametrize(("pid", "said", "restored"), [
    (100, "the old daemon still ran: thawed into it", []),  # the old daemon has its OpenFlow tables
    (200, "a new daemon (pid 200) ran: thawed into it", ["restore-openflow"]),  # a new one gets them first
])
async def test_an_orphaned_freeze_is_thawed_into_the_daemon_that_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quick: list[str], pid: int, said: str,
        restored: list[str]) -> None:
    async def answering(env: object) -> int:
        return pid
    monkeypatch.setattr(upgrade_mod, "_answering", answering)
    api = OrphanApi()
    done = await upgrade_mod.finish_orphaned(api, None, _orphan(tmp_path))  # type: ignore[arg-type]
    assert done == said and api.thaws == 1 and quick == restored


async def test_an_orphaned_freeze_with_no_daemon_rolls_back_once_the_commands_group_is_gone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quick: list[str]) -> None:
    group = [True, True, False]  # the restart command lingers, then is gone
    started: list[list[str]] = []

    async def answering(env: object) -> int:
        return 300 if started else 0

    async def again(env: object, argv: list[str], rep: upgrade_mod.UpgradeReport, kept: Path | None) -> None:
        assert kept is not None and kept.is_file()
        started.append([str(kept), *argv[1:]])
        rep.recovery = "rolled back"

    monkeypatch.setattr(upgrade_mod, "_answering", answering)
    monkeypatch.setattr(upgrade_mod, "group_alive", lambda pgid: group.pop(0) if group else False)
    monkeypatch.setattr(upgrade_mod, "_daemon_again", again)
    orphan = _orphan(tmp_path)
    api = OrphanApi()
    assert await upgrade_mod.finish_orphaned(api, None, orphan) == "rolled back"  # type: ignore[arg-type]
    assert started == [[str(orphan.kept), "--pidfile"]] and api.thaws == 1
    assert not orphan.kept.exists()  # the kept binary goes once it has served


def test_an_orphan_plan_round_trips_and_a_process_group_is_found_in_proc(tmp_path: Path) -> None:
    o = _orphan(tmp_path)
    assert upgrade_mod.Orphan.from_json(o.to_json()) == o
    (tmp_path / "proc" / "7").mkdir(parents=True)
    (tmp_path / "proc" / "7" / "stat").write_text("7 (sh (x)) S 1 4242 4242 0 -1")
    assert upgrade_mod.group_alive(4242, tmp_path / "proc")
    assert not upgrade_mod.group_alive(4243, tmp_path / "proc")
    (tmp_path / "proc" / "8").mkdir()
    (tmp_path / "proc" / "8" / "stat").write_text("8 (ovs-vswitchd) Z 1 4243 4243 0 -1")
    assert not upgrade_mod.group_alive(4243, tmp_path / "proc")  # a zombie runs nothing
    assert upgrade_mod.group_alive(os.getpgid(0))  # this very process, in the real /proc


def test_ctrl_c_inside_a_nursery_is_one_line_and_exit_130() -> None:
    assert interrupted(BaseExceptionGroup("nursery", [KeyboardInterrupt(), ValueError("x")]))
    assert interrupted(KeyboardInterrupt())
    assert not interrupted(ExceptionGroup("nursery", [ValueError("x")]))


class GapApi:
    """A freeze whose snapshot could not read the running daemon's OpenFlow state."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def freeze(self, ttl: float, datapath: str) -> dict[str, object]:
        self.calls.append("freeze")
        return {"state": "frozen", "counters": {"flows": 0}, "snapshot_path": "/nonexistent",
                "snapshot_gaps": ["openflow: ovs-ofctl dump-flows br0: timed out"]}

    async def thaw(self, *, wait: bool = True) -> dict[str, object]:
        self.calls.append("thaw")
        return {"state": "thawed"}

    async def take_upcalls(self) -> dict[str, object]:
        self.calls.append("take-upcalls")
        return {}


async def test_an_upgrade_whose_openflow_state_was_not_saved_restarts_nothing(tmp_path: Path) -> None:
    """A new daemon would start with empty tables (a 20 000-rule dump outlasted its limit in the VM):
    the freeze ends at once, before the upcalls are taken and before anything is stopped."""
    env = OvsEnv(tmp_path, tmp_path, tmp_path, tmp_path, Path("/usr/share/openvswitch"), Path("/usr/bin"))
    api = GapApi()
    plan = upgrade_mod.UpgradePlan(60.0, "ovs-system", old_pid=4242, argv=[])
    rep = await upgrade_mod.run_upgrade(api, env, plan)  # type: ignore[arg-type]
    assert not rep.ok and "OpenFlow state could not be saved" in rep.error, rep.error
    assert "nothing restarted" in rep.error and api.calls == ["freeze", "thaw"]
