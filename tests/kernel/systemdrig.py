"""The rig of the tests under a real systemd: OVS is the system's (Debian's units, default paths), the
traffic runs between two namespaces on a bridge of it, and every command is run as an operator would."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import trio

from dpfreeze.lab.demo import HostRig
from dpfreeze.probe import Endpoint, Report

PIDFILE = Path("/var/run/openvswitch/ovs-vswitchd.pid")
FIGURES = Path("/results/transitions.json")  # kept with --kernel-vm-keep: docs/benchmarks.md's figures


def sh(*argv: str | Path, check: bool = True, timeout: float = 600) -> str:
    res = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, check=False)
    said = f"{' '.join(map(str, argv))}: {res.returncode}\n{res.stdout}{res.stderr}"
    assert res.returncode == 0 or not check, said
    return res.stdout.strip()


def namespace_pair(bridge: str, names: tuple[str, str], subnet: int) -> tuple[Endpoint, Endpoint]:
    """Two namespaces on veth ports of `bridge` of the system's OVS (the demo's rig)."""
    assert sh("cat", "/proc/1/comm") == "systemd"
    return trio.run(HostRig(bridge, names, subnet).up)


def assert_tracked_and_thawed() -> None:
    """One ovs-vswitchd, the one systemd follows; flow-restore-wait clear; nothing frozen."""
    assert sh("systemctl", "is-active", "ovs-vswitchd") == "active"
    pid = int(PIDFILE.read_text())
    assert int(sh("systemctl", "show", "-P", "MainPID", "ovs-vswitchd")) == pid  # systemd follows the new one
    assert "flow-restore-wait" not in sh("ovs-vsctl", "get", "Open_vSwitch", ".", "other_config")
    assert json.loads(sh("dpfreeze", "status", "--json"))["state"] in ("thawed", "idle")


def lost(report: Report) -> dict[str, int]:
    return {c.name: c.lost for c in report.classes}


def running_version() -> str:
    return sh("ovs-appctl", "version").splitlines()[0].split()[-1]


def controller_rule_present(bridge: str) -> bool:
    """The bench's rule (dpfreeze.lab.bench_upgrade.BENCH_FLOW), as a controller would have set it."""
    return "move:NXM_OF_UDP_SRC[]->NXM_NX_REG0[0..15]" in sh("ovs-ofctl", "dump-flows", bridge)


def record(name: str, report: Report, record_property: object) -> dict[str, object]:
    """A transition's figures, per class (lost of sent, largest gap), on the test and in FIGURES."""
    figures = {c.name: {"lost": c.lost, "sent": c.sent, "largest_gap_ms": round(c.largest_gap_ms),
                        "slowest_ms": round(c.latency.max_ms) if c.latency else None}
               for c in report.classes}
    record_property("figures", figures)  # type: ignore[operator]
    if FIGURES.parent.is_dir():
        doc = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
        doc[name] = figures
        FIGURES.write_text(json.dumps(doc, indent=2) + "\n")
        (FIGURES.parent / f"{name.replace(' ', '_').replace('>', '')}.json").write_text(report.to_json())
    return figures
