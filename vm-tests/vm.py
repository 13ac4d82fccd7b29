#!/usr/bin/env python3
"""Command line for the test VM: `vm.py run [--timeout S] [--keep DIR] -- 'shell command'`.

Prints the guest command's output as it arrives and exits with its status; a guest that never reports a
status (panic, hang, timeout) prints the console log and exits 125.  `vm.py prepare` fetches the kernel,
builds the initrd and probes KVM, so a later run only boots.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ovsdebs
import vmharness


def _echo(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vm.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run a bash command in a fresh VM")
    run.add_argument("--timeout", type=float, default=600.0, help="seconds before the VM is killed")
    run.add_argument("--keep", type=Path, help="results directory (/results in the guest); kept afterwards")
    run.add_argument("--env", action="append", default=[], metavar="K=V", help="extra guest environment")
    run.add_argument("--smp", type=int, default=2)
    run.add_argument("--mem", default="1G")
    run.add_argument("-q", "--quiet", action="store_true", help="no boot summary on stderr")
    run.add_argument("--systemd", action="store_true",
                     help="systemd as PID 1 (Debian's openvswitch units started; the command is a service)")
    run.add_argument("command", nargs="+", help="the command (joined with spaces, run by bash)")
    sub.add_parser("prepare", help="fetch the kernel and the OVS packages, build the initrd, probe KVM")
    debs = sub.add_parser("debs", help="print a cached OVS release's .deb files in dpkg's order")
    debs.add_argument("release", choices=sorted(ovsdebs.RELEASES))
    args = parser.parse_args(argv)

    if args.cmd == "debs":
        release = ovsdebs.fetch(vmharness.cache_dir(), (args.release,))[args.release]
        print(" ".join(ovsdebs.debs(release, args.release)))
        return 0

    if args.cmd == "prepare":
        kernel = vmharness.resolve_kernel()
        initrd = vmharness.build_initrd(kernel)
        print(f"kernel {kernel.version} ({kernel.root})\ninitrd {initrd}")
        print(f"accel {vmharness.choose_accel(kernel, initrd)}")
        for name, debs in ovsdebs.fetch(vmharness.cache_dir()).items():
            print(f"ovs {name} {debs}")
        for name, debs in ovsdebs.fetch(vmharness.cache_dir(), tuple(ovsdebs.TOOLS)).items():
            print(f"tool {name} {debs}")
        print(f"wheels {vmharness.wheelhouse()}")
        return 0

    env = dict(item.split("=", 1) for item in args.env)
    results = args.keep or Path(tempfile.mkdtemp(prefix="dpfreeze-vm-"))
    try:
        res = vmharness.run_in_vm(
            " ".join(args.command),
            timeout=args.timeout,
            env=env,
            results=results,
            smp=args.smp,
            mem=args.mem,
            on_output=_echo,
            init="systemd" if args.systemd else "busybox",
        )
    except (vmharness.VMError, OSError, subprocess.SubprocessError) as exc:
        print(f"vm.py: {exc}", file=sys.stderr)
        return 125
    finally:
        if not args.keep:
            shutil.rmtree(results, ignore_errors=True)
    if not args.quiet:
        print(
            f"vm.py: kernel {res.kernel}, {res.accel}, command started at guest uptime {res.boot} s, "
            f"rc={res.rc}, wall {res.wall:.1f} s",
            file=sys.stderr,
        )
    return res.rc


if __name__ == "__main__":
    sys.exit(main())
