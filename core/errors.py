"""Errors that carry a message meant for the person using the app.

`core/` raises `UserError` for anything the user can fix (bad input, a missing model, too
large a size); the tabs turn it into `gr.Error` with the same text. Any other exception is a
bug or an environment failure and is reported as such.
"""


class UserError(ValueError):
    """Something the user can fix; the message says what and how."""


class Cancelled(Exception):
    """Raised inside a running job when the user pressed Stop, or when the job was stopped for
    another reason (`reason`: a message for the user, e.g. a time limit; None for a Stop)."""

    reason: str | None = None
