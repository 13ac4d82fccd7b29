"""Continuity probes: scapy-built traffic through the switch, measured per class around a disruption.

Library entry point for the upgrade job:

    report = await run_probes(ProbeSpec(src=Endpoint("p0", "ns0"), dst=Endpoint("p1", "ns1")), disrupt)

where `disrupt(timeline)` restarts OVS and calls `timeline.mark("daemon-stopped")` etc.
"""

from dpfreeze.probe.report import ClassReport, Report
from dpfreeze.probe.run import Endpoint, ProbeError, ProbeSpec, Timeline, run_probes, sleep_disruption

__all__ = ["ClassReport", "Endpoint", "ProbeError", "ProbeSpec", "Report", "Timeline", "run_probes",
           "sleep_disruption"]
