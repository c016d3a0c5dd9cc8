"""Promotions (actions on model versions): approve, promote, and roll a family back to its previous champion.

No ``from __future__ import annotations``: the endpoints use the router's local ``Annotated`` aliases.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends

from driftloop.api import schemas as S
from driftloop.api.auth import Principal
from driftloop.api.deps import ApiDeps
from driftloop.api.params import BAD_BODY, CONFLICT, ERRORS, NOT_FOUND, Family, VersionRef, conflict, not_found
from driftloop.api.routes.models import find_version, version_out
from driftloop.retrain.registry import ModelRegistry, RegistryError
from driftloop.settings import Settings

Reason = Annotated[S.ActionBody | None, Body()]
ACTION_ERRORS = {**ERRORS, **NOT_FOUND, **CONFLICT, **BAD_BODY}


def targets(settings: Settings, family: str) -> list[Any]:
    """The promotion targets of ``family``; 409 when they cannot be built from ``retrain.targets``."""
    from driftloop.retrain.runner import targets_for_family

    try:
        return targets_for_family(settings, family)
    except Exception as e:
        raise conflict(f"cannot build the promotion targets of {family!r}: {e}; check retrain.targets") from None


def router(d: ApiDeps, reg: ModelRegistry) -> APIRouter:
    routes = APIRouter()
    AdminAuth = Annotated[Principal, Depends(d.admin)]
    settings = d.settings

    @routes.post("/api/v1/models/{family}/versions/{version}/approve", response_model=S.ModelVersionDetail,
                 tags=["models"], responses=ACTION_ERRORS,
                 summary="Approve a version waiting for approval, then promote it")  # fmt: skip
    def approve(family: Family, version: VersionRef, who: AdminAuth, body: Reason = None) -> dict[str, Any]:
        v = find_version(reg, family, version)
        ts = targets(settings, family)
        try:
            v = reg.approve(v.id, ts, actor=who.actor, reason=body.reason if body else None)
        except RegistryError as e:
            raise conflict(str(e)) from None
        return version_out(reg, v, reg.aliases(family), detail=True)

    @routes.post("/api/v1/models/{family}/versions/{version}/promote", response_model=S.ModelVersionDetail,
                 tags=["models"], responses=ACTION_ERRORS,
                 summary="Make a version the champion on every target, then in the registry")  # fmt: skip
    def promote(family: Family, version: VersionRef, who: AdminAuth, body: Reason = None) -> dict[str, Any]:
        v = find_version(reg, family, version)
        try:
            v = reg.promote(v.id, targets(settings, family), actor=who.actor,
                            reason=(body.reason if body else None) or "manual promotion")  # fmt: skip
        except RegistryError as e:
            raise conflict(str(e)) from None
        return version_out(reg, v, reg.aliases(family), detail=True)

    @routes.post("/api/v1/models/{family}/rollback", response_model=S.ModelVersionDetail, tags=["models"],
                 responses=ACTION_ERRORS,
                 summary="Serve the previous champion again; the current one becomes rolled_back")  # fmt: skip
    def rollback(family: Family, who: AdminAuth, body: Reason = None) -> dict[str, Any]:
        if not reg.versions(family):
            raise not_found(f"no model family {family!r}; see /api/v1/models")
        try:
            v = reg.rollback(family, targets(settings, family), actor=who.actor,
                             reason=(body.reason if body else None) or "manual rollback")  # fmt: skip
        except RegistryError as e:
            raise conflict(str(e)) from None
        return version_out(reg, v, reg.aliases(family), detail=True)

    return routes
