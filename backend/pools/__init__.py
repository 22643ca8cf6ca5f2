"""Warm pools: restored, idle machines of a template variant, claimed by `create`,
`run` and service scale-up instead of restoring while the caller waits."""
