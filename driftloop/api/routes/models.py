"""Model families and versions (reads): ``/api/v1/models``, ``.../{family}/versions``, ``.../versions/{version}``.

No ``from __future__ import annotations``: the endpoints use the router's local ``Annotated`` aliases.
"""

from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from sqlalchemy import func, select

from driftloop.api import schemas as S
from driftloop.api.auth import Principal
from driftloop.api.deps import ApiDeps
from driftloop.api.params import ERRORS, MAX_ID, NOT_FOUND, Family, VersionRef, not_found
from driftloop.retrain.registry import ModelRegistry, RegistryError
from driftloop.retrain.registry import ModelVersion as MV
from driftloop.retrain.tables import model_versions


def version_out(reg: ModelRegistry, v: MV, aliases: Mapping[str, int], detail: bool = False) -> dict[str, Any]:
    """A version with its aliases and gate verdict; ``detail`` adds its audit log."""
    d = v.to_dict()
    d["created_at"] = v.created_at
    d["aliases"] = sorted(a for a, vid in aliases.items() if vid == v.id)
    d["gate_promote"] = bool(v.gate["promote"]) if v.gate and "promote" in v.gate else None
    if detail:
        d["events"] = [{k: e[k] for k in ("id", "action", "from_status", "to_status", "actor", "reason",
                                           "details", "at")} for e in reg.events(v.family, v.id)]  # fmt: skip
    return d


def find_version(reg: ModelRegistry, family: str, version: str) -> MV:
    """The version ``version`` (label or id) of ``family``; else 404."""
    if version.isdigit() and int(version) > MAX_ID:
        raise not_found(f"model {family!r} has no version {version!r}")
    try:
        return reg.find(family, version)
    except RegistryError as e:
        raise not_found(str(e)) from None


def families(reg: ModelRegistry) -> list[dict[str, Any]]:
    """Every family: its champion, previous champion and version counts by status."""
    out = []
    with reg.engine.connect() as c:
        counts = c.execute(select(model_versions.c.family, model_versions.c.status, func.count())
                           .group_by(model_versions.c.family, model_versions.c.status)).all()  # fmt: skip
    by: dict[str, dict[str, int]] = {}
    for fam, st, n in counts:
        by.setdefault(fam, {})[st] = int(n)
    for fam in sorted(by):
        al = reg.aliases(fam)
        champ = reg.get(al["champion"]) if "champion" in al else None
        prev = reg.get(al["previous"]) if "previous" in al else None
        out.append({"family": fam, "champion": version_out(reg, champ, al) if champ else None,
                    "previous": version_out(reg, prev, al) if prev else None,
                    "versions": sum(by[fam].values()), "by_status": by[fam]})  # fmt: skip
    return out


def router(d: ApiDeps, reg: ModelRegistry) -> APIRouter:
    routes = APIRouter()
    ReadAuth = Annotated[Principal, Depends(d.read)]

    @routes.get("/api/v1/models", response_model=list[S.ModelFamily], tags=["models"], responses=ERRORS,
                summary="Model families with their champion")  # fmt: skip
    def list_models(_: ReadAuth) -> list[dict[str, Any]]:
        return families(reg)

    @routes.get("/api/v1/models/{family}/versions", response_model=list[S.ModelVersion], tags=["models"],
                responses={**ERRORS, **NOT_FOUND}, summary="A family's versions, oldest first")  # fmt: skip
    def list_versions(family: Family, _: ReadAuth) -> list[dict[str, Any]]:
        vs = reg.versions(family)
        if not vs:
            raise not_found(f"no model family {family!r}; see /api/v1/models")
        al = reg.aliases(family)
        return [version_out(reg, v, al) for v in vs]

    @routes.get("/api/v1/models/{family}/versions/{version}", response_model=S.ModelVersionDetail,
                tags=["models"], responses={**ERRORS, **NOT_FOUND},
                summary="One version: lineage, gate and audit log")  # fmt: skip
    def get_version(family: Family, version: VersionRef, _: ReadAuth) -> dict[str, Any]:
        v = find_version(reg, family, version)
        return version_out(reg, v, reg.aliases(family), detail=True)

    return routes
