"""The one error type this package raises for anything a user can fix.

It is deliberately a plain `Exception` with a one-line message, so this package stays
independent of the rest of `backend/`; callers can wrap it into their own error tree.
"""

from __future__ import annotations


class GuestImageError(Exception):
    """A guest image, machine seed or host tool problem, told in one readable line."""

    code = "guest_image"

    def __str__(self) -> str:
        return " ".join(super().__str__().split())  # never more than one line
