"""What boxui knows, on disk and in memory: the state dir and its lock, each machine's
spec and runtime record, the append-only event log, the projection of states derived
from it, and the engine that keeps all of them consistent.

Everything above (drivers, supervision, services, the API) changes a machine only
through `engine.Engine`; nothing here starts a process or talks to a guest.
"""
