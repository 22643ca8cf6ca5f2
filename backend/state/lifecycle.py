"""Instance lifecycle: the states a machine can be in and the moves between them.

Eight states follow a machine through its own life (creating ... failed); two more say
what happened to it from outside: `broken` (its files on disk cannot be read) and
`crashed` (its process died unexpectedly, or vanished while boxui was down). Keeping the
legal moves in one table lets the reducer reject a nonsensical event with a precise
error instead of drifting into a made-up state.
"""

from __future__ import annotations

from enum import StrEnum


class InstanceState(StrEnum):
    CREATING = "creating"
    BOOTING = "booting"
    READY = "ready"
    BUSY = "busy"
    DRAINING = "draining"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"
    BROKEN = "broken"
    CRASHED = "crashed"


class PersistedState(StrEnum):
    """What of a machine's state survives a restart of boxui: never started, running or
    stopped, nothing finer. `ready` or `busy` describe a live process that a restarted
    boxui cannot vouch for, so a machine saved as running is probed before it is believed.
    """

    CREATED = "created"
    RUNNING = "running"
    STOPPED = "stopped"

    @property
    def needs_recovery(self) -> bool:
        """True when the machine was running as its supervisor stopped: it must be probed."""
        return self is PersistedState.RUNNING


S = InstanceState

#: states in which a hypervisor process may exist
ACTIVE_STATES = frozenset({S.BOOTING, S.READY, S.BUSY, S.DRAINING, S.STOPPING})


def persisted_state(state: InstanceState, *, ever_started: bool) -> PersistedState:
    if state in ACTIVE_STATES:
        return PersistedState.RUNNING
    if state is S.CREATING or (state is S.STOPPED and not ever_started):
        return PersistedState.CREATED
    return PersistedState.STOPPED


class Verb(StrEnum):
    """The verb of an event type `dev.boxui.instance.v1.<verb>`."""

    CREATING = "creating"
    CREATED = "created"
    BOOTING = "booting"
    READY = "ready"
    BUSY = "busy"
    IDLE = "idle"
    DRAINING = "draining"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"
    CRASHED = "crashed"
    BROKEN = "broken"
    REPAIRED = "repaired"
    ADOPTED = "adopted"
    DELETED = "deleted"


#: the state each verb leads to (None: the machine leaves the projection)
TARGET: dict[Verb, InstanceState | None] = {
    Verb.CREATING: S.CREATING,
    Verb.CREATED: S.STOPPED,
    Verb.BOOTING: S.BOOTING,
    Verb.READY: S.READY,
    Verb.BUSY: S.BUSY,
    Verb.IDLE: S.READY,
    Verb.DRAINING: S.DRAINING,
    Verb.STOPPING: S.STOPPING,
    Verb.STOPPED: S.STOPPED,
    Verb.FAILED: S.FAILED,
    Verb.CRASHED: S.CRASHED,
    Verb.BROKEN: S.BROKEN,
    Verb.REPAIRED: S.STOPPED,
    Verb.ADOPTED: S.READY,
    Verb.DELETED: None,
}

_ANY_KNOWN = frozenset(S)
_RESTING = frozenset({S.STOPPED, S.FAILED, S.CRASHED, S.BROKEN})

#: from which states each verb may be applied; None stands for "no such machine yet"
ALLOWED_FROM: dict[Verb, frozenset[InstanceState | None]] = {
    Verb.CREATING: frozenset({None}),
    # from None: a machine directory found on disk that the log does not know yet
    Verb.CREATED: frozenset({S.CREATING, None}),
    Verb.BOOTING: frozenset({S.CREATING, S.STOPPED, S.FAILED, S.CRASHED}),
    Verb.READY: frozenset({S.BOOTING}),
    Verb.BUSY: frozenset({S.READY}),
    Verb.IDLE: frozenset({S.BUSY}),
    Verb.DRAINING: frozenset({S.READY, S.BUSY}),
    Verb.STOPPING: frozenset({S.BOOTING, S.READY, S.BUSY, S.DRAINING}),
    Verb.STOPPED: frozenset({S.STOPPING}),
    Verb.FAILED: frozenset({S.CREATING, S.BOOTING, S.READY, S.BUSY, S.DRAINING, S.STOPPING,
                            S.CRASHED}),
    Verb.CRASHED: ACTIVE_STATES,
    Verb.BROKEN: _ANY_KNOWN - {S.BROKEN},
    Verb.REPAIRED: frozenset({S.BROKEN}),
    # re-adoption after a supervisor restart: the process was confirmed alive
    Verb.ADOPTED: ACTIVE_STATES,
    Verb.DELETED: _RESTING | {S.CREATING},
}


def is_allowed(verb: Verb, current: InstanceState | None) -> bool:
    return current in ALLOWED_FROM[verb]
