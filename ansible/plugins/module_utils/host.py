"""What the modules ask the host itself: commands, and the version ovs-vswitchd runs."""

from __future__ import annotations

import subprocess


def run(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def running_version() -> str | None:
    """`ovs-appctl version`'s "ovs-vswitchd (Open vSwitch) 3.1.0" -> "3.1.0"; None when no daemon answers."""
    done = run("ovs-appctl", "version")
    lines = done.stdout.splitlines()
    return lines[0].split()[-1] if done.returncode == 0 and lines else None
