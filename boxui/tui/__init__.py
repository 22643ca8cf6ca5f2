"""The Textual app: screens, widgets, themes, the demo, and the two backends it runs
over (the engine in-process, or a daemon's control API)."""
