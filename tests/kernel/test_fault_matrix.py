"""The never-worse-than-stock rule, fault by fault, under the probes: `dpfreeze lab faults` as an operator
runs it (default paths), in a boot of its own since it kills daemons and unloads the module.  Every cell
must hold the rule; the table it prints is docs/reliability.md's (`--render faults.json --doc ...`)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kernel, pytest.mark.own_boot, pytest.mark.kernel_timeout(2400)]
KEPT = Path("/results/faults")  # kept with --kernel-vm-keep: the source of docs/reliability.md's table


def test_every_fault_of_the_matrix_holds_the_rule(tmp_path: Path,
                                                  record_property: Callable[[str, object], None]) -> None:
    out = KEPT if KEPT.parent.is_dir() else tmp_path
    res = subprocess.run(["dpfreeze", "lab", "faults", "--out", str(out)], capture_output=True, text=True,
                         timeout=2300, check=False)
    record_property("table", res.stdout)
    assert "Traceback" not in res.stderr, res.stderr
    assert (out / "faults.json").exists(), res.stdout[-3000:] + res.stderr[-3000:]
    cells = json.loads((out / "faults.json").read_text())["cells"]
    assert len(cells) >= 25
    broken = [f"{c['group']}: {c['name']}: {c['said']}" for c in cells if not c["held"]]
    assert not broken, res.stdout
    assert res.returncode == 0, res.stdout + res.stderr
    clean = next(c for c in cells if c["group"] == "none")
    assert not any(clean["lost"].values()), clean  # the plain upgrade in the same run lost nothing
