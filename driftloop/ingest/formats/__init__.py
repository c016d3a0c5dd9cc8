"""Mapping of the log shapes that already exist (OTLP GenAI, OpenInference, OpenAI, LiteLLM) to v1 records.

One pure function per shape, no I/O: the HTTP receiver and the Kafka consumer both call
:func:`convert` with a topic's format and get v1 wire dicts, which then go through the one v1
``Decoder`` (validation, redaction) like any producer's records. The field mapping of every shape is
documented in docs/ingest-formats.md.
"""

from __future__ import annotations

from driftloop.ingest.decode import InvalidMessage
from driftloop.ingest.formats._common import (
    EMPTY_BODY,
    INVALID_EVALUATION,
    INVALID_ID,
    INVALID_ITEM,
    INVALID_JSON_LINE,
    INVALID_LITELLM,
    INVALID_OPENAI,
    INVALID_OTLP,
    INVALID_PROTOBUF,
    INVALID_SPAN_CONTEXT,
    INVALID_V1,
    MISSING_SPAN_CONTEXT,
    Converted,
)
from driftloop.settings import TopicFormat

__all__ = [
    "EMPTY_BODY", "INVALID_EVALUATION", "INVALID_ID", "INVALID_ITEM", "INVALID_JSON_LINE", "INVALID_LITELLM",
    "INVALID_OPENAI", "INVALID_OTLP", "INVALID_PROTOBUF", "INVALID_SPAN_CONTEXT", "INVALID_V1",
    "MISSING_SPAN_CONTEXT", "Converted", "InvalidMessage", "TopicFormat", "convert",
]
UNKNOWN_FORMAT = "unknown_format"


def convert(fmt: TopicFormat, body: bytes, *, content_type: str | None = None) -> Converted:
    """Map one (decompressed) body of format ``fmt`` to v1 wire dicts.

    ``content_type`` picks protobuf or JSON for the OTLP formats (None: JSON if the body starts with
    ``{``). Raises :class:`InvalidMessage` when the body as a whole is malformed; a malformed item of
    a good batch is listed in ``Converted.rejected`` and the rest is converted.
    """
    if fmt == "otlp":
        from driftloop.ingest.formats.otlp import convert_traces

        return convert_traces(body, content_type)
    if fmt == "otlp_logs":
        from driftloop.ingest.formats.otlp import convert_logs

        return convert_logs(body, content_type)
    if fmt == "openai":
        from driftloop.ingest.formats.openai import convert_openai

        return convert_openai(body)
    if fmt == "litellm":
        from driftloop.ingest.formats.litellm import convert_litellm

        return convert_litellm(body)
    if fmt == "v1":
        from driftloop.ingest.formats.v1 import convert_v1

        return convert_v1(body)
    raise InvalidMessage(UNKNOWN_FORMAT, f"unknown format {fmt!r} (expected v1, otlp, otlp_logs, openai, litellm)")
