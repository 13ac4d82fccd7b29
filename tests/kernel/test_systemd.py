"""Under a real systemd (PID 1 in the guest), with Debian's openvswitch units running OVS at its default
paths and dpfreeze installed the way docs/operations.md says (`dpfreeze install-units`): the unit
operations an operator and a package upgrade use are hitless, and leave a daemon that systemd tracks."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from dpfreeze.probe import Endpoint, ProbeSpec, Report, Timeline, run_probes

pytestmark = [pytest.mark.kernel, pytest.mark.systemd]
PIDFILE = Path("/var/run/openvswitch/ovs-vswitchd.pid")
NAMESPACES = ("dpsa", "dpsb")


def sh(*argv: str, check: bool = True) -> str:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0 or not check, f"{' '.join(argv)}: {res.returncode}\n{res.stdout}{res.stderr}"
    return res.stdout.strip()


@pytest.fixture(scope="module")
def ends() -> Iterator[tuple[Endpoint, Endpoint]]:
    """dpfreeze installed as a user would; br0 on the system's OVS with a namespace on each of two ports."""
    assert sh("cat", "/proc/1/comm") == "systemd"
    sh("dpfreeze", "install-units")
    sh("ovs-vsctl", "--may-exist", "add-br", "br0")
    out = []
    for i, ns in enumerate(NAMESPACES, 1):
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", f"{ns}-o", "type", "veth", "peer", "name", f"{ns}-i")
        sh("ip", "link", "set", f"{ns}-i", "netns", ns)
        sh("ovs-vsctl", "add-port", "br0", f"{ns}-o")
        sh("ip", "link", "set", f"{ns}-o", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "addr", "add", f"10.91.0.{i}/24", "dev", f"{ns}-i")
        sh("ip", "-n", ns, "addr", "add", f"fd00:91::{i}/64", "dev", f"{ns}-i", "nodad")
        sh("ip", "-n", ns, "link", "set", f"{ns}-i", "up")
        out.append(Endpoint(f"{ns}-i", ns))
    sh("ip", "netns", "exec", NAMESPACES[0], "ping", "-c", "2", "-W", "5", "10.91.0.2")
    yield out[0], out[1]
    sh("dpfreeze", "install-units", "--uninstall")


def spec(ends: tuple[Endpoint, Endpoint]) -> ProbeSpec:
    return ProbeSpec(src=ends[0], dst=ends[1], rate=200.0, newflow_ms=50.0, newflow_hosts=False, lead_s=1.0,
                     tail_s=2.0, ready_timeout_s=300.0, stop_timeout_s=120.0)


def systemctl(*args: str) -> object:
    async def disrupt(tl: Timeline) -> None:
        tl.mark(f"systemctl {' '.join(args)}")
        await trio.to_thread.run_sync(lambda: sh("systemctl", *args))
        tl.mark("returned")
    return disrupt


def assert_tracked_and_thawed() -> None:
    assert sh("systemctl", "is-active", "ovs-vswitchd") == "active"
    pid = int(PIDFILE.read_text())
    assert int(sh("systemctl", "show", "-P", "MainPID", "ovs-vswitchd")) == pid  # systemd follows the new one
    assert "flow-restore-wait" not in sh("ovs-vsctl", "get", "Open_vSwitch", ".", "other_config")
    assert json.loads(sh("dpfreeze", "status", "--json"))["state"] in ("thawed", "idle")


def lost(report: Report) -> dict[str, int]:
    return {c.name: c.lost for c in report.classes}


def test_the_units_are_in_place_and_running(ends: tuple[Endpoint, Endpoint]) -> None:
    assert sh("systemctl", "is-active", "dpfreeze") == "active"
    assert "dpfreeze.conf" in sh("systemctl", "show", "-P", "DropInPaths", "ovs-vswitchd")


@pytest.mark.parametrize("operation", [("reload", "ovs-vswitchd"), ("restart", "ovs-vswitchd"),
                                       ("restart", "openvswitch-switch")], ids=" ".join)
async def test_unit_operation_is_hitless(ends: tuple[Endpoint, Endpoint], operation: tuple[str, str],
                                         record_property: object) -> None:
    report = await run_probes(spec(ends), systemctl(*operation))  # type: ignore[arg-type]
    record_property("lost", lost(report))  # type: ignore[operator]
    record_property("journal", sh("journalctl", "--no-pager", "-n", "40", "-u", "ovs-vswitchd",  # type: ignore[operator]
                                  "-u", "dpfreeze", check=False))
    assert_tracked_and_thawed()
    assert report.cls("established").lost == 0 and report.cls("newflow").lost == 0, lost(report)
