"""Synthetic v1 log records for demos, tests and benchmarks (no external data)."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

_WORDS = [
    "the",
    "model",
    "answer",
    "question",
    "user",
    "data",
    "system",
    "time",
    "people",
    "because",
    "would",
    "about",
    "which",
    "their",
    "there",
    "could",
    "other",
    "these",
    "first",
    "water",
    "after",
    "where",
    "most",
    "through",
    "before",
    "should",
    "world",
    "under",
    "never",
    "between",
    "three",
    "python",
    "kafka",
    "postgres",
    "deploy",
    "latency",
    "token",
    "prompt",
    "response",
    "drift",
    "window",
    "feedback",
    "retrain",
    "cluster",
    "server",
    "request",
    "explain",
    "summarize",
    "translate",
    "write",
    "story",
    "code",
    "function",
    "error",
    "bug",
    "test",
    "release",
]


def _text(rng: random.Random, n_chars: int) -> str:
    out: list[str] = []
    size = 0
    while size < n_chars:
        w = rng.choice(_WORDS)
        out.append(w)
        size += len(w) + 1
    return " ".join(out)


def sample_records(
    n: int,
    *,
    seed: int = 0,
    size_bytes: int = 1000,
    models: tuple[str, ...] = ("chat-small", "chat-large"),
    start: datetime | None = None,
    pii_share: float = 0.05,
    feedback_share: float = 0.2,
) -> Iterator[dict[str, Any]]:
    """Yield ``n`` plausible interaction records of roughly ``size_bytes`` JSON bytes each."""
    rng = random.Random(seed)
    t0 = start or datetime.now(UTC) - timedelta(hours=1)
    body = max(size_bytes - 420, 40)
    for i in range(n):
        prompt = _text(rng, body // 3)
        response = _text(rng, body - body // 3)
        if rng.random() < pii_share:
            prompt += f" contact me at user{i}@example.com or +1 415-555-{rng.randint(1000, 9999)}"
        rec: dict[str, Any] = {
            "request_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "timestamp": (t0 + timedelta(milliseconds=i * 10)).isoformat().replace("+00:00", "Z"),
            "model_id": rng.choice(models),
            "model_version": "v1",
            "prompt": prompt,
            "response": response,
            "latency_ms": round(rng.lognormvariate(6, 0.5), 1),
            "tokens_in": len(prompt) // 4,
            "tokens_out": len(response) // 4,
            "finish_reason": "stop",
            "user_id": f"user-{rng.randint(1, 500)}",
            "session_id": f"s-{rng.randint(1, 2000)}",
            "metadata": {"region": rng.choice(["eu", "us"]), "app": "demo"},
        }
        if rng.random() < feedback_share:
            rec["feedback"] = {"score": float(rng.random() < 0.8)}
        yield rec


BAD_MESSAGES: dict[str, bytes] = {
    "invalid_json": b'{"request_id": "bad-1", "prompt": ',
    "invalid_utf8": b'{"request_id": "bad-2", "prompt": "caf\xc3\x28"}',
    "nul_byte": b'{"request_id": "bad-3", "prompt": "a\\u0000b"}',
    "wrong_type": b'{"request_id": "bad-4", "prompt": "hi", "tokens_in": "many"}',
    "missing_field": b'{"prompt": "no id here", "response": "x"}',
    "bad_timestamp": b'{"request_id": "bad-6", "prompt": "hi", "timestamp": "3024-01-01T00:00:00Z"}',
    "not_an_object": b'["request_id", "bad-7"]',
}
