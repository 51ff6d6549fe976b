"""One exception type for every user-facing failure, so the CLI can print one line and exit non-zero."""

from __future__ import annotations


class FleetciError(Exception):
    """A failure the user can act on; its message is a single line."""

    exit_code = 1

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(" ".join(message.split()))
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(FleetciError):
    """Wrong flags or values: exit 2 like argparse."""

    exit_code = 2
