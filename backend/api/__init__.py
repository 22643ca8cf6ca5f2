"""boxui's control API: HTTP+JSON on a unix socket in the private run dir."""
