"""AlpacaEval records (real prompts, real responses, real quality labels) as v1 log records.

The data lives in shared/data/alpacaeval beside the checkout (never in the package);
override with DRIFTLOOP_ALPACAEVAL_DIR.
"""

from __future__ import annotations

import gzip
import json
import os
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

DATA_DIR = Path(
    os.environ.get("DRIFTLOOP_ALPACAEVAL_DIR", Path(__file__).resolve().parents[2] / "shared/data/alpacaeval")
)


def load(model: str) -> list[dict[str, Any]]:
    """Records of one model file (805 rows); skips the test if the data is not there."""
    path = DATA_DIR / f"{model}.jsonl.gz"
    if not path.exists():
        pytest.skip(f"AlpacaEval data not found at {path} (set DRIFTLOOP_ALPACAEVAL_DIR)")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def to_log_records(
    rows: list[dict[str, Any]],
    *,
    start: datetime,
    step: timedelta = timedelta(seconds=1),
    model_id: str = "assistant",
    prefix: str = "r",
    seed: int = 0,
) -> list[dict[str, Any]]:
    """v1 records with ``win >= 0.5`` as positive inline feedback (score 1, else 0)."""
    rng = random.Random(seed)
    out = []
    for i, r in enumerate(rows):
        out.append(
            {
                "request_id": f"{prefix}-{i}-{rng.getrandbits(48):012x}",
                "timestamp": (start + i * step).isoformat().replace("+00:00", "Z"),
                "model_id": model_id,
                "model_version": r["generator"],
                "prompt": r["instruction"],
                "response": r["output"],
                "latency_ms": round(rng.lognormvariate(6.5, 0.3), 1),
                "tokens_in": len(r["instruction"].split()),
                "tokens_out": len(r["output"].split()),
                "finish_reason": "stop",
                "feedback": {"score": 1.0 if r["win"] >= 0.5 else 0.0},
                "metadata": {"dataset": r["dataset"]},
            }
        )
    return out


def now_minus(hours: float) -> datetime:
    return datetime.now(UTC).replace(microsecond=0) - timedelta(hours=hours)


def store_records(db_url: str, records: list[dict[str, Any]], topic: str = "direct") -> int:
    """Decode, redact and write records through the ingestion code path, without a broker."""
    from driftloop.ingest.decode import DecodePolicy, Decoder, Source
    from driftloop.ingest.redact import Redactor
    from driftloop.ingest.writer import Batch, BatchWriter
    from driftloop.store.db import create_engine_from_url

    dec = Decoder(DecodePolicy(), Redactor())
    batch = Batch()
    for i, r in enumerate(records):
        kind, row, fbs = dec.decode(json.dumps(r).encode(), Source(topic, 0, i, None))
        if kind == "interaction":
            batch.interactions.append(row)
            batch.feedback.extend(fbs)
        else:
            batch.feedback.append(row)
    eng = create_engine_from_url(db_url)
    try:
        return BatchWriter(eng, "direct").write(batch).inserted
    finally:
        eng.dispose()
