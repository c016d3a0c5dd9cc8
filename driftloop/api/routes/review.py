"""The human review queue: ``/api/v1/review`` (take the next item, label it, skip it, counts).

Taking, labelling and skipping need a ``review`` (or ``admin``) token; the item is claimed for the token's
name, and only that name may label or skip it while it holds the claim. See :mod:`driftloop.monitor.review`.

No ``from __future__ import annotations``: the endpoints use the router's local ``Annotated`` aliases.
"""

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from driftloop.api.auth import Principal, require_review
from driftloop.api.deps import ApiDeps
from driftloop.api.params import BAD_BODY, CONFLICT, ERRORS, NOT_FOUND, Id, ModelFilter
from driftloop.monitor import review as R

SliceName = Literal["uniform", "drift", "low_confidence", "negative_feedback"]
# PostgreSQL text cannot hold NUL: refuse it with a 422 naming the field, not a database error.
_TEXT = r"^[^\x00]*$"
_TAG = r"^[^\x00-\x1f\x7f]+$"


class NextBody(BaseModel):
    """Which items the caller wants: one workload and/or some slices (default: any)."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(None, min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f/]+$",
                              description="model_id (workload)")  # fmt: skip
    slices: list[SliceName] | None = Field(None, min_length=1, max_length=4)


class LabelBody(BaseModel):
    """A reviewer's verdict: a score in [0, 1] (1 = good), an optional corrected answer, tags, a comment."""

    model_config = ConfigDict(extra="forbid")
    value: float = Field(ge=0, le=1, description="quality score; >= feedback.positive_threshold is positive")
    correction: str | None = Field(None, max_length=100_000, pattern=_TEXT,
                                   description="a better response; it flows into the retrain datasets")  # fmt: skip
    tags: list[Annotated[str, Field(min_length=1, max_length=64, pattern=_TAG)]] | None = Field(None, max_length=20)
    comment: str | None = Field(None, max_length=10_000, pattern=_TEXT)


class SkipBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(None, max_length=2000, pattern=_TEXT)


class ReviewItemOut(BaseModel):
    """An item to review: the stored (redacted) prompt and response of the interaction, nothing else."""

    id: int
    request_id: str
    model_id: str
    slice: SliceName
    reason: str | None = Field(description="why a targeted item was picked")
    ts: datetime
    prompt: str
    response: str | None
    claimed_by: str
    claimed_at: datetime
    lease_expires_at: datetime = Field(description="after this another reviewer may take the item")


class NextOut(BaseModel):
    item: ReviewItemOut | None = Field(description="null: nothing left to review (for this filter)")


class LabelOut(BaseModel):
    id: int
    status: Literal["labelled"] = "labelled"
    request_id: str
    source: str
    value: float


class SkipOut(BaseModel):
    id: int
    status: Literal["skipped"] = "skipped"


class StatsRow(BaseModel):
    model_id: str
    slice: SliceName
    status: Literal["pending", "claimed", "labelled", "skipped"]
    n: int


class StatsOut(BaseModel):
    rows: list[StatsRow]
    by_slice: dict[str, dict[str, int]] = Field(description="slice -> status -> count, over the workloads shown")


ITEM_ERRORS = {**ERRORS, **NOT_FOUND, **CONFLICT, **BAD_BODY}


def _raise(e: R.ReviewError) -> HTTPException:
    return HTTPException(e.code, str(e))


def router(d: ApiDeps) -> APIRouter:
    routes = APIRouter()
    ReadAuth = Annotated[Principal, Depends(d.read)]
    ReviewAuth = Annotated[Principal, Depends(require_review(d.settings.api))]
    engine, cfg = d.engine, d.settings.quality.review

    @routes.post("/api/v1/review/next", response_model=NextOut, tags=["review"], responses={**ERRORS, **BAD_BODY},
                 summary="Claim the next item to review (your unexpired claim first), or null when none is left")  # fmt: skip
    def take_next(who: ReviewAuth, body: Annotated[NextBody | None, Body()] = None) -> dict[str, Any]:
        b = body or NextBody()
        it = R.claim_next(engine, who.name, cfg.lease_s, model_id=b.model, slices=b.slices)
        return {"item": None if it is None else it.__dict__}

    @routes.post("/api/v1/review/items/{item_id}/label", response_model=LabelOut, tags=["review"],
                 responses=ITEM_ERRORS, summary="Label an item you hold: a human_review score (and correction)")  # fmt: skip
    def label(item_id: Id, body: LabelBody, who: ReviewAuth) -> dict[str, Any]:
        try:
            s = R.label_item(engine, item_id, who.name, body.value, correction=body.correction, tags=body.tags,
                             comment=body.comment)  # fmt: skip
        except R.ReviewError as e:
            raise _raise(e) from None
        return {"id": item_id, "request_id": s.request_id, "source": s.source, "value": s.value}

    @routes.post("/api/v1/review/items/{item_id}/skip", response_model=SkipOut, tags=["review"],
                 responses=ITEM_ERRORS, summary="Skip an item you hold (it is not offered again)")  # fmt: skip
    def skip(item_id: Id, who: ReviewAuth, body: Annotated[SkipBody | None, Body()] = None) -> dict[str, Any]:
        try:
            R.skip_item(engine, item_id, who.name, body.reason if body else None)
        except R.ReviewError as e:
            raise _raise(e) from None
        return {"id": item_id}

    @routes.get("/api/v1/review/stats", response_model=StatsOut, tags=["review"], responses=ERRORS,
                summary="Review items per workload, slice and status")  # fmt: skip
    def review_stats(_: ReadAuth, model: ModelFilter = None) -> dict[str, Any]:
        rows = R.stats(engine, model)
        by: dict[str, dict[str, int]] = {s: dict.fromkeys(R.STATUSES, 0) for s in R.SLICES}
        for r in rows:
            by[r["slice"]][r["status"]] += r["n"]
        return {"rows": rows, "by_slice": by}

    return routes
