"""The operator-facing refusal, shared by the library and the command line (which prints it as one line)."""


class UserError(Exception):
    """A refused command: printed as one line, exit status 1; nothing was changed."""
