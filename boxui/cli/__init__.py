"""The `boxui` command line. `main` is the entry point; each command group imports what
it needs when it runs, so `boxui ls` does not pay for SSH or the app."""
