#!/usr/bin/python
"""The fleet summary on the controller: every host's record, as one JSON document and one table.

Why rewritten after every host: a rollout that halts (a failed gate ends the play) still leaves a complete
summary of what happened, and a re-run updates the records of the hosts it touched.
"""

from __future__ import annotations

import json
import os
import tempfile

DOCUMENTATION = r"""
---
module: fleet_summary
short_description: Write the fleet summary of a dpfreeze rollout
description:
  - Writes I(record) (when given) as I(directory)/hosts/HOST.json, then reads every host record there and
    writes I(directory)/summary.json and I(directory)/summary.txt, each atomically.
  - Meant to run on the controller (delegate_to localhost, throttle 1).
options:
  directory:
    description: The summary directory.
    type: path
    required: true
  record:
    description: One host's record (host, versions, seconds, lost, upcalls_dropped, gate, reasons, rollback).
    type: dict
author:
  - dpfreeze developers
"""

EXAMPLES = r"""
- name: Record a host and write the fleet summary
  dpfreeze.fleet.fleet_summary:
    directory: /srv/rollouts/ovs-3.5
    record: "{{ host_record }}"
  delegate_to: localhost
  throttle: 1
"""

RETURN = r"""
summary:
  description: The document written to summary.json.
  type: dict
  returned: always
table:
  description: The text written to summary.txt.
  type: str
  returned: always
"""

COLUMNS = (("host", "host"), ("before", "version_before"), ("after", "version_after"),
           ("seconds", "seconds"), ("lost", "lost"), ("upcalls dropped", "upcalls_dropped"),
           ("gate", "gate"), ("rollback", "rollback"))
OUTCOMES = ("upgraded", "skipped", "rolled back", "failed")


def outcome(record: dict) -> str:
    """One word per host: what the rollout did to it."""
    if record.get("gate") == "skipped":
        return "skipped"
    if record.get("gate") == "passed":
        return "upgraded"
    if record.get("rollback") == "done":
        return "rolled back"
    return "failed"


def summarize(records: list) -> dict:
    """The document: hosts in the order their turns ended, totals per outcome."""
    hosts = sorted(records, key=lambda r: (r.get("finished", ""), r.get("host", "")))
    totals = {o: 0 for o in OUTCOMES}
    for record in hosts:
        totals[outcome(record)] += 1
    return {"hosts": hosts, "totals": totals}


def _cell(value: object) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def render(summary: dict) -> str:
    """The table a person reads: one row per host, then the reasons of every failed gate, then totals."""
    rows = [[name for name, _ in COLUMNS]]
    rows += [[_cell(r.get(key)) for _, key in COLUMNS] for r in summary["hosts"]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for record in summary["hosts"]:
        lines += [f"{record.get('host')}: {reason}" for reason in record.get("reasons") or []]
    lines.append(", ".join(f"{count} {name}" for name, count in summary["totals"].items()))
    return "\n".join(lines) + "\n"


def load(directory: str) -> list:
    """Every readable host record; an unreadable one is left out (the next write of that host replaces it)."""
    hosts = os.path.join(directory, "hosts")
    records = []
    for name in sorted(os.listdir(hosts)) if os.path.isdir(hosts) else []:
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(hosts, name), encoding="utf-8") as f:
                records.append(json.load(f))
        except (OSError, ValueError):
            continue
    return records


def write_atomically(path: str, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".summary-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def main() -> None:
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(argument_spec={"directory": {"type": "path", "required": True},
                                          "record": {"type": "dict"}},
                           supports_check_mode=True)
    directory, record = module.params["directory"], module.params["record"]
    if record and not module.check_mode:
        os.makedirs(os.path.join(directory, "hosts"), exist_ok=True)
        write_atomically(os.path.join(directory, "hosts", f"{record['host']}.json"),
                         json.dumps(record, indent=2) + "\n")
    summary = summarize(load(directory))
    table = render(summary)
    if not module.check_mode:
        write_atomically(os.path.join(directory, "summary.json"), json.dumps(summary, indent=2) + "\n")
        write_atomically(os.path.join(directory, "summary.txt"), table)
    module.exit_json(changed=not module.check_mode, summary=summary, table=table)


if __name__ == "__main__":
    main()
