"""Other hosts in the app: one follower per host in the registry, each keeping a
snapshot of its host (reachable or not, why, when last seen, its machines), and the
`Fleet` that runs them and turns their snapshots into the table's rows."""
