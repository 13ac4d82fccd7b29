"""`dpfreeze dpctl` against `ovs-dpctl` on the real kernel datapath: same input, same output.

The CLI runs in-process (`dpfreeze.cli.main.main`): Python start-up under TCG costs seconds per call.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dpfreeze.cli.main import main
from dpif.netlink.flowtext import strip_stats

pytestmark = pytest.mark.kernel

DP = "tpcli0"
CORPUS = Path(__file__).resolve().parent.parent / "data" / "flow-corpus.txt"
SMALL = [
    "ufid:00000000-0000-0000-0000-0000000000a1,in_port(1),eth(),eth_type(0x0800),"
    "ipv4(src=10.0.0.1,frag=no) 2",
    "in_port(2),eth(src=00:00:00:00:00:01,dst=00:00:00:00:00:02),eth_type(0x0806),"
    "arp(sip=10.0.0.2,tip=10.0.0.1,op=1,sha=00:00:00:00:00:01,tha=00:00:00:00:00:00) 1",
    "recirc_id(0x3),in_port(1),eth(),eth_type(0x0800),ipv4(src=10.0.0.0/255.0.0.0,frag=no) 2,1",
]


def sh(cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    assert not check or res.returncode == 0, f"{cmd}: {res.stderr.strip()}"
    return res


def ours(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["dpctl", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def dpctl_lines(*args: str) -> list[str]:
    return [strip_stats(line) for line in sh("ovs-dpctl " + " ".join(args)).stdout.splitlines()]


@pytest.fixture
def dp(tmp_path: Path) -> Iterator[Path]:
    """An empty datapath with two ports (names for -m output); yields a file with the SMALL flows."""
    sh(f"ovs-dpctl del-dp {DP}", check=False)
    sh(f"ovs-dpctl add-dp {DP} && ovs-dpctl add-if {DP} tpcp1,type=internal")
    sh(f"ovs-dpctl add-if {DP} tpcp2,type=internal")
    flows = tmp_path / "small.txt"
    flows.write_text("# three flows\n" + "\n".join(SMALL) + "\n")
    try:
        yield flows
    finally:
        sh(f"ovs-dpctl del-dp {DP}", check=False)


def counters_masked(text: str) -> str:
    """Lookup and mask-hit counters move with stray traffic between the two commands."""
    return re.sub(r"(hit|missed|lost|hit/pkt):[0-9.]+", r"\1:N", text)


def test_show_and_dump_dps(dp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert counters_masked(ours(capsys, "show")[1]) == counters_masked(sh("ovs-dpctl show").stdout)
    theirs = sh(f"ovs-dpctl show system@{DP}").stdout
    assert counters_masked(ours(capsys, "show", f"system@{DP}")[1]) == counters_masked(theirs)
    assert "port 2: tpcp2 (internal)" in theirs
    assert ours(capsys, "dump-dps")[1] == sh("ovs-dpctl dump-dps").stdout


def test_corpus_dump_identical(dp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """>= 200 varied flows added by ovs-dpctl: our dump-flows (and -m) prints what ovs-dpctl prints."""
    assert len([ln for ln in CORPUS.read_text().splitlines() if ln.strip() and not ln.startswith("#")]) >= 200
    res = sh(f"ovs-dpctl add-flows {DP} {CORPUS}", check=False)
    assert "Failed" not in res.stderr, res.stderr
    theirs = dpctl_lines("dump-flows", DP)
    assert len(theirs) >= 200
    rc, out, _ = ours(capsys, "dump-flows", DP)
    assert rc == 0
    assert [strip_stats(line) for line in out.splitlines()] == theirs
    rc, out, _ = ours(capsys, "-m", "dump-flows", DP)
    assert [strip_stats(line) for line in out.splitlines()] == dpctl_lines("-m", "dump-flows", DP)


def test_corpus_added_by_us_reads_back_identical(dp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sh(f"ovs-dpctl add-flows {DP} {CORPUS}")
    reference = sorted(dpctl_lines("dump-flows", DP))
    sh(f"ovs-dpctl del-flows {DP}")
    rc, _, err = ours(capsys, "add-flows", DP, str(CORPUS))
    assert (rc, err) == (0, "")
    assert sorted(dpctl_lines("dump-flows", DP)) == reference


def test_add_flows_reports_each_refused_flow(dp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The C encoder's batches carry one ack per chunk: a refusal must still come back for its own flow,
    and every flow that was not refused must be in."""
    lines = [ln for ln in CORPUS.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    half = dp.parent / "half.txt"
    half.write_text("\n".join(lines[::2]) + "\n")
    sh(f"ovs-dpctl add-flows {DP} {CORPUS}")
    reference = sorted(dpctl_lines("dump-flows", DP))
    sh(f"ovs-dpctl del-flows {DP}")
    sh(f"ovs-dpctl add-flows {DP} {half}")
    theirs = sh(f"ovs-dpctl add-flows {DP} {CORPUS}", check=False)
    sh(f"ovs-dpctl del-flows {DP}")
    sh(f"ovs-dpctl add-flows {DP} {half}")
    rc, _, err = ours(capsys, "add-flows", DP, str(CORPUS))
    assert err.count("File exists") == len(lines[::2]) > 100
    assert [ln.split(": ", 1)[1] for ln in err.splitlines()] == [
        ln.split(": ", 1)[1] for ln in theirs.stderr.splitlines()]
    assert (theirs.returncode, rc) == (0, 1)  # ovs-dpctl exits 0 after refused flows; a script needs to know
    assert sorted(dpctl_lines("dump-flows", DP)) == reference


def test_flow_commands(dp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert ours(capsys, "add-flows", str(dp))[0] == 0  # DP omitted: the only datapath
    assert sorted(dpctl_lines("dump-flows")) == sorted(line for line in dpctl_lines("dump-flows", DP))
    assert len(dpctl_lines("dump-flows")) == 3
    ufid = SMALL[0].split(",", 1)[0]
    rc, out, _ = ours(capsys, "get-flow", ufid)
    assert rc == 0 and strip_stats(out) == strip_stats(sh(f"ovs-dpctl get-flow {ufid}").stdout)
    key, actions = SMALL[1].rsplit(" ", 1)
    assert ours(capsys, "del-flow", DP, key)[0] == 0
    assert len(dpctl_lines("dump-flows")) == 2
    assert ours(capsys, "add-flow", key, actions)[0] == 0
    rc, _, err = ours(capsys, "add-flow", key, actions)
    assert rc == 1 and err.count("\n") == 1 and "File exists" in err
    assert ours(capsys, "del-flows")[0] == 0
    assert dpctl_lines("dump-flows") == []


def test_bad_input_is_one_line_and_changes_nothing(dp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sh(f"ovs-dpctl add-flows {DP} {dp}")
    before = sorted(dpctl_lines("dump-flows", DP))
    for argv in (
        ("add-flow", DP, "in_port(1),nonsense(3)", "2"),
        ("add-flow", DP, "in_port(1)", "frobnicate"),
        ("get-flow", DP, "ufid:nope"),
        ("dump-flows", "tpnosuchdp"),
    ):
        rc, out, err = ours(capsys, *argv)
        assert rc != 0 and out == "" and err.count("\n") == 1, (argv, err)
    assert sorted(dpctl_lines("dump-flows", DP)) == before


def test_cli_process_exit_status(dp: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "dpfreeze.cli", "dpctl", "del-flow", DP, "in_port(9)"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1
    assert res.stderr.splitlines()[-1].startswith("dpfreeze: error: deleting flow")
