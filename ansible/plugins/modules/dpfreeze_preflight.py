#!/usr/bin/python
"""One host's preflight before its upgrade: what runs, and every reason to refuse before anything changes."""

from __future__ import annotations

import json

from ansible_collections.dpfreeze.fleet.plugins.module_utils.host import run, running_version

DOCUMENTATION = r"""
---
module: dpfreeze_preflight
short_description: Check an Open vSwitch host before a hitless upgrade
description:
  - Reads the version ovs-vswitchd runs. When it is already I(target_version) the host is to be skipped.
  - Otherwise refuses (fails) when C(dpfreeze preflight) does (a stale flow-restore-wait or lease, a loaded
    openvswitch module that is not the one on disk, a next kernel that cannot be told or lacks the module
    or a datapath feature in use) or a freeze is in progress.
  - Changes nothing.
options:
  target_version:
    description: The OVS version the rollout installs.
    type: str
    required: true
  bin:
    description: The dpfreeze command.
    type: path
    default: /usr/local/sbin/dpfreeze
author:
  - dpfreeze developers
"""

EXAMPLES = r"""
- name: Preflight
  dpfreeze.fleet.dpfreeze_preflight:
    target_version: 3.5.0
  register: preflight
"""

RETURN = r"""
version:
  description: The version ovs-vswitchd runs.
  type: str
  returned: always
skip:
  description: Whether the host already runs the target version.
  type: bool
  returned: always
refusals:
  description: Why the upgrade is refused (the module then fails).
  type: list
  elements: str
  returned: always
"""


def refusals(bin_: str) -> list[str]:
    """Every reason to refuse, each one line."""
    out = []
    pre = run(bin_, "preflight")  # the freeze state, flow-restore-wait, and the kernel and its module
    if pre.returncode != 0:
        said = (pre.stdout + pre.stderr).splitlines()
        out += [line for line in said if "problem" in line or "stale" in line or "error" in line] or [
            f"dpfreeze preflight exited {pre.returncode}"]
    status = run(bin_, "status", "--json")
    try:
        state = json.loads(status.stdout).get("state")
    except ValueError:
        state = None
    if state not in ("idle", "thawed"):
        out.append(f"dpfreeze state is {state or 'unreadable'}: a freeze is in progress or unknown")
    return out


def main() -> None:
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(argument_spec={"target_version": {"type": "str", "required": True},
                                          "bin": {"type": "path", "default": "/usr/local/sbin/dpfreeze"}},
                           supports_check_mode=True)
    version = running_version()
    if version is None:
        module.fail_json(msg="ovs-vswitchd does not answer (ovs-appctl version)", version="", skip=False,
                         refusals=["ovs-vswitchd does not answer"])
    if version == module.params["target_version"]:
        module.exit_json(changed=False, version=version, skip=True, refusals=[])
    why = refusals(module.params["bin"])
    if why:
        module.fail_json(msg="; ".join(why), version=version, skip=False, refusals=why)
    module.exit_json(changed=False, version=version, skip=False, refusals=[])


if __name__ == "__main__":
    main()
