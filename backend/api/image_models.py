"""Bodies of `/v1/images`, apart from the routes so the CLI reads them without FastAPI."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from backend.images.catalog import ImageListing
from backend.images.progress import Step

__all__ = ["ImageBuildLine", "ImageBuildRequest", "ImageBuildResult", "ImageListing"]


class ImageBuildRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="the recipe to build (`default`: boxui's own guest)",
                      max_length=63)


class ImageBuildResult(BaseModel):
    image: ImageListing
    cache_hit: bool


class ImageBuildLine(BaseModel):
    """`progress` lines (`step`, `message`, `done`/`total`, `package`), then exactly one
    `result` or `error` (`code`, `message`)."""

    type: Literal["progress", "result", "error"]
    step: Step | None = None
    message: str | None = None
    done: int | None = None
    total: int | None = None
    package: str | None = None
    code: str | None = None
    result: ImageBuildResult | None = None
