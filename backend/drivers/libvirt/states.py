"""libvirt's domain states and lifecycle events, as boxui's machine states.

Pure, with libvirt's enum values spelled out (they are part of its stable ABI), so the
mapping is tested without libvirt. libvirt knows whether a domain runs, not whether its
guest is up: a boxui domain is `booting` until its console prints the ready marker; a
foreign domain, whose guest boxui cannot judge, shows `ready` while libvirt says running.
"""

from __future__ import annotations

from dataclasses import dataclass

from backend.state.lifecycle import InstanceState

S = InstanceState

# virDomainState
NOSTATE, RUNNING, BLOCKED, PAUSED, SHUTDOWN, SHUTOFF, CRASHED, PMSUSPENDED = range(8)
# virDomainShutoffReason
SHUTOFF_CRASHED, SHUTOFF_FAILED = 3, 6
# virDomainPausedReason
PAUSED_STARTING_UP = 11
# virDomainEventType
(EVENT_DEFINED, EVENT_UNDEFINED, EVENT_STARTED, EVENT_SUSPENDED, EVENT_RESUMED,
 EVENT_STOPPED, EVENT_SHUTDOWN, EVENT_PMSUSPENDED, EVENT_CRASHED) = range(9)
# virDomainEventStoppedDetailType
STOPPED_CRASHED, STOPPED_FAILED = 2, 5

_SHUTOFF_REASONS = {0: "", 1: "shut down", 2: "destroyed", 3: "crashed",
                    4: "migrated", 5: "saved", 6: "failed to start", 7: "from snapshot",
                    8: "daemon went away"}


@dataclass(frozen=True)
class MappedState:
    state: InstanceState
    reason: str


def _running(boxui: bool, ready_seen: bool) -> MappedState:
    if not boxui:
        return MappedState(S.READY, "running (libvirt)")
    if ready_seen:
        return MappedState(S.READY, "")
    return MappedState(S.BOOTING, "")


def map_domain_state(state: int, reason: int, *, boxui: bool,
                     ready_seen: bool) -> MappedState:
    """A domain's `virDomainGetState` (state, reason) as a boxui state and reason."""
    if state in (RUNNING, BLOCKED):
        return _running(boxui, ready_seen)
    if state == PAUSED:
        if reason == PAUSED_STARTING_UP:
            return MappedState(S.BOOTING, "")
        return MappedState(S.UNRESPONSIVE, "paused in libvirt")
    if state == SHUTDOWN:
        return MappedState(S.STOPPING, "")
    if state == SHUTOFF:
        if reason == SHUTOFF_CRASHED:
            return MappedState(S.CRASHED, "crashed (libvirt)")
        if reason == SHUTOFF_FAILED:
            return MappedState(S.FAILED, "failed to start (libvirt)")
        return MappedState(S.STOPPED, _SHUTOFF_REASONS.get(reason, ""))
    if state == CRASHED:
        return MappedState(S.CRASHED, "crashed (libvirt)")
    if state == PMSUSPENDED:
        return MappedState(S.UNRESPONSIVE, "suspended by the guest (libvirt)")
    return MappedState(S.FAILED, f"libvirt reports no state ({state})")


def map_event(event: int, detail: int, *, boxui: bool,
              ready_seen: bool) -> MappedState | None:
    """A lifecycle event's new state; None when the domain is gone (undefined)."""
    if event == EVENT_UNDEFINED:
        return None
    if event in (EVENT_STARTED, EVENT_RESUMED):
        return _running(boxui, ready_seen)
    if event == EVENT_SUSPENDED:
        return MappedState(S.UNRESPONSIVE, "paused in libvirt")
    if event == EVENT_SHUTDOWN:
        return MappedState(S.STOPPING, "")
    if event == EVENT_STOPPED:
        if detail == STOPPED_CRASHED:
            return MappedState(S.CRASHED, "crashed (libvirt)")
        if detail == STOPPED_FAILED:
            return MappedState(S.FAILED, "failed (libvirt)")
        return MappedState(S.STOPPED, "")
    if event == EVENT_CRASHED:
        return MappedState(S.CRASHED, "crashed (libvirt)")
    if event == EVENT_PMSUSPENDED:
        return MappedState(S.UNRESPONSIVE, "suspended by the guest (libvirt)")
    if event == EVENT_DEFINED:
        return MappedState(S.STOPPED, "")
    return MappedState(S.FAILED, f"unknown libvirt event {event}")
