"""Error hierarchy: retryability lives in the type.

Terminal errors go to the dead-letter topic (or stop the process at start-up); transient errors
are retried with backoff. Every message names what it concerns and, where there is one, the fix.
"""

from __future__ import annotations


class SyncError(Exception):
    """Root of every error this project raises on purpose."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        """The error as one line for a terminal, with the hint if there is one."""
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class ConfigError(SyncError):
    """Bad or missing configuration, detected at start."""


class PreflightError(SyncError):
    """A required binary, port or server property is missing or wrong."""


class TerminalError(SyncError):
    """Retrying will not help: the input or the state is invalid."""


class TransientError(SyncError):
    """Retrying later may succeed (a server down, a timeout)."""
