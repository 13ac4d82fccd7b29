"""The control socket and dpfreeze's files against other users and planted links (docs/reliability.md)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from test_machine_service import FakeDatapath, fake_proc, frozen_service, make_service

from dpfreeze.freeze import control
from dpfreeze.freeze.machine import StateFileError, StateStore
from dpfreeze.snapshot import Snapshot, SnapshotError

__all__ = ["fake_proc"]  # the fixture, shared with test_machine_service
NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"  # any user may run it (the venv may sit in a private home)
CLIENT = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    print(json.dumps({"connect": exc.strerror})); sys.exit()
try:
    s.sendall(b'{"id": 1, "cmd": "status"}\\n')
except BrokenPipeError:
    pass  # a refused peer is answered and dropped at once, before it has sent anything
print(s.makefile().readline().strip())
"""


def as_nobody(sock: Path) -> dict[str, object]:
    res = subprocess.run([SYSTEM_PYTHON, "-I", "-c", CLIENT, str(sock)], user=NOBODY, group=NOBODY, cwd="/",
                         env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return dict(json.loads(res.stdout))


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory another user may enter (pytest's own tmp dirs are 0700)."""
    d = Path(tempfile.mkdtemp(prefix="dpfz-sec-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
async def test_another_user_cannot_reach_the_service(open_dir: Path, fake_proc: object) -> None:
    svc = make_service(open_dir, FakeDatapath())
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        sock = svc.config.socket_path
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
        denied = await trio.to_thread.run_sync(as_nobody, sock)
        assert denied == {"connect": "Permission denied"}  # the 0700 directory, first
        sock.parent.chmod(0o755)  # an operator's mistake: the service itself still refuses
        sock.chmod(0o666)
        refused = await trio.to_thread.run_sync(as_nobody, sock)
        assert refused == {"id": 0, "ok": False, "error": f"permission denied for uid {NOBODY}"}
        nursery.cancel_scope.cancel()


async def test_state_snapshot_and_reports_are_private(tmp_path: Path, fake_proc: object) -> None:
    async with frozen_service(tmp_path) as (svc, _, _):
        await svc.thaw()
        state_dir = svc.config.state_dir
        assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
        for name in ("state.json", "report.json", "report.txt"):
            assert stat.S_IMODE((state_dir / name).stat().st_mode) == 0o600, name


def test_a_planted_link_is_never_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("{}")
    for load, error in ((lambda p: StateStore(p).load(), StateFileError), (Snapshot.load, SnapshotError)):
        link = tmp_path / "link"
        link.unlink(missing_ok=True)
        link.symlink_to(secret)
        with pytest.raises(error, match="cannot read"):
            load(link)
    link = tmp_path / "state.json"
    link.unlink(missing_ok=True)
    link.symlink_to(secret)
    StateStore(link).save(StateStore(tmp_path / "none.json").load())  # replaces the link, not its target
    assert secret.read_text() == "{}" and not link.is_symlink()


@pytest.mark.parametrize(("line", "error"), [
    (b"{nope", "not a JSON line"),
    (b"[1]", "must be a JSON object"),
    (b'{"id": "1", "cmd": "status"}', "id must be an integer"),
    (b'{"id": 1, "cmd": "reboot"}', "unknown command"),
    (b'{"id": 1, "cmd": "freeze", "args": {"ttl": "60"}}', "ttl must be a finite number"),
    (b'{"id": 1, "cmd": "freeze", "args": {"ttl": true}}', "ttl must be a finite number"),
    (b'{"id": 1, "cmd": "renew", "args": {"ttl": 1e999}}', "ttl must be a finite number"),
    (b'{"id": 1, "cmd": "freeze", "args": {"datapath": 7}}', "datapath must be a string"),
    (b'{"id": 1, "cmd": "thaw", "args": {"wait": "no"}}', "wait must be a boolean"),
    (b'{"id": 1, "cmd": "status", "args": {"verbose": 1}}', "status takes no argument 'verbose'"),
])
def test_every_field_of_a_request_is_checked(line: bytes, error: str) -> None:
    with pytest.raises(control.ControlError, match=error):
        control.decode_request(line)


def test_a_huge_line_is_refused() -> None:
    with pytest.raises(control.ControlError, match="longer than"):
        list(control.LineDecoder(max_line=1024).feed(b"x" * 2048))


async def test_a_negative_ttl_is_refused_by_the_service(tmp_path: Path, fake_proc: object) -> None:
    svc = make_service(tmp_path, FakeDatapath())
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        with pytest.raises(control.ControlError, match="lease TTL must be"):
            await svc.handle(control.decode_request(b'{"id": 1, "cmd": "freeze", "args": {"ttl": -1}}'))
        assert not svc.config.state_file.exists()
        nursery.cancel_scope.cancel()


def test_a_temporary_file_left_by_a_crash_never_blocks_a_save(tmp_path: Path) -> None:
    """After a reboot the service often gets the pid it had: a crash's leftover must not refuse saves."""
    store = StateStore(tmp_path / "state.json")
    (tmp_path / f".state.json.tmp-{os.getpid()}").write_text("left by a crash")
    store.save(store.load())
    assert store.load().state.value == "idle"
