#!/usr/bin/python
"""One host's hitless upgrade (or rollback), judged: probes across `dpfreeze upgrade`, then the gate."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time

from ansible_collections.dpfreeze.fleet.plugins.module_utils.gate import Limits, evaluate
from ansible_collections.dpfreeze.fleet.plugins.module_utils.host import running_version

DOCUMENTATION = r"""
---
module: dpfreeze_upgrade
short_description: Upgrade ovs-vswitchd hitlessly with dpfreeze and judge the result
description:
  - Starts a ping to each I(probe_peers) address, runs C(dpfreeze upgrade --restart-command COMMAND
    --report REPORT), stops the pings, and evaluates the continuity gate from the report and the pings.
  - A failed upgrade or gate does not fail the task; C(passed) and C(reasons) say it, and the play decides.
options:
  command:
    description: Shell command that installs and starts the new ovs-vswitchd (run inside the freeze).
    type: str
    required: true
  target_version:
    description: The version ovs-vswitchd must run afterwards.
    type: str
    required: true
  report:
    description: Where dpfreeze writes its JSON report on the host.
    type: path
    required: true
  bin:
    description: The dpfreeze command.
    type: path
    default: /usr/local/sbin/dpfreeze
  ttl:
    description: The freeze's lease, seconds.
    type: int
    default: 300
  probe_peers:
    description: Addresses pinged from this host across the upgrade.
    type: list
    elements: str
    default: []
  probe_interval:
    description: Seconds between pings.
    type: float
    default: 0.05
  max_lost:
    description: Probe packets that may be lost in all.
    type: int
    default: 0
  max_upcalls_dropped:
    description: Upcalls dpfreeze may fail to hand on (overflow, not replayable, failed replays).
    type: int
    default: 0
  max_seconds:
    description: Longest acceptable upgrade, seconds; 0 for no limit.
    type: float
    default: 0
author:
  - dpfreeze developers
"""

EXAMPLES = r"""
- name: Upgrade
  dpfreeze.fleet.dpfreeze_upgrade:
    command: apt-get install -y openvswitch-switch openvswitch-common
    target_version: 3.5.0
    report: /var/lib/dpfreeze/fleet-upgrade.json
    probe_peers: [198.51.100.12]
"""

RETURN = r"""
passed:
  description: Whether the host passes the gate.
  type: bool
  returned: always
reasons:
  description: Why it does not (empty when it passes).
  type: list
  elements: str
  returned: always
figures:
  description: version_before, version_after, seconds, lost, sent, upcalls_dropped, replayed, handed_over.
  type: dict
  returned: always
rc:
  description: Exit status of dpfreeze upgrade.
  type: int
  returned: always
running:
  description: The version ovs-vswitchd runs afterwards ("" when none answers).
  type: str
  returned: always
output:
  description: What dpfreeze upgrade printed (its report as text), last 4000 characters.
  type: str
  returned: always
"""


def start_probes(peers: list[str], interval: float) -> dict[str, subprocess.Popen[str]]:
    return {peer: subprocess.Popen(["ping", "-n", "-q", "-i", str(interval), peer], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True) for peer in peers}


def stop_probes(probes: dict[str, subprocess.Popen[str]]) -> dict[str, str]:
    """Each ping's output: SIGINT makes it print its summary."""
    out = {}
    for peer, ping in probes.items():
        ping.send_signal(signal.SIGINT)
        try:
            out[peer] = ping.communicate(timeout=10)[0]
        except subprocess.TimeoutExpired:
            ping.kill()
            out[peer] = ping.communicate()[0]
    return out


def read_report(path: str) -> dict | None:
    """The report, or None when it is missing or unreadable (the gate then fails, saying so)."""
    try:
        with open(path, encoding="utf-8") as f:
            loaded = json.load(f)
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None


def main() -> None:
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(argument_spec={
        "command": {"type": "str", "required": True},
        "target_version": {"type": "str", "required": True},
        "report": {"type": "path", "required": True},
        "bin": {"type": "path", "default": "/usr/local/sbin/dpfreeze"},
        "ttl": {"type": "int", "default": 300},
        "probe_peers": {"type": "list", "elements": "str", "default": []},
        "probe_interval": {"type": "float", "default": 0.05},
        "max_lost": {"type": "int", "default": 0},
        "max_upcalls_dropped": {"type": "int", "default": 0},
        "max_seconds": {"type": "float", "default": 0},
    })
    p = module.params
    with contextlib.suppress(FileNotFoundError):
        os.unlink(p["report"])  # never judge by an earlier run's report
    probes = start_probes(p["probe_peers"], p["probe_interval"])
    started = time.monotonic()
    try:
        done = subprocess.run([p["bin"], "upgrade", "--ttl", str(p["ttl"]), "--restart-command", p["command"],
                               "--report", p["report"]], capture_output=True, text=True, check=False)
    finally:
        seconds = time.monotonic() - started
        outputs = stop_probes(probes)
    verdict = evaluate(read_report(p["report"]), done.returncode, p["target_version"], seconds, outputs,
                       Limits(p["max_lost"], p["max_upcalls_dropped"], p["max_seconds"]))
    module.exit_json(changed=True, rc=done.returncode, running=running_version() or "",
                     output=(done.stdout + done.stderr)[-4000:], **verdict)


if __name__ == "__main__":
    main()
