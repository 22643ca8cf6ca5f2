"""`/v1/services` and `/v1/scale`: services of N instances and the Scale API."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import JSONResponse

from backend.api.context import ApiContext, context
from backend.api.errors import ERROR_RESPONSES
from backend.services.scale_models import ScaleRequest, ScaleResponse, ServiceView
from backend.services.service_spec import ServiceSpec, validate_service_name

router = APIRouter(prefix="/v1", tags=["services"], responses=ERROR_RESPONSES)
Ctx = Annotated[ApiContext, Depends(context)]
Wait = Annotated[bool, Query(description="answer once the service has been reconciled")]


@router.get("/services", summary="List services with their instances")
async def list_services(ctx: Ctx) -> list[ServiceView]:
    return await ctx.services.views()


@router.get("/services/{name}", summary="Get one service with its instances")
async def get_service(name: str, ctx: Ctx) -> ServiceView:
    return await ctx.services.view(validate_service_name(name))


@router.post("/services", status_code=201, summary="Create a service (desired replicas "
             "are started in the background, or before answering with wait=true)")
async def create_service(spec: ServiceSpec, ctx: Ctx, wait: Wait = False) -> ServiceView:
    generation = await ctx.services.create(spec)
    if wait:
        await ctx.services.wait_settled(spec.name, generation)
    return await ctx.services.view(spec.name)


@router.post("/scale", summary="Scale a service to N replicas",
             responses={409: {"model": ScaleResponse,
                              "description": "refused: above the service's max replicas"}})
async def scale_service(request: ScaleRequest, ctx: Ctx, wait: Wait = False) -> ScaleResponse:
    response, generation = await ctx.services.scale(request)
    if generation is None:
        return JSONResponse(response.model_dump(mode="json"), status_code=409)  # type: ignore[return-value]
    if wait:
        await ctx.services.wait_settled(request.service, generation)
        response = response.model_copy(update={
            "current_replicas": ctx.services.current_replicas(request.service),
            "instances": await ctx.services.instance_infos(request.service)})
    return response


@router.delete("/services/{name}", status_code=204, response_class=Response,
               summary="Drain and remove every instance, then the service")
async def remove_service(name: str, ctx: Ctx) -> Response:
    ctx.services.spec(validate_service_name(name))
    await ctx.services.remove(name)
    return Response(status_code=204)
