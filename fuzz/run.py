"""Fuzz one target with atheris, or replay inputs through it.

  python fuzz/run.py TARGET [--runs N] [--seconds S]     coverage-guided, from fuzz/corpus/TARGET
  python fuzz/run.py TARGET --replay FILE...             run the given inputs once each

New inputs that reach new code are written to fuzz/corpus/TARGET, or to --out DIR (CI's short runs);
a crash is written as crash-* in the working directory and should become a test.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target")
    ap.add_argument("--runs", type=int, default=0, help="stop after N inputs (0: no limit)")
    ap.add_argument("--seconds", type=int, default=0, help="stop after S seconds (0: no limit)")
    ap.add_argument("--replay", nargs="+", type=Path, metavar="FILE")
    ap.add_argument("--out", type=Path, help="write new inputs here instead of into fuzz/corpus/TARGET")
    args = ap.parse_args()
    import atheris

    # Coverage of our own code only: instrumenting every loaded module (instrument_all) costs a minute of
    # start-up and guides the fuzzer into the standard library's corners instead of ours.
    with atheris.instrument_imports(include=["dpif", "dpfreeze"]):
        import targets  # after sys.path: the harness beside this file

    if args.target not in targets.TARGETS:
        ap.error(f"unknown target {args.target!r}: {', '.join(targets.TARGETS)}")
    if args.replay:
        for path in args.replay:
            targets.check(args.target, path.read_bytes())
        print(f"{args.target}: {len(args.replay)} inputs, no crash")
        return 0
    corpus = HERE / "corpus" / args.target
    found = args.out or corpus  # libFuzzer writes new inputs into its first corpus directory
    found.mkdir(parents=True, exist_ok=True)
    argv = [sys.argv[0], str(found), *([str(corpus)] if found != corpus else []),
            "-max_len=8192", "-timeout=10"]
    argv += [f"-runs={args.runs}"] if args.runs else []
    argv += [f"-max_total_time={args.seconds}"] if args.seconds else []
    atheris.Setup(argv, lambda data: targets.check(args.target, data))
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
