"""The fuzz targets (fuzz/targets.py): the kept corpus replays clean, and each target survives a short
coverage-guided run (atheris) from it.  The long runs and their figures: docs/reliability.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parents[1] / "fuzz"
sys.path.insert(0, str(FUZZ))

import targets  # noqa: E402  (the harness lives beside fuzz/run.py, not in the package)

SHORT_SECONDS = 10  # per target in CI; the documented long runs go much further


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_the_corpus_replays_clean(name: str) -> None:
    inputs = sorted((FUZZ / "corpus" / name).iterdir())
    assert inputs, f"no corpus for {name}"
    for path in inputs:
        targets.check(name, path.read_bytes())


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_a_short_coverage_guided_run_finds_nothing(name: str, tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    res = subprocess.run([sys.executable, str(FUZZ / "run.py"), name, "--seconds", str(SHORT_SECONDS),
                          "--out", str(tmp_path / "found")], cwd=tmp_path, capture_output=True, text=True,
                         timeout=600)
    crashes = list(tmp_path.glob("crash-*")) + list(tmp_path.glob("timeout-*"))
    assert res.returncode == 0 and not crashes, res.stderr[-3000:]


@pytest.mark.parametrize("data", [b"\x00" * 3, b"\xff" * 64, b"{" * 100_000, b"[" * 100_000,
                                  b'{"id":1,"cmd":"status"}\n' * 3])
def test_odd_inputs_are_refusals_not_crashes(data: bytes) -> None:
    for name in targets.TARGETS:
        targets.check(name, data)


@pytest.mark.parametrize("path", sorted((Path(__file__).parent / "data" / "fuzz-crashes").iterdir()),
                         ids=lambda p: p.name)
def test_what_the_fuzzer_found_stays_fixed(path: Path) -> None:
    """Each file is an input that once crashed its target (the name says which and why)."""
    targets.check(path.name.split("-", 1)[0], path.read_bytes())
