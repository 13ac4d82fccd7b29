"""One way to run a tool (ovs-ofctl, ovs-vsctl, modprobe, a restart command): under a deadline, in OVS's
environment, its failure one line naming the tool and what it said on stderr."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import trio


class CommandFailed(OSError):
    """A tool that is missing, did not answer in time, or (when checked) exited non-zero."""

    def __init__(self, argv: Sequence[str], why: str, returncode: int | None = None) -> None:
        super().__init__(f"{argv[0]}: {why}")
        self.argv = tuple(argv)
        self.why = why
        self.returncode = returncode


@dataclass(frozen=True)
class Finished:
    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def why(self) -> str:
        """The last line the tool wrote to stderr (without its "tool: " prefix), or its exit status."""
        err = self.stderr.decode(errors="replace").strip().splitlines()
        return err[-1].removeprefix(f"{self.argv[0]}: ") if err else f"exit status {self.returncode}"

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")


async def run(argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None,
              stdin: bytes = b"", check: bool = True, executable: str | None = None) -> Finished:
    """Run `argv` to completion with stdout and stderr captured; `env` is added to this process's own;
    `executable`, when given, is the file run under the name argv[0].

    Raises CommandFailed when the tool is missing, still runs after `timeout` s (it is killed), or, with
    `check`, exits non-zero."""
    argv = tuple(argv)
    try:
        with trio.fail_after(timeout):
            proc = await trio.run_process(list(argv), stdin=stdin, capture_stdout=True, capture_stderr=True,
                                          check=False, env={**os.environ, **env} if env else None,
                                          executable=executable)
    except trio.TooSlowError:
        raise CommandFailed(argv, f"no answer within {timeout:g} s") from None
    except FileNotFoundError:
        raise CommandFailed(argv, "not found (is it installed?)") from None
    done = Finished(argv, proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode:
        raise CommandFailed(argv, done.why, proc.returncode)
    return done
