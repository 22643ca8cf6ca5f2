"""The long-lived supervisor process (`serve`), starting it in the background when a
command needs it (`spawn`), stopping it (`control`), and the client the CLI and app use
to reach it over its unix socket (`client`)."""
