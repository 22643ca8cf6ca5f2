"""The names that say which host a command acts on, apart from the registry: every
`boxui ls` checks them, and must not pay for pydantic to learn that it acts locally."""

LOCAL = "local"
CURRENT_FILE = "current-host"
#: what selects a host for one command when `--host` is not given
HOST_ENV = "BOXUI_HOST"
