"""Other hosts as contexts: the registry of hosts, and how boxui reaches each kind."""
