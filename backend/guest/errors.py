"""The one error type this package raises for anything a user can fix.

It is deliberately a plain `Exception` with a one-line message, not a `BoxuiError`:
whoever builds an image or a seed decides what a failure means to its user (a boot that
fails, a template build that stops) and wraps it accordingly. A failed atomic write of
a file is the exception: it comes as `StorageError`, as it does everywhere else.
"""

from __future__ import annotations


class GuestImageError(Exception):
    """A guest image, machine seed or host tool problem, told in one readable line."""

    code = "guest_image"

    def __str__(self) -> str:
        return " ".join(super().__str__().split())  # never more than one line
