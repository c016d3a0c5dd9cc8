"""Producing records to Kafka (replay of JSONL files, samples, benchmarks)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def iter_jsonl(path: Path) -> Iterator[bytes]:
    """Yield the non-empty lines of a JSONL file (``.gz`` is decompressed)."""
    opener: Any = open
    if path.suffix == ".gz":
        import gzip

        opener = gzip.open
    with opener(path, "rb") as f:
        for line in f:
            line = line.rstrip(b"\r\n")
            if line:
                yield line


def produce(bootstrap: list[str] | str, topic: str, values: Iterable[bytes], *, progress: bool = True) -> int:
    """Send raw byte values to ``topic``; returns the count sent (after flush)."""
    from driftloop.broker import make_producer

    prod = make_producer(bootstrap)
    n = 0
    t0 = time.monotonic()
    try:
        for v in values:
            prod.send(topic, v)
            n += 1
            if progress and n % 20000 == 0:
                print(f"  sent {n} ({n / (time.monotonic() - t0):.0f}/s)", file=sys.stderr)
        prod.flush()
    finally:
        prod.close()
    return n
