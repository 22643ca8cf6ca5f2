"""boxui: a terminal manager for local microVMs (the app and the CLI)."""

__version__ = "0.1.0"
