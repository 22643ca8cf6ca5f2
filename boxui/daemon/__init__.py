"""The long-lived supervisor process (`serve`), the client the CLI and app use to reach
it over its unix socket (`client`), and the supervisor a process owns itself
(`supervised`: the daemon's, or a CLI command's when no daemon runs)."""
