"""The Ansible rollout, for real: `ansible-playbook` over SSH against four hypervisors, each with its own OVS
on the kernel datapath (tests/kernel/fleetrig.py), from Debian 12's 3.1.0 to trixie's 3.5.0.

The hosts run the checkout's dpfreeze (linked where the install role links it; the role itself is run for
real on the machine, tests/test_fleet_collection.py: installing it four times under TCG takes minutes).
The collection rolls OVS with its default batches (1, 10 %, 25 %: one host at a time here).  fh3 is
given a gate it cannot pass (an upgrade window of at most 1 s): the canary fh1 and the first batch fh2
upgrade hitlessly under the probes (traffic between a namespace on fh1 and one on fh2, so it crosses both
upgrades), fh3 is rolled back to 3.1.0 by the same hitless path, the rollout halts and fh4 is never
touched.  With fh3's limit lifted, the
same playbook resumes: fh1 and fh2 skipped, fh3 and fh4 upgraded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import ovsdebs
import pytest
import trio
import vmharness
from fleetrig import ROOT, Host, prepare_controller, sh

from dpfreeze.lab.bench_upgrade import BENCH_FLOW
from dpfreeze.lab.demo import probe_spec
from dpfreeze.probe import Endpoint, Report, Timeline, run_probes

pytestmark = [pytest.mark.kernel, pytest.mark.own_boot(mem="3G"), pytest.mark.kernel_timeout(1200)]
CHECKOUT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RESULTS = Path("/results/fleet")
TARGET = "3.5.0"
HOSTS = [Host(f"fh{i}", i) for i in (1, 2, 3, 4)]
PEERS = {"fh1": ["10.77.0.12"], "fh2": ["10.77.0.11"], "fh3": ["10.77.0.11"], "fh4": ["10.77.0.11"]}
FAILING = {"fh3": {"dpfreeze_upgrade_gate_max_seconds": 1}}


def inventory(key: Path, binaries: dict[str, str], failing: dict[str, dict[str, object]]) -> str:
    hosts = {h.name: {"ansible_host": h.mgmt, "dpfreeze_upgrade_probe_peers": PEERS[h.name],
                      **failing.get(h.name, {})} for h in HOSTS}
    return json.dumps({"ovs_hosts": {"hosts": hosts, "vars": {
        "ansible_user": "root",
        "ansible_ssh_private_key_file": str(key),
        "ansible_python_interpreter": "/usr/bin/python3",
        # A host's own ARP entry may expire while the upgrade delays its new flows (the kernel gives up
        # after 3 s): up to 5 s of the gate's pings from the host's own stack may be lost (docs/fleet.md).
        "dpfreeze_upgrade_gate_max_lost": 100,
        "dpfreeze_upgrade_target_version": TARGET,
        "fleet_binaries": binaries,
        "dpfreeze_upgrade_command": (
            "update-alternatives --set ovs-vswitchd {{ fleet_binaries[dpfreeze_upgrade_version] }} >/dev/null"
            " && /usr/share/openvswitch/scripts/ovs-ctl --no-ovsdb-server stop"
            " && /usr/share/openvswitch/scripts/ovs-ctl --no-ovsdb-server --no-monitor start"),
        "dpfreeze_upgrade_summary_dir": str(RESULTS),
    }}}, indent=1)


ANSIBLE_CFG = f"""[defaults]
inventory = {ROOT}/hosts.yml
collections_path = {ROOT}/collections
forks = 4
timeout = 60
host_key_checking = False

[ssh_connection]
pipelining = True
control_path_dir = {ROOT}/cp
ssh_args = -o ControlMaster=auto -o ControlPersist=300s -o UserKnownHostsFile=/dev/null
"""


def playbook(name: str, log: str, record_property: object, *options: str) -> subprocess.CompletedProcess[str]:
    """`ansible-playbook dpfreeze.fleet.NAME` as an operator runs it; its output kept in /results/fleet."""
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_FORCE_COLOR": "0"}
    start = time.monotonic()
    done = subprocess.run([BIN / "ansible-playbook", *options, f"dpfreeze.fleet.{name}"], capture_output=True,
                          text=True, env=env, timeout=1500, check=False)
    (RESULTS / log).write_text(done.stdout + done.stderr)
    record_property(f"{log} seconds", round(time.monotonic() - start, 1))  # type: ignore[operator]
    return done


def when_lost(report: Report, hosts: dict[str, dict[str, object]]) -> str:
    """Each loss on the wall clock, beside each host's finish: which host's window it fell in."""
    t0 = datetime.fromtimestamp(report.t0_unix_ns / 1e9)
    runs = [f"{c.name}: {r.lost} from {t0 + timedelta(milliseconds=r.start_ms):%H:%M:%S.%f}"
            for c in report.classes for r in c.loss_intervals]
    finished = [f"{name} {h['finished']} ({h['seconds']} s)" for name, h in hosts.items()]
    return f"lost {runs}; hosts finished {finished}"


def summary() -> dict[str, dict[str, object]]:
    return {h["host"]: h for h in json.loads((RESULTS / "summary.json").read_text())["hosts"]}


@pytest.fixture(scope="module")
def fleet() -> Iterator[tuple[Endpoint, Endpoint]]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    binaries = {"3.1.0": "/usr/lib/openvswitch-switch/ovs-vswitchd",
                TARGET: str(ovsdebs.install_beside(vmharness.cache_dir() / "ovs" / "3.5", "3.5"))}
    key = prepare_controller()
    Path("/usr/local/sbin/dpfreeze").symlink_to(BIN / "dpfreeze")  # where the install role links it
    collections = ROOT / "collections" / "ansible_collections" / "dpfreeze"
    collections.mkdir(parents=True)
    (collections / "fleet").symlink_to(CHECKOUT / "ansible")
    (ROOT / "ansible.cfg").write_text(ANSIBLE_CFG)
    (ROOT / "hosts.yml").write_text(inventory(key, binaries, FAILING))
    while float(Path("/proc/uptime").read_text().split()[0]) < 10.5:  # 3.1.0's zero-CPU bug (testing.md)
        time.sleep(0.5)
    try:
        for host in HOSTS:
            host.up()
        vms = (HOSTS[0].attach("fv1", 101), HOSTS[1].attach("fv2", 102))
        for host in HOSTS[:2]:
            host.run("ovs-ofctl", "add-flow", "br0", BENCH_FLOW)  # every new flow of the probes is an upcall
        sh("ip", "netns", "exec", "fv1", "ping", "-c", "2", "-W", "5", "10.77.0.102")
        yield vms
    finally:
        for host in HOSTS:
            host.down()


async def test_a_failed_gate_rolls_its_host_back_and_halts_the_rollout(fleet: tuple[Endpoint, Endpoint],
                                                                       record_property: object) -> None:
    results: list[subprocess.CompletedProcess[str]] = []

    async def rollout(tl: Timeline) -> None:
        tl.mark("ansible-playbook dpfreeze.fleet.rolling_upgrade")
        results.append(await trio.to_thread.run_sync(
            lambda: playbook("rolling_upgrade", "rollout.log", record_property)))
        tl.mark("returned")

    # lighter than the demo's probes (200 pps, a new flow every 20 ms): the agents share the guest's two
    # CPUs with four hosts and Ansible
    spec = dataclasses.replace(probe_spec(fleet, 0), rate=100.0, newflow_ms=50.0)
    report: Report = await run_probes(spec, rollout)
    (RESULTS / "rollout-probes.json").write_text(report.to_json())
    lost = {c.name: c.lost for c in report.classes}
    record_property("probes fv1 -> fv2 (across fh1 and fh2)",  # type: ignore[operator]
                    {c.name: f"{c.lost} of {c.sent}" for c in report.classes})
    done = results[0]
    assert done.returncode != 0, done.stdout[-4000:]  # halted
    hosts = summary()
    record_property("summary", (RESULTS / "summary.txt").read_text())  # type: ignore[operator]
    assert set(hosts) == {"fh1", "fh2", "fh3"}  # fh4: never reached
    for name in ("fh1", "fh2"):
        assert hosts[name]["gate"] == "passed" and hosts[name]["version_after"] == TARGET, hosts[name]
        assert hosts[name]["upcalls_dropped"] == 0, hosts[name]
    assert hosts["fh3"]["gate"] == "failed" and hosts["fh3"]["rollback"] == "done", hosts["fh3"]
    assert hosts["fh3"]["version_after"] == "3.1.0", hosts["fh3"]
    assert any("at most 1 s" in r for r in hosts["fh3"]["reasons"]), hosts["fh3"]
    assert [h.version() for h in HOSTS] == [TARGET, TARGET, "3.1.0", "3.1.0"]
    assert all(lost[c] == 0 for c in lost), when_lost(report, hosts)
    for host in HOSTS[:2]:  # the OpenFlow state came across the upgrade
        assert "move:NXM_OF_UDP_SRC" in host.run("ovs-ofctl", "dump-flows", "br0")
        assert "flow-restore-wait" not in host.run("ovs-vsctl", "get", "Open_vSwitch", ".", "other_config")


def test_a_rerun_resumes_where_the_rollout_stopped(fleet: tuple[Endpoint, Endpoint],
                                                   record_property: object) -> None:
    hosts_yml = ROOT / "hosts.yml"
    doc = json.loads(hosts_yml.read_text())
    del doc["ovs_hosts"]["hosts"]["fh3"]["dpfreeze_upgrade_gate_max_seconds"]  # the operator lifts the limit
    hosts_yml.write_text(json.dumps(doc, indent=1))
    done = playbook("rolling_upgrade", "resume.log", record_property)
    assert done.returncode == 0, done.stdout[-4000:]
    hosts = summary()
    record_property("summary after the re-run", (RESULTS / "summary.txt").read_text())  # type: ignore[operator]
    assert hosts["fh1"]["gate"] == hosts["fh2"]["gate"] == "skipped"
    for name in ("fh3", "fh4"):
        assert hosts[name]["gate"] == "passed" and hosts[name]["upcalls_dropped"] == 0, hosts[name]
    assert [h.version() for h in HOSTS] == [TARGET] * 4
