"""`dpfreeze lab`: refuses bad input before touching anything; up builds what it says; down leaves nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from dpfreeze.errors import UserError
from dpfreeze.lab.topology import LabState, lab_down, lab_up, load, state_path
from dpfreeze.ovs.ovsenv import process_alive


@pytest.fixture(autouse=True)
def labdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DPFREEZE_LAB_DIR", str(tmp_path / "labs"))
    return tmp_path / "labs"


def netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def links() -> set[str]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {lk["ifname"] for lk in json.loads(out)}


def leftovers(st: LabState, pids: list[int]) -> list[str]:
    left = [n for n in netns() if n.startswith(st.prefix)] + [k for k in links() if k.startswith(st.prefix)]
    left += [f"pid {p}" for p in pids if process_alive(p)]
    left += [st.base] if Path(st.base).exists() else []
    left += [str(state_path(st.name))] if state_path(st.name).exists() else []
    return left


@pytest.mark.parametrize(("kw", "msg"), [
    ({"namespaces": 0}, "1..64"),
    ({"vlans": {3: 100}}, "namespace 3"),
    ({"vlans": {1: 5000}}, "1..4094"),
    ({"tunnel": "vxlan"}, "needs --datapath system"),
    ({"tunnel": "gre", "datapath": "system"}, "unknown tunnel"),
    ({"datapath": "dummy"}, "unknown datapath"),
])
async def test_bad_input_is_refused_before_anything_is_made(kw: dict[str, object], msg: str) -> None:
    with pytest.raises(UserError, match=msg):
        await lab_up("t", **kw)  # type: ignore[arg-type]
    assert not state_path("t").exists()  # written before the first thing is created


async def test_down_of_an_unknown_lab_is_one_clear_error() -> None:
    with pytest.raises(UserError, match="no lab 'nope'"):
        await lab_down("nope")


@pytest.mark.netdev
async def test_up_builds_the_topology_and_down_removes_all_of_it() -> None:
    st = await lab_up("t", datapath="netdev", namespaces=3, vlans={3: 100})
    try:
        rundir = Path(st.env["rundir"])
        pids = [int((rundir / f"{d}.pid").read_text()) for d in ("ovsdb-server", "ovs-vswitchd")]
        assert load("t") == st
        assert len(st.ports) == 3 and {p["netns"] for p in st.ports} <= netns()
        sb = st.sandbox()
        p1, p2, p3 = sb.ports
        await sb.ping(p1, p2, count=1)
        assert (await sb.vsctl("get", "Port", p3.port, "tag")).strip() == "100"
        with pytest.raises(Exception, match="exit"):  # access port on VLAN 100: isolated from VLAN 0
            await sb.ping(p1, p3, count=1)
        with pytest.raises(UserError, match="already exists"):
            await lab_up("t")
    finally:
        assert await lab_down("t") == []
    assert leftovers(st, pids) == []


@pytest.mark.netdev
async def test_down_cleans_up_after_an_up_that_was_killed(labdir: Path) -> None:
    """SIGKILL `lab up` half-way (after its first namespace): `down` still removes everything."""
    code = ("import trio, dpfreeze.lab.topology as l; "
            "trio.run(lambda: l.lab_up('k', datapath='netdev', namespaces=6))")
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if (labdir / "k.json").exists() and load("k").ports:
                break
            await trio.sleep(0.05)
        else:
            pytest.fail("lab up never created its first namespace")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    st = load("k")
    assert len(st.ports) < 6, "up finished before it was killed: the test proved nothing"
    pids = [int(f.read_text()) for f in Path(st.env["rundir"]).glob("*.pid")]
    assert pids and any(process_alive(p) for p in pids)
    assert await lab_down("k") == []
    assert leftovers(st, pids) == []
