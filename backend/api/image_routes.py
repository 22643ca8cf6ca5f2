"""`/v1/images`: list, build (NDJSON progress, like template builds) and remove images.

A build runs in the daemon while its client listens; the client leaving (Ctrl-C in
`boxui image build`) or the daemon shutting down cancels it, and a cancelled build
leaves no image. Removing an image, or rebuilding one from changed inputs, is refused
while a machine names it: its disk is an overlay on the image's file.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import StreamingResponse

from backend.api.context import ApiContext, context
from backend.api.errors import ERROR_RESPONSES
from backend.api.image_models import (
    ImageBuildLine,
    ImageBuildRequest,
    ImageBuildResult,
    ImageListing,
)
from backend.api.ndjson_doc import NDJSON, build_responses
from backend.errors import BoxuiError, InvalidNameError
from backend.guest.errors import GuestImageError
from backend.guest.image_builder import build_default_image
from backend.images.builder import BuildResult, build_image
from backend.images.catalog import DEFAULT_NAME, built_listing, catalog, default_listing
from backend.images.progress import ImageProgress, Step
from backend.images.recipe import check_image_name, load_recipe
from backend.images.store import remove_image, users_of
from backend.templates.revision_store import image_users

log = logging.getLogger("boxui.api")
router = APIRouter(prefix="/v1", tags=["images"])
Ctx = Annotated[ApiContext, Depends(context)]
ImageName = Annotated[str, Path(max_length=63)]
#: the default guest's build phases, as image build steps
_DEFAULT_STEPS: dict[str, Step] = {"download": "downloading", "extract": "unpacking",
                                   "pack": "packing"}


_BUILD_DOC = build_responses(ImageBuildLine)


class _Refused(BoxuiError):
    code = "invalid_request"


def _checked_name(name: str) -> str:
    try:
        return check_image_name(name)
    except BoxuiError as exc:
        raise InvalidNameError(str(exc)) from None


@router.get("/images", responses=ERROR_RESPONSES, summary="Images: default, built, recipes")
async def list_all(ctx: Ctx) -> list[ImageListing]:
    dirs = ctx.engine.dirs
    return await asyncio.to_thread(lambda: catalog(dirs, ctx.engine.machines()))


@router.delete("/images/{name}", responses=ERROR_RESPONSES, summary="Remove a built image")
async def remove(name: ImageName, ctx: Ctx) -> ImageListing:
    _checked_name(name)
    if name == DEFAULT_NAME:
        raise _Refused("boxui's default guest cannot be removed")

    def act() -> ImageListing:
        users = users_of(ctx.engine.machines(), name) + image_users(ctx.engine.dirs, name)
        return built_listing(remove_image(ctx.engine.dirs, name, users), [])

    return await asyncio.to_thread(act)


@router.post("/images/builds", response_class=StreamingResponse, responses=_BUILD_DOC,
             summary="Build an image (NDJSON: progress, then the result)")
async def build(body: ImageBuildRequest, ctx: Ctx, request: Request) -> StreamingResponse:
    name = _checked_name(body.name)
    if name != DEFAULT_NAME:  # a bad recipe is a 4xx before the stream starts
        await asyncio.to_thread(load_recipe, ctx.engine.dirs, name)
    lines: asyncio.Queue[ImageBuildLine] = asyncio.Queue()
    task = asyncio.ensure_future(_run(ctx, name, lines))
    return StreamingResponse(_stream(task, lines, ctx, request), media_type=NDJSON)


async def _run(ctx: ApiContext, name: str, lines: asyncio.Queue[ImageBuildLine]) -> None:
    def progress(event: ImageProgress) -> None:
        lines.put_nowait(ImageBuildLine(type="progress", **event.model_dump()))

    dirs = ctx.engine.dirs
    try:
        if name == DEFAULT_NAME:
            image = await build_default_image(dirs.images, lambda phase, message: progress(
                ImageProgress(step=_DEFAULT_STEPS.get(phase, "packing"), message=message)))
            result = ImageBuildResult(image=default_listing(image), cache_hit=image.cache_hit)
        else:
            built: BuildResult = await build_image(
                dirs, name, progress, tools=ctx.image_tools,
                users=lambda image: users_of(ctx.engine.machines(), image))
            result = ImageBuildResult(image=built_listing(built.image, []),
                                      cache_hit=built.cache_hit)
        lines.put_nowait(ImageBuildLine(type="result", result=result))
    except (BoxuiError, GuestImageError) as exc:
        lines.put_nowait(ImageBuildLine(type="error", code=exc.code, message=str(exc)))
    except Exception as exc:  # the client must get an end line whatever happened
        log.exception("image build %s failed", name)
        lines.put_nowait(ImageBuildLine(type="error", code="error",
                                        message=f"image build failed: {exc}"))


async def _stream(task: asyncio.Future[None], lines: asyncio.Queue[ImageBuildLine],
                  ctx: ApiContext, request: Request) -> AsyncIterator[bytes]:
    gone = asyncio.ensure_future(_disconnected(request))
    closing = asyncio.ensure_future(ctx.closing.wait())
    try:
        while True:
            line = asyncio.ensure_future(lines.get())
            done, _ = await asyncio.wait({line, gone, closing},
                                         return_when=asyncio.FIRST_COMPLETED)
            if line not in done:
                line.cancel()
                if closing in done:
                    yield _dump(ImageBuildLine(
                        type="error", code="shutting_down", message="the boxui daemon is "
                        "shutting down; the image build was cancelled and left no image"))
                return
            yield _dump(line.result())
            if line.result().type != "progress":
                return
    finally:
        task.cancel()
        for waiter in (gone, closing):
            waiter.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _disconnected(request: Request) -> None:
    try:
        while (await request.receive())["type"] != "http.disconnect":
            pass
    except Exception:
        await asyncio.Event().wait()


def _dump(line: ImageBuildLine) -> bytes:
    fields = {k: v for k, v in line.model_dump(mode="json").items() if v is not None}
    return orjson.dumps(fields) + b"\n"
