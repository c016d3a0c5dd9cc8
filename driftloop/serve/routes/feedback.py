"""``POST /v1/feedback``: a feedback event about a logged request, sent through the record logger."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from driftloop.client import feedback_record
from driftloop.serve.deps import State
from driftloop.serve.errors import ServeError
from driftloop.serve.schemas import FeedbackRequest

router = APIRouter()


@router.post("/v1/feedback", status_code=202)
async def feedback(req: FeedbackRequest, st: State) -> dict[str, Any]:
    try:
        ev = feedback_record(req.request_id, score=req.score, correction=req.correction, comment=req.comment,
                             feedback_id=req.feedback_id)  # fmt: skip
    except ValueError as e:
        raise ServeError(400, str(e)) from None
    queued = st.logger.submit(ev) if st.logger is not None else False
    return {"request_id": req.request_id, "feedback_id": ev.feedback_id, "queued": queued}
