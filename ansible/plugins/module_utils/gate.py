"""The continuity gate of one host's upgrade: a verdict from the host's own dpfreeze report and probes.

Pure (no Ansible, no I/O), so that the verdict is tested without a fleet; the modules only gather its
inputs and return it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Every way a buffered miss can fail to reach the new daemon (dpfreeze/freeze/handover.py).
DROPPED = ("overflow_packets", "not_replayable", "replay_failed", "new_owner_drops")
PING_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")


@dataclass(frozen=True)
class Limits:
    max_lost: int = 0  # probe packets
    max_upcalls_dropped: int = 0
    max_seconds: float = 0  # 0: no limit


def probe_counts(output: str) -> tuple[int, int] | None:
    """(sent, received) from ping's summary; None when the probe printed none (it did not run)."""
    match = PING_SUMMARY.search(output)
    return (int(match.group(1)), int(match.group(2))) if match else None


def evaluate(report: dict | None, rc: int, target_version: str, seconds: float | None = None,
             probes: dict[str, str] | None = None, limits: Limits = Limits()) -> dict:
    """The verdict: {"passed", "reasons", "figures"}; every check that fails adds one reason.

    `report` is what `dpfreeze upgrade --report` wrote (None: missing or unreadable), `probes` maps each
    peer to its ping output."""
    reasons = []
    report = report or {}
    handover = ((report.get("status") or {}).get("report") or {}).get("handover") or {}
    figures = {
        "version_before": report.get("old_version", ""),
        "version_after": report.get("new_version", ""),
        "seconds": None if seconds is None else round(seconds, 1),
        "lost": 0,
        "sent": 0,
        "upcalls_dropped": sum(int(handover.get(k) or 0) for k in DROPPED),
        "replayed": int(handover.get("replayed") or 0),
        "handed_over": bool(report.get("ok")) and not report.get("verify"),
    }
    if not report:
        reasons.append("no upgrade report")
    elif not report.get("ok") and not report.get("verify"):  # the verification's problems say why
        reasons.append("dpfreeze upgrade failed: " + (report.get("error") or "see its report"))
    if rc != 0 and report.get("ok"):
        reasons.append(f"dpfreeze upgrade exited {rc}")
    reasons += [f"hand-over: {problem}" for problem in report.get("verify") or []]
    if report and figures["version_after"] != target_version:
        reasons.append(f"ovs-vswitchd runs {figures['version_after'] or 'no known version'}, not "
                       f"{target_version}")
    if figures["upcalls_dropped"] > limits.max_upcalls_dropped:
        reasons.append(f"{figures['upcalls_dropped']} upcalls dropped (at most {limits.max_upcalls_dropped})")
    for peer, output in (probes or {}).items():
        counts = probe_counts(output)
        if counts is None:
            reasons.append(f"probe to {peer}: no result")
            continue
        figures["sent"] += counts[0]
        figures["lost"] += counts[0] - counts[1]
    if figures["lost"] > limits.max_lost:
        reasons.append(f"{figures['lost']} of {figures['sent']} probe packets lost "
                       f"(at most {limits.max_lost})")
    if limits.max_seconds and seconds is not None and seconds > limits.max_seconds:
        reasons.append(f"the upgrade took {seconds:.1f} s (at most {limits.max_seconds:g} s)")
    return {"passed": not reasons, "reasons": reasons, "figures": figures}
