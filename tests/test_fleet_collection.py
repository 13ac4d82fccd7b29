"""The Ansible collection (ansible/): its two modules as pure functions, and the collection as Galaxy and
ansible-lint see it.  The rollout itself, over SSH against hosts with their own OVS on the kernel
datapath, is tests/kernel/test_fleet.py."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from types import ModuleType

import pytest
import vmharness

COLLECTION = Path(__file__).resolve().parent.parent / "ansible"
BIN = Path(sys.executable).parent


def load(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(Path(path).stem, COLLECTION / "plugins" / path)
    assert spec and spec.loader
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = loaded  # dataclasses look their module up
    spec.loader.exec_module(loaded)
    return loaded


gate = load("module_utils/gate.py")
summary = load("modules/fleet_summary.py")

PING = """PING 10.77.0.12 (10.77.0.12) 56(84) bytes of data.

--- 10.77.0.12 ping statistics ---
{sent} packets transmitted, {received} received, 0% packet loss, time 20012ms
rtt min/avg/max/mdev = 0.071/0.240/9.800/0.530 ms
"""


def report(**changes: object) -> dict:
    good = {"ok": True, "old_version": "3.1.0", "new_version": "3.5.0", "verify": [], "error": "",
            "status": {"report": {"handover": {"overflow_packets": 0, "not_replayable": 0, "replayed": 42}}}}
    return {**good, **changes}


def probe(sent: int, received: int, peer: str = "10.77.0.12") -> dict[str, str]:
    return {peer: PING.format(sent=sent, received=received)}


def test_a_good_upgrade_passes_with_its_figures() -> None:
    verdict = gate.evaluate(report(), 0, "3.5.0", 18.54, {**probe(400, 400), **probe(10, 10, "x")})
    assert verdict == {"passed": True, "reasons": [], "figures": {
        "version_before": "3.1.0", "version_after": "3.5.0", "seconds": 18.5, "lost": 0, "sent": 410,
        "upcalls_dropped": 0, "replayed": 42, "handed_over": True}}


@pytest.mark.parametrize(("changes", "rc", "kwargs", "reason"), [
    ({"ok": False, "error": "the new ovs-vswitchd did not start"}, 1, {},
     "dpfreeze upgrade failed: the new ovs-vswitchd did not start"),
    ({"ok": False, "verify": ["upcall portids not owned by the new daemon: 7(dead)"]}, 1, {},
     "hand-over: upcall portids not owned by the new daemon: 7(dead)"),
    ({"new_version": "3.1.0"}, 0, {}, "ovs-vswitchd runs 3.1.0, not 3.5.0"),
    ({"status": {"report": {"handover": {"overflow_packets": 3, "not_replayable": 1}}}}, 0, {},
     "4 upcalls dropped (at most 0)"),
    ({}, 0, {"probes": probe(400, 397)}, "3 of 400 probe packets lost (at most 0)"),
    ({}, 0, {"probes": {"10.77.0.13": "ping: connect: Network is unreachable"}},
     "probe to 10.77.0.13: no result"),
    ({}, 0, {"seconds": 62.0, "limits": gate.Limits(max_seconds=60)},
     "the upgrade took 62.0 s (at most 60 s)"),
    ({}, 2, {}, "dpfreeze upgrade exited 2"),
])
def test_each_failed_check_is_one_reason(changes: dict, rc: int, kwargs: dict, reason: str) -> None:
    verdict = gate.evaluate(report(**changes), rc, "3.5.0", **kwargs)
    assert verdict["passed"] is False
    assert verdict["reasons"] == [reason]


def test_no_report_fails_the_gate() -> None:
    assert gate.evaluate(None, 1, "3.5.0")["reasons"] == ["no upgrade report"]


def test_limits_allow_what_they_say() -> None:
    verdict = gate.evaluate(report(), 0, "3.5.0", 59.0, probe(400, 398),
                            gate.Limits(max_lost=2, max_seconds=60))
    assert verdict["passed"], verdict


def load_module_with_stub_utils(name: str) -> ModuleType:
    """A module file as the controller ships it: its module_utils come from the collection."""
    sys.modules.setdefault("ansible_collections.dpfreeze.fleet.plugins.module_utils.host",
                           load("module_utils/host.py"))
    sys.modules.setdefault("ansible_collections.dpfreeze.fleet.plugins.module_utils.gate", gate)
    return load(f"modules/{name}.py")


def test_the_probes_are_pings_whose_summary_the_gate_reads() -> None:
    upgrade = load_module_with_stub_utils("dpfreeze_upgrade")
    probes = upgrade.start_probes(["127.0.0.1"], 0.05)
    time.sleep(0.5)
    outputs = upgrade.stop_probes(probes)
    sent, received = gate.probe_counts(outputs["127.0.0.1"])
    assert sent >= 2 and received == sent, outputs


def record(host: str, finished: str, gate_: str, rollback: str = "none", **more: object) -> dict:
    return {"host": host, "finished": finished, "version_before": "3.1.0",
            "version_after": "3.5.0" if gate_ in ("passed", "skipped") else "3.1.0", "seconds": 20.25,
            "lost": 0, "upcalls_dropped": 0, "gate": gate_, "reasons": [], "rollback": rollback, **more}


def test_the_summary_orders_hosts_and_counts_outcomes(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.mkdir()
    records = [record("h3", "2026-12-05T10:02", "failed", "done",
                      reasons=["the upgrade took 20.2 s (at most 1 s)"]),
               record("h1", "2026-12-05T10:00", "passed"), record("h2", "2026-12-05T10:01", "passed"),
               record("h4", "2026-12-05T10:03", "failed", "failed")]
    for r in records:
        (hosts / f"{r['host']}.json").write_text(json.dumps(r))
    (hosts / "torn.json").write_text("{")
    doc = summary.summarize(summary.load(str(tmp_path)))
    assert [h["host"] for h in doc["hosts"]] == ["h1", "h2", "h3", "h4"]
    assert doc["totals"] == {"upgraded": 2, "skipped": 0, "rolled back": 1, "failed": 1}
    table = summary.render(doc).splitlines()
    assert table[0].split() == ["host", "before", "after", "seconds", "lost", "upcalls", "dropped", "gate",
                                "rollback"]
    assert table[2].split() == ["h1", "3.1.0", "3.5.0", "20.2", "0", "0", "passed", "none"]
    assert table[4].split() == ["h3", "3.1.0", "3.1.0", "20.2", "0", "0", "failed", "done"]
    assert "h3: the upgrade took 20.2 s (at most 1 s)" in table
    assert table[-1] == "2 upgraded, 0 skipped, 1 rolled back, 1 failed"


def collections_path(tmp_path: Path) -> Path:
    """A collections root holding this checkout's collection, as `ansible-galaxy collection install` would."""
    root = tmp_path / "collections"
    (root / "ansible_collections" / "dpfreeze").mkdir(parents=True)
    (root / "ansible_collections" / "dpfreeze" / "fleet").symlink_to(COLLECTION)
    return root


def test_the_collection_builds(tmp_path: Path) -> None:
    subprocess.run([BIN / "ansible-galaxy", "collection", "build", COLLECTION, "--output-path", tmp_path],
                   check=True, capture_output=True)
    built = tmp_path / "dpfreeze-fleet-0.1.0.tar.gz"
    with tarfile.open(built) as tar:
        names = set(tar.getnames())
    assert {"MANIFEST.json", "playbooks/rolling_upgrade.yml", "roles/dpfreeze_upgrade/tasks/main.yml",
            "plugins/modules/dpfreeze_upgrade.py", "plugins/module_utils/gate.py"} <= names


def test_the_install_role_installs_dpfreeze_and_a_second_run_changes_nothing(tmp_path: Path) -> None:
    """The role on this machine, over Ansible's local connection: a venv, pip from an offline wheelhouse
    (dpfreeze's dependencies, fetched once by `vm.py prepare`, and a wheel of this checkout), the link, and
    `dpfreeze status` answering through it.  The units are left out: systemd is not PID 1 here, and
    install-units has its own tests."""
    wheels = tmp_path / "wheels"
    shutil.copytree(vmharness.wheelhouse(), wheels)
    tree = tmp_path / "src"
    shutil.copytree(COLLECTION.parent, tree, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".cache", "__pycache__", "build", "*.so", "*.egg-info", "demo-out"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index", "--find-links",
                    wheels, "-w", wheels, tree], check=True, capture_output=True)
    extra = {
        "dpfreeze_hosts": "all",
        "ansible_python_interpreter": sys.executable,
        "dpfreeze_install_venv": str(tmp_path / "venv"),
        "dpfreeze_install_link": str(tmp_path / "sbin" / "dpfreeze"),
        "dpfreeze_install_pip_spec": str(next(wheels.glob("dpfreeze-*.whl"))),
        "dpfreeze_install_pip_args": ["--no-index", "--find-links", str(wheels)],
        "dpfreeze_install_units": "no",
    }
    (tmp_path / "sbin").mkdir()
    (tmp_path / "vars.json").write_text(json.dumps(extra))
    env = {"PATH": f"{BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOME": str(tmp_path), "ANSIBLE_COLLECTIONS_PATH": str(collections_path(tmp_path)),
           "ANSIBLE_NOCOLOR": "1"}
    argv = [BIN / "ansible-playbook", "-i", "localhost,", "-c", "local", "-e", f"@{tmp_path / 'vars.json'}",
            "dpfreeze.fleet.install"]
    first = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
    assert (tmp_path / "sbin" / "dpfreeze").resolve() == tmp_path / "venv" / "bin" / "dpfreeze"
    status = subprocess.run([tmp_path / "sbin" / "dpfreeze", "--help"], capture_output=True, text=True)
    assert status.returncode == 0 and "upgrade" in status.stdout
    second = subprocess.run(argv, env=env, capture_output=True, text=True)
    recap = second.stdout.split("PLAY RECAP")[-1]
    assert second.returncode == 0 and "changed=0" in recap, second.stdout[-3000:]


STUB_DPFREEZE = """#!/usr/bin/env python3
# dpfreeze as the role meets it, on a host whose OVS is a version file; the world is STATE.
import json, os, subprocess, sys
state = os.environ["FLEET_STATE"]
def version():
    return open(os.path.join(state, "version")).read().strip()
cmd = sys.argv[1]
if cmd == "preflight":
    print("preflight: ok: state idle, flow-restore-wait clear")
    problem = os.path.join(state, "kernel-problem")
    if os.path.exists(problem):
        print("kernel problem: " + open(problem).read().strip())
        sys.exit(1)
elif cmd == "status":
    print(json.dumps({"state": "idle"}))
elif cmd == "upgrade":
    args = dict(zip(sys.argv[2::2], sys.argv[3::2]))
    before = version()
    subprocess.run(args["--restart-command"], shell=True, check=True)
    marker = os.path.join(state, "drops")
    drops = int(open(marker).read()) if os.path.exists(marker) else 0
    with open(os.path.join(state, "upgrades"), "a") as f:
        f.write(version() + "\\n")
    report = {"ok": True, "old_version": before, "new_version": version(), "verify": [],
              "status": {"report": {"handover": {"overflow_packets": drops}}}}
    open(args["--report"], "w").write(json.dumps(report))
    if drops:
        os.unlink(marker)  # the rollback goes well
"""


def stub_host(tmp_path: Path, version: str = "3.1.0") -> tuple[Path, dict[str, str]]:
    """A host for the role's logic alone: `ovs-appctl version` reads a file, the upgrade command writes it."""
    state, bin_ = tmp_path / "state", tmp_path / "bin"
    state.mkdir()
    bin_.mkdir()
    (state / "version").write_text(version)
    (bin_ / "dpfreeze").write_text(STUB_DPFREEZE)
    appctl = f'#!/bin/sh\necho "ovs-vswitchd (Open vSwitch) $(cat {state}/version)"\n'
    (bin_ / "ovs-appctl").write_text(appctl)
    for tool in ("dpfreeze", "ovs-appctl"):
        (bin_ / tool).chmod(0o755)
    env = {"PATH": f"{bin_}:{BIN}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path),
           "FLEET_STATE": str(state), "ANSIBLE_COLLECTIONS_PATH": str(collections_path(tmp_path)),
           "ANSIBLE_NOCOLOR": "1"}
    return state, env


def rollout(tmp_path: Path, env: dict[str, str], hosts: str) -> subprocess.CompletedProcess[str]:
    extra = {"dpfreeze_hosts": "all", "ansible_python_interpreter": sys.executable,
             "dpfreeze_upgrade_bin": str(tmp_path / "bin" / "dpfreeze"),
             "dpfreeze_upgrade_target_version": "3.5.0",
             "dpfreeze_upgrade_command": "echo {{ dpfreeze_upgrade_version }} > "
                                         + str(tmp_path / "state" / "version"),
             "dpfreeze_upgrade_report_dir": str(tmp_path / "state"),
             "dpfreeze_upgrade_summary_dir": str(tmp_path / "summary")}
    (tmp_path / "vars.json").write_text(json.dumps(extra))
    return subprocess.run([BIN / "ansible-playbook", "-i", hosts, "-c", "local", "-e",
                           f"@{tmp_path / 'vars.json'}", "dpfreeze.fleet.rolling_upgrade"],
                          env=env, capture_output=True, text=True)


def fleet_summary(tmp_path: Path) -> dict[str, dict]:
    return {h["host"]: h for h in json.loads((tmp_path / "summary" / "summary.json").read_text())["hosts"]}


def test_a_refused_preflight_changes_nothing_and_halts_the_rollout(tmp_path: Path) -> None:
    state, env = stub_host(tmp_path)
    (state / "kernel-problem").write_text("the kernel that boots next, 6.12.9, has no openvswitch module")
    done = rollout(tmp_path, env, "hv1,hv2,")
    assert done.returncode != 0
    assert "hv1: kernel problem: the kernel that boots next, 6.12.9, has no openvswitch module" in done.stdout
    assert not (state / "upgrades").exists()  # nothing ran
    hosts = fleet_summary(tmp_path)
    assert list(hosts) == ["hv1"] and hosts["hv1"]["gate"] == "refused", hosts  # hv2: halted before
    assert hosts["hv1"]["version_after"] == "3.1.0" and hosts["hv1"]["rollback"] == "none"


def test_dropped_upcalls_fail_the_gate_and_the_host_is_rolled_back(tmp_path: Path) -> None:
    state, env = stub_host(tmp_path)
    (state / "drops").write_text("3")
    done = rollout(tmp_path, env, "hv1,")
    assert done.returncode != 0
    assert (state / "upgrades").read_text().split() == ["3.5.0", "3.1.0"]  # the upgrade, then the rollback
    record = fleet_summary(tmp_path)["hv1"]
    assert record["gate"] == "failed" and record["rollback"] == "done", record
    assert record["version_after"] == "3.1.0" and record["upcalls_dropped"] == 3
    assert record["reasons"] == ["3 upcalls dropped (at most 0)"]
    again = rollout(tmp_path, env, "hv1,")  # the cause gone, a re-run upgrades it
    assert again.returncode == 0, again.stdout[-3000:]
    assert fleet_summary(tmp_path)["hv1"]["gate"] == "passed"
    skipped = rollout(tmp_path, env, "hv1,")  # and then leaves it alone
    assert skipped.returncode == 0 and fleet_summary(tmp_path)["hv1"]["gate"] == "skipped"
    assert (state / "upgrades").read_text().split() == ["3.5.0", "3.1.0", "3.5.0"]


def test_ansible_lint_is_clean(tmp_path: Path) -> None:
    env = {"PATH": f"{BIN}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path),
           "ANSIBLE_COLLECTIONS_PATH": str(collections_path(tmp_path))}
    done = subprocess.run([BIN / "ansible-lint", "--offline", "--nocolor", "--profile", "production"],
                          cwd=COLLECTION, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
