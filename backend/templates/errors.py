"""Template errors, each one line a user can act on."""

from __future__ import annotations

from backend.errors import BoxuiError


class TemplateError(BoxuiError):
    code = "template"


class TemplateNotFoundError(TemplateError):
    code = "template_not_found"


class SnapshotMismatchError(TemplateError):
    """A snapshot cannot be restored as asked: restoring it anyway would corrupt the
    guest, and cold-booting instead would silently not be what was asked for."""

    code = "snapshot_mismatch"
