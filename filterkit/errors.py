"""The errors filterkit reports to its user.

Every error carries a one-line message that says what is wrong, where, and how to fix it.
The CLI prints that line (never a traceback) and exits with ``exit_code``.
"""

from __future__ import annotations

from pathlib import Path


class FilterkitError(Exception):
    """Base of every error meant for the user; ``str(err)`` is the one line to print."""

    exit_code = 2


class InputError(FilterkitError):
    """Bad input from the user: a file, a key, an option. Says where and how to fix it."""

    def __init__(self, message: str, *, path: Path | str | None = None, line: int | None = None):
        self.path = Path(path) if path is not None else None
        self.line = line
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)


class ToolchainError(FilterkitError):
    """A tool filterkit needs (node, cargo, envoy, docker …) is missing or broken."""


class RunnerError(FilterkitError):
    """The test harness itself could not run (Envoy would not start, a port was taken …).

    Not a failure of the user's filter: those are results, not errors.
    """
