"""Settings of LLM judges (issue 15): OpenAI-compatible endpoints that score answers with a rubric."""

from __future__ import annotations

from driftloop.settings.base import Section


class JudgeSettings(Section):
    """One judge (filled in by the judges work)."""

    name: str
