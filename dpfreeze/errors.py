"""The errors an operator reads: one line each, printed by the command line, never a traceback."""


class DpfreezeError(Exception):
    """A failure whose message is the whole story for the operator (exit status 1)."""


class UserError(DpfreezeError):
    """A refused command: printed as one line, exit status 1; nothing was changed."""
