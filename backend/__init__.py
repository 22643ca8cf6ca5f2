"""boxui's engine: persisted machines, the event log, the state projection and supervision.

This package must stay usable with no UI: it never imports `textual` or `boxui`
(an import-linter contract in pyproject.toml enforces it).
"""
