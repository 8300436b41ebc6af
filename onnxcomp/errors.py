"""User-facing errors: one line, actionable, turned into a non-zero exit by the CLI."""

from __future__ import annotations


class OnnxcompError(Exception):
    """An error caused by the user's input or request (bad file, bad size, bad data).

    The CLI prints ``str(error)`` on one line and exits with ``exit_code``; no traceback.
    """

    exit_code = 2


class TargetUnreachableError(OnnxcompError):
    """The requested size cannot be met; ``smallest_bytes`` says what can."""

    exit_code = 3

    def __init__(self, message: str, smallest_bytes: int | None = None):
        super().__init__(message)
        self.smallest_bytes = smallest_bytes


class FidelityError(OnnxcompError):
    """The compressed model falls below a user-set quality guard."""

    exit_code = 4
