"""The long-lived supervisor process (`serve`), the client the CLI and app use to reach
it over its unix socket (`client`), and the supervisor context shared by both
(`supervised`)."""
