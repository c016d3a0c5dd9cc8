"""Shared test helpers: one settings builder instead of a ``_settings`` helper in every file, and one way to
stop the daemons a test started, and one reply for the test HTTP stubs.

Sections are given as in a config file (``monitor={...}``); the database URL and the Kafka section for a
test's broker and topics are what nearly every test repeats, so they are arguments.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import yaml

from driftloop.settings import Settings, load_settings


def kafka_section(bootstrap: str, topics: Mapping[str, str]) -> dict[str, Any]:
    """The ``kafka`` section for one broker and a test's ``{"logs": ..., "dlq": ...}`` topics (own group id)."""
    return {"bootstrap_servers": [bootstrap], "topics": [topics["logs"]], "dlq_topic": topics["dlq"],
            "group_id": f"g-{topics['logs']}"}  # fmt: skip


def make_settings(db_url: str | None = None, *, bootstrap: str | None = None, topics: Mapping[str, str] | None = None,
                  **sections: Any) -> Settings:  # fmt: skip
    """Validated settings: the defaults, ``database.url`` = ``db_url``, Kafka for ``bootstrap``/``topics``,
    then ``sections`` (a ``database`` or ``kafka`` given there wins)."""
    base: dict[str, Any] = {}
    if db_url is not None:
        base["database"] = {"url": db_url}
    if bootstrap is not None:
        if topics is None:
            raise ValueError("make_settings: bootstrap needs the test's topics")
        base["kafka"] = kafka_section(bootstrap, topics)
    return load_settings(None, **{**base, **sections})


def write_config(path: Path, db_url: str | None = None, **sections: Any) -> Path:
    """A YAML config file (for CLI and subprocess tests) with ``database.url`` and ``sections``."""
    data = ({"database": {"url": db_url}} if db_url is not None else {}) | sections
    path.write_text(yaml.safe_dump(data))
    return path


def stop_daemons(*procs: subprocess.Popen[bytes]) -> None:
    """SIGTERM every daemon still running, then wait for each (SIGKILL after 60 s): no daemon outlives its
    test, and each one's ``returncode`` says whether it stopped cleanly."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


def http_reply(handler: BaseHTTPRequestHandler, code: int, body: object) -> None:
    """A test HTTP stub's answer: ``body`` as JSON, or as plain text if it is a str, with its length."""
    if isinstance(body, str):
        data, ctype = body.encode(), "text/plain; charset=utf-8"
    else:
        data, ctype = json.dumps(body).encode(), "application/json"
    handler.send_response(code)
    handler.send_header("Content-Type", ctype)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
