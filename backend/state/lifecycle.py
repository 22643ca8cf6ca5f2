"""Instance lifecycle: the states a machine can be in and the moves between them.

Eight states follow a machine through its own life (creating ... failed); two more say
what happened to it from outside: `broken` (its files on disk cannot be read) and
`crashed` (its process died unexpectedly, or vanished while boxui was down). Two say that
a running machine stopped answering: `unresponsive` (its hypervisor's QMP is silent: a
hung or SIGSTOPped QEMU) and `unhealthy` (its guest fails its liveness probe). They are
states rather than a note on `ready` because they are what a user reading `ls` must see:
the process still runs and holds its ports, but nothing in it answers. Both are
interruptions: `recovered` returns the machine to where it was (see the projection).
Keeping the legal moves in one table lets the reducer reject a nonsensical event with a
precise error instead of drifting into a made-up state.
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
    UNRESPONSIVE = "unresponsive"
    UNHEALTHY = "unhealthy"


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
ACTIVE_STATES = frozenset({S.BOOTING, S.READY, S.BUSY, S.DRAINING, S.STOPPING,
                           S.UNRESPONSIVE, S.UNHEALTHY})

#: a running machine that stopped answering; `recovered` ends the interruption
INTERRUPTED_STATES = frozenset({S.UNRESPONSIVE, S.UNHEALTHY})

#: states whose reason (an error) is worth showing to a user
STATES_WITH_REASON = frozenset({S.FAILED, S.CRASHED, S.BROKEN, S.UNRESPONSIVE, S.UNHEALTHY})


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
    UNRESPONSIVE = "unresponsive"
    UNHEALTHY = "unhealthy"
    RECOVERED = "recovered"


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
    Verb.UNRESPONSIVE: S.UNRESPONSIVE,
    Verb.UNHEALTHY: S.UNHEALTHY,
    # back to where the interruption found it: ready, or draining (see `resume_state`)
    Verb.RECOVERED: S.READY,
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
    Verb.STOPPING: frozenset({S.BOOTING, S.READY, S.BUSY, S.DRAINING, *INTERRUPTED_STATES}),
    Verb.STOPPED: frozenset({S.STOPPING}),
    Verb.FAILED: frozenset({S.CREATING, S.BOOTING, S.READY, S.BUSY, S.DRAINING, S.STOPPING,
                            S.CRASHED, *INTERRUPTED_STATES}),
    Verb.CRASHED: ACTIVE_STATES,
    Verb.BROKEN: _ANY_KNOWN - {S.BROKEN},
    Verb.REPAIRED: frozenset({S.BROKEN}),
    # re-adoption after a supervisor restart: the process was confirmed alive
    Verb.ADOPTED: ACTIVE_STATES,
    Verb.DELETED: _RESTING | {S.CREATING},
    # a hypervisor whose QMP went silent; an unhealthy guest's QEMU may hang too
    Verb.UNRESPONSIVE: frozenset({S.READY, S.BUSY, S.DRAINING, S.UNHEALTHY}),
    # a draining instance is on its way out: its guest's liveness no longer matters
    Verb.UNHEALTHY: frozenset({S.READY, S.BUSY}),
    Verb.RECOVERED: INTERRUPTED_STATES,
}


def resume_state(before: InstanceState) -> InstanceState:
    """Where `recovered` returns a machine interrupted in `before`. Busy comes back as
    ready: the commands in flight then may have ended meanwhile (nothing marks a machine
    idle while it is interrupted), and a later command marks it busy again."""
    return S.DRAINING if before is S.DRAINING else S.READY



def is_allowed(verb: Verb, current: InstanceState | None) -> bool:
    return current in ALLOWED_FROM[verb]
