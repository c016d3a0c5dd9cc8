"""v1 records in a batch body (object, array or NDJSON), passed through: the Decoder validates each."""

from __future__ import annotations

from driftloop.ingest.formats._common import INVALID_ITEM, INVALID_V1, Converted, json_items


def convert_v1(body: bytes) -> Converted:
    items, bad = json_items(body, INVALID_V1, "v1 records")
    out = Converted(records=[], rejected=bad)
    for n, item in enumerate(items):
        if isinstance(item, dict):
            out.records.append(item)
        else:
            out.rejected.append((INVALID_ITEM, f"item {n}: a v1 record must be a JSON object, "
                                               f"got {type(item).__name__}"))
    return out
