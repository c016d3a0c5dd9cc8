"""The v1 log record: the one definition of what a producer sends and ingestion decodes.

Why here (the bottom layer, next to settings and store): the client logger (``driftloop.client``)
builds and encodes these types, the model server (``driftloop serve``) builds them through the
client, and the decoder (``driftloop.ingest.decode``) decodes into them; a field, its wire name or
its limits change in one place for all three. The README documents the schema.

msgspec ``Meta`` constraints are checked when decoding or converting (``msgspec.convert``), not by
the constructor; ``omit_defaults`` keeps unset fields off the wire, as the v1 schema expects.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec

Int32 = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]
Finite = Annotated[float, msgspec.Meta(ge=-1e12, le=1e12)]
NonNeg = Annotated[float, msgspec.Meta(ge=0, le=1e12)]
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
ShortStr = Annotated[str, msgspec.Meta(max_length=256)]
#: ``timestamp`` on the wire: RFC 3339 text or epoch milliseconds; absent means the broker's timestamp.
Timestamp = str | int | float | None


class ChatMessage(msgspec.Struct, forbid_unknown_fields=False, omit_defaults=True):
    """One chat turn; other keys of an OpenAI message (``name``, ``tool_calls``) are ignored."""

    role: Annotated[str, msgspec.Meta(max_length=64)]
    content: str | None = None


class InlineFeedback(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Feedback sent inside the record it rates (``"feedback": {...}`` or a bare score)."""

    score: Finite | None = None
    comment: str | None = None
    correction: str | None = None
    feedback_id: Id | None = None


class LogRecordV1(msgspec.Struct, omit_defaults=True):
    """One LLM interaction. Unknown top-level fields are allowed on the wire (ingestion keeps them in
    ``metadata``); a ``prompt`` list is a ``messages`` list."""

    request_id: Id
    timestamp: Timestamp = None
    model_id: ShortStr | None = None
    model_version: ShortStr | None = None
    prompt: str | list[ChatMessage] | None = None
    messages: list[ChatMessage] | None = None
    response: str | None = None
    latency_ms: NonNeg | None = None
    tokens_in: Int32 | None = None
    tokens_out: Int32 | None = None
    finish_reason: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    user_id: str | None = None
    session_id: ShortStr | None = None
    feedback: InlineFeedback | Finite | None = None
    reference: str | None = None
    metadata: dict[str, Any] | None = None
    type: str | None = None
    schema_version: int | None = None


class FeedbackEventV1(msgspec.Struct, forbid_unknown_fields=False, omit_defaults=True):
    """Late feedback on an earlier interaction (``"type": "feedback"``)."""

    type: str
    request_id: Id
    score: Finite | None = None
    comment: str | None = None
    correction: str | None = None
    timestamp: Timestamp = None
    feedback_id: Id | None = None
    metadata: dict[str, Any] | None = None


#: Field names of the two record kinds (top-level wire names).
INTERACTION_FIELDS = frozenset(LogRecordV1.__struct_fields__)
FEEDBACK_FIELDS = frozenset(FeedbackEventV1.__struct_fields__)


def now_rfc3339() -> str:
    """The current UTC time as RFC 3339 with milliseconds and ``Z`` (the ``timestamp`` producers send)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_wire(record: LogRecordV1 | FeedbackEventV1 | Mapping[str, Any]) -> dict[str, Any]:
    """The JSON object of ``record`` (a plain mapping passes through as a dict); unset fields are left out."""
    if isinstance(record, msgspec.Struct):
        out: dict[str, Any] = msgspec.to_builtins(record)
        return out
    return dict(record)
