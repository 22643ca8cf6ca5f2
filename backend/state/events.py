"""Events in CloudEvents 1.0 form.

Every change to a machine is recorded as one of these, so any consumer (the app, `boxui
events`, a future API client, or a replay after a crash) sees the same facts in a standard
envelope that off-the-shelf tooling understands.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from backend.state.lifecycle import TARGET, InstanceState, Verb

SOURCE = "/boxui/supervisor"
INSTANCE_TYPE_PREFIX = "dev.boxui.instance.v1."


def instance_type(verb: Verb) -> str:
    return INSTANCE_TYPE_PREFIX + verb.value


def verb_of(event_type: str) -> Verb | None:
    """The lifecycle verb of an instance event type, or None for other event kinds."""
    if not event_type.startswith(INSTANCE_TYPE_PREFIX):
        return None
    try:
        return Verb(event_type[len(INSTANCE_TYPE_PREFIX):])
    except ValueError:
        return None


class CloudEvent(BaseModel):
    """A CloudEvents 1.0 event with a JSON `data` payload."""

    model_config = ConfigDict(frozen=True, extra="allow")

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(min_length=1)
    source: str = Field(min_length=1)
    type: str = Field(min_length=1)
    time: datetime
    subject: str | None = None
    datacontenttype: Literal["application/json"] = "application/json"
    data: dict[str, Any] = Field(default_factory=dict)

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    @property
    def message(self) -> str:
        value = self.data.get("message", "")
        return value if isinstance(value, str) else str(value)


def now_utc() -> datetime:
    return datetime.now(UTC)


def new_instance_event(
    machine: str,
    verb: Verb,
    *,
    from_state: InstanceState | None,
    message: str = "",
    reason: str | None = None,
    extra: dict[str, Any] | None = None,
    time: datetime | None = None,
    event_id: str | None = None,
) -> CloudEvent:
    """An instance lifecycle event: from and to states, so a consumer needs no history to
    read one, and a message a person can read."""
    target = TARGET[verb]
    data: dict[str, Any] = {
        "machine": machine,
        "from": from_state.value if from_state is not None else None,
        "to": target.value if target is not None else None,
        "message": message,
    }
    if reason is not None:
        data["reason"] = reason
    if extra:
        data.update(extra)
    return CloudEvent(
        id=event_id or str(uuid.uuid4()),
        source=SOURCE,
        type=instance_type(verb),
        time=time or now_utc(),
        subject=machine,
        data=data,
    )
