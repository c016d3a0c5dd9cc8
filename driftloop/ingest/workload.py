"""A record's workload: the task it serves, so one model serving three tasks is monitored as three streams.

Derived once, at ingestion (:func:`workload_of`, called by the decoder for every interaction), from what
``ingest.workload`` configures: the first metadata key present with a non-empty scalar value (e.g. the OTel
``gen_ai.agent.name``, a route), else a short hash of the system prompt, else a fixed default. Windows,
drift results, alerts and dashboards then key on ``interactions.workload``; NULL (nothing named it) is a
stream of its own, shown as ``""`` in monitoring tables and ``(none)`` in dashboards.

This runs on the hot path: with no keys and the hash off it returns the default without looking at the
record, and a hit costs a dict lookup per configured key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

MAX_WORKLOAD_CHARS = 256  # interactions.workload is String(256)
SYSTEM_PROMPT_PREFIX = "sp-"


class _Message(Protocol):
    @property
    def role(self) -> str: ...
    @property
    def content(self) -> str | None: ...


class WorkloadConfig(Protocol):
    """What :func:`workload_of` reads of :class:`driftloop.settings.WorkloadSettings`."""

    @property
    def keys(self) -> list[str]: ...
    @property
    def system_prompt_hash(self) -> bool: ...
    @property
    def default(self) -> str | None: ...


def system_prompt_workload(text: str) -> str:
    """``sp-`` and 12 hex digits of BLAKE2b of a system message: the same prompt names the same workload."""
    return SYSTEM_PROMPT_PREFIX + hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=6).hexdigest()


def _scalar(value: Any) -> str | None:
    """A metadata value as a workload name; None for what cannot name one (empty, null, objects, arrays)."""
    if value is None or isinstance(value, dict | list | tuple):
        return None
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float) and value.is_integer():
        text = str(int(value))  # 3.0 and 3 are the same route
    else:
        text = str(value)
    text = text.strip()
    return text[:MAX_WORKLOAD_CHARS] if text else None


def workload_of(metadata: Mapping[str, Any] | None, messages: Sequence[_Message] | None,
                settings: WorkloadConfig | None) -> str | None:  # fmt: skip
    """The workload of one interaction (None: unnamed).

    ``metadata`` is the record's metadata (unknown top-level fields merged in), ``messages`` its chat
    messages; the first ``system`` message is hashed when ``settings.system_prompt_hash`` is on.
    """
    if settings is None:
        return None
    keys = settings.keys
    if keys and metadata:
        for k in keys:
            v = metadata.get(k)
            if v is not None:
                name = _scalar(v)
                if name is not None:
                    return name
    if settings.system_prompt_hash and messages:
        for m in messages:
            if m.role == "system":
                if m.content:
                    return system_prompt_workload(m.content)
                break
    return settings.default or None
