"""Bodies of `/v1/templates/builds`, kept apart from the routes so that the CLI can read
a build's stream without importing FastAPI."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from backend.templates.revision import TemplateKind

#: a template.toml is a few hundred bytes; this only bounds what a request can make us parse
MAX_TEMPLATE_TEXT = 1 << 20


class TemplateBuildRequest(BaseModel):
    """Exactly one of `template_id` and `text`."""

    model_config = ConfigDict(extra="forbid")

    template_id: str | None = Field(
        default=None, description="rebuild the template.toml last built under this id")
    text: str | None = Field(default=None, max_length=MAX_TEMPLATE_TEXT,
                             description="a template.toml's text")
    file_name: str = Field(default="template.toml", min_length=1, max_length=4096,
                           description="what messages call `text` (the client's path)")
    snapshot: bool = Field(default=False, description="boot each variant to ready and "
                           "save its memory (a driver that cannot builds an image template)")

    @field_validator("file_name")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if any(ch in value for ch in "\n\r\0"):
            raise ValueError("must be a single line without NUL")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> TemplateBuildRequest:
        if (self.template_id is None) == (self.text is None):
            raise ValueError("give exactly one of template_id and text")
        return self


class TemplateBuildResult(BaseModel):
    """What `boxui template build --json` prints."""

    template_id: str
    revision: str
    kind: TemplateKind
    cache_hit: bool = Field(description="built before from the same inputs: nothing built")
    previous: str | None = Field(description="the revision that was current before")
    cache_keys: dict[str, str] = Field(description="each variant's cache key, by role")
    notes: list[str] = Field(default_factory=list)


class TemplateBuildLine(BaseModel):
    """One line of a build's stream: `progress` lines (`message`), then exactly one
    `result` (`result`) or `error` (`code`, `message`, as every API error)."""

    type: Literal["progress", "result", "error"]
    message: str | None = None
    code: str | None = None
    result: TemplateBuildResult | None = None
