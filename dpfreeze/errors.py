"""The errors an operator reads: one line each, printed by the command line, never a traceback."""

from collections.abc import Iterator
from contextlib import contextmanager


class DpfreezeError(Exception):
    """A failure whose message is the whole story for the operator (exit status 1)."""


class UserError(DpfreezeError):
    """A refused command: printed as one line, exit status 1; nothing was changed."""


@contextmanager
def ungrouped() -> Iterator[None]:
    """Around a nursery of reads done side by side: its failure comes as an exception group, which no
    caller's `except OpenFlowError` (say) catches; the group's first error is raised alone instead (the
    others mostly share its cause: a daemon gone fails every dump).  The group may hold the cancellation
    of the reads still running (their caller was being cancelled as they failed, seen when a checkpoint's
    daemon died): the error still comes alone, and the cancellation, level-triggered, comes at the
    caller's next checkpoint.  Anything else (Ctrl-C) stays the group it came in."""
    try:
        yield
    except BaseExceptionGroup as group:
        import trio  # only where a nursery failed: `dpfreeze dpctl` imports this module and not trio

        errors, rest = group.split(Exception)
        if errors is None or (rest is not None and rest.split(trio.Cancelled)[1] is not None):
            raise
        first: BaseException = errors
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
