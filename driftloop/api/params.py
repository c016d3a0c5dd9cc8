"""Shared path/query parameter types, documented error responses and error helpers of the API routes.

No ``from __future__ import annotations``: FastAPI reads these ``Annotated`` types at route definition.
"""

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from fastapi import HTTPException, Path, Query, status

from driftloop.api import schemas as S

MAX_ID = 2**63 - 1  # PostgreSQL BIGINT: larger ids cannot exist (and would be a database error)
Id = Annotated[int, Path(ge=0, le=MAX_ID, description="numeric id")]
Limit = Annotated[int, Query(ge=1, le=1000, description="rows returned (newest first)")]
Offset = Annotated[int, Query(ge=0, le=2**31, description="rows skipped")]
# Names are stored as text: no NUL (PostgreSQL text cannot hold it) and no control characters.
_NAME = r"^[^\x00-\x1f\x7f/]+$"
Family = Annotated[str, Path(min_length=1, max_length=256, pattern=_NAME, description="model family (model_id)")]
VersionRef = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$",
                                 description="version label (v3) or numeric id")]  # fmt: skip
PolicyName = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")]
ModelFilter = Annotated[str | None, Query(min_length=1, max_length=256, pattern=_NAME, description="model_id")]
NameFilter = Annotated[str | None, Query(min_length=1, max_length=128, pattern=_NAME)]
# The names of driftloop.jobs.JOBS (a test keeps the two in step).
JobName = Literal["drift_check", "quality_check", "policy_evaluation", "retention", "retrain_check", "retrain_worker",
                  "promotion_watch", "review_sample", "judge", "estimator_train", "estimator_score"]  # fmt: skip

AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": S.ErrorOut, "description": "no or invalid bearer token (or none configured)"},
    403: {"model": S.ErrorOut, "description": "the token's role may not do this"},
}
# Every route that reads the database: one exception handler (driftloop.api.errors) turns a lost database into this.
UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"model": S.ErrorOut, "description": "the database is unreachable; retry after the Retry-After seconds",
          "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}}}  # fmt: skip
ERRORS = {**AUTH_ERRORS, **UNAVAILABLE}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": S.ErrorOut, "description": "no such object"}}
CONFLICT: dict[int | str, dict[str, Any]] = {409: {"model": S.ErrorOut, "description": "not possible in this state"}}
BAD_BODY: dict[int | str, dict[str, Any]] = {400: {"model": S.ErrorOut, "description": "the body is not JSON"}}
HTML: dict[int | str, dict[str, Any]] = {200: {"content": {"text/html": {"schema": {"type": "string"}}}}}


def not_found(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail)


def conflict(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_409_CONFLICT, detail)


def row(r: Mapping[Any, Any]) -> dict[str, Any]:
    return dict(r)
