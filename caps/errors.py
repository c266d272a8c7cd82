"""The `caps` exception family and the reason codes a verification can fail with.

Verification fails closed with exactly one error type, `TokenError`, whose `reason` says why. Callers
branch on the reason, never on the message text (which is for people and may change).
"""

from __future__ import annotations

import enum


class Reason(enum.StrEnum):
    """Why a token was refused (or, for `NOT_ALLOWED`, why a request under a valid token was)."""

    MALFORMED = "malformed"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    REVOKED = "revoked"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    WRONG_AUDIENCE = "wrong_audience"
    SEALED = "sealed"
    NOT_ALLOWED = "not_allowed"


class CapsError(Exception):
    """Base of every error `caps` raises on purpose; `str(err)` is a one-line lowercase message."""

    def __init__(self, message: str, help: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.help = help


class TokenError(CapsError):
    """A token is not valid (or cannot be attenuated). `reason` is the machine-readable cause."""

    def __init__(self, reason: Reason, message: str, help: str | None = None) -> None:
        super().__init__(message, help)
        self.reason = reason

    def __repr__(self) -> str:
        return f"TokenError({self.reason.value!r}, {self.message!r})"


class RightError(CapsError):
    """A right given to mint or attenuate does not parse (bad op, bad glob, bad endpoint pattern)."""


class KeyFileError(CapsError):
    """A host key file is missing, malformed, or readable by group or others."""


class RevocationListError(CapsError):
    """A revocation list file is unreadable or malformed, or would roll a verifier's epoch back."""
