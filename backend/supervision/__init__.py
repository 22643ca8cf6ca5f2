"""Keeping machines alive: booting them through a driver, watching them exit, restart
policies, re-adopting VMs after boxui itself crashed (`crash_recovery`), health
sampling, and commands run inside guests over SSH."""
