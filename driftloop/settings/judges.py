"""Settings of LLM judges (issue 15): OpenAI-compatible endpoints that score answers with a rubric.

A judge is cheap, biased machine labelling: it scores a seeded sample of each checked window, never
all traffic, within a request budget. The key is read from the environment variable named by
``api_key_env`` when the judge runs; a key never sits in the YAML.
"""

from __future__ import annotations

import string
from typing import Literal

from pydantic import Field, model_validator

from driftloop.settings.base import Section

#: The shipped pointwise rubric: one answer, a 1-5 score on the last line (parsed strictly).
POINTWISE_RUBRIC = """You are grading the answer of an AI assistant to a user's request.

Request:
{prompt}

Reference answer (may be empty; use it as a guide to what a good answer contains, not as the only right one):
{reference}

Answer to grade:
{response}

Judge whether the answer is correct, helpful, complete and safe for the request. Explain briefly, then give
your verdict on the last line, exactly in this form and nothing after it:
SCORE: <an integer from 1 (useless or wrong) to 5 (excellent)>"""

#: The shipped pairwise rubric: two answers to one request, a preference on the last line.
PAIRWISE_RUBRIC = """You are comparing two answers of AI assistants to the same user request.

Request:
{prompt}

Answer A:
{response_a}

Answer B:
{response_b}

Decide which answer is more correct, helpful, complete and safe. Ignore the order in which they are shown
and their length as such. Explain briefly, then give your verdict on the last line, exactly in this form and
nothing after it:
PREFERENCE: <A, B or TIE>"""

FIELDS = {"pointwise": ({"prompt", "response", "reference"}, {"response"}),
          "pairwise": ({"prompt", "response_a", "response_b"}, {"response_a", "response_b"})}  # fmt: skip


def template_fields(template: str) -> set[str]:
    """The named fields of a ``str.format`` template (ValueError on a malformed one or a positional field)."""
    out: set[str] = set()
    for _, name, spec, conv in string.Formatter().parse(template):
        if name is None:
            continue
        if not name.isidentifier():
            raise ValueError(f"rubric: field {{{name}}} must be a name such as {{response}}")
        if spec or conv:
            raise ValueError(f"rubric: field {{{name}}} takes no format spec or conversion")
        out.add(name)
    return out


class JudgeSettings(Section):
    """One judge: an OpenAI-compatible chat endpoint, a rubric, a per-window sample and a request budget."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,47}$",
                      description="scores are stored with source judge:<name>")  # fmt: skip
    base_url: str = Field(pattern=r"^https?://[^\s]+$",
                          description="the endpoint's root; requests go to {base_url}/v1/chat/completions")  # fmt: skip
    model: str = Field(min_length=1, max_length=256, description="the `model` field of each request")
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                    description="environment variable holding the bearer key (never the key)")  # fmt: skip
    mode: Literal["pointwise", "pairwise"] = Field("pointwise", description=(
        "pointwise: a score for each sampled answer; pairwise: a preference between the answer and a "
        "reference answer (see `reference`)"))  # fmt: skip
    reference: Literal["champion", "record"] = Field("champion", description=(
        "pairwise: what the answer is compared with. champion: the champion version's logged answer to the same "
        "prompt, else the record's `reference` field; record: the `reference` field only"))  # fmt: skip
    rubric: str | None = Field(None, description=(
        "a str.format template; pointwise fields {prompt} {response} {reference}, pairwise {prompt} "
        "{response_a} {response_b} (default: the shipped rubric of the mode)"))  # fmt: skip
    system: str | None = Field(None, description="an optional system message sent before the rubric")
    sample: int = Field(20, ge=1, le=10_000, description="records judged per window (a seeded sample by content)")
    windows_per_run: int = Field(10, ge=1, le=1000, description="newest not yet judged windows taken per run")
    max_requests_per_run: int = Field(200, ge=1, description="budget: HTTP requests (retries included) per run")
    max_requests_per_day: int = Field(2000, ge=1, description="budget: HTTP requests per UTC day, over all runs")
    timeout_s: float = Field(60.0, gt=0, le=600, description="timeout of one request")
    temperature: float = Field(0.0, ge=0, le=2, description="sampling temperature (0: as deterministic as it gets)")
    max_tokens: int = Field(512, ge=1, le=32_768, description="completion tokens of one verdict")
    attempts: int = Field(4, ge=1, le=20, description="tries per request (connect errors, 429 and 5xx are retried)")
    backoff_s: float = Field(1.0, ge=0, le=60, description="first wait between tries (doubling, jittered)")
    backoff_max_s: float = Field(30.0, ge=0, le=600, description="longest wait between tries")
    retry_after_max_s: float = Field(120.0, ge=0, le=3600,
                                     description="a server's Retry-After is honoured up to this many seconds")  # fmt: skip
    score_min: int = Field(1, description="pointwise: the lowest score of the rubric (maps to 0)")
    score_max: int = Field(5, description="pointwise: the highest score of the rubric (maps to 1)")

    @model_validator(mode="after")
    def _check(self) -> JudgeSettings:
        allowed, required = FIELDS[self.mode]
        fields = template_fields(self.rubric_text)
        if fields - allowed:
            raise ValueError(f"rubric: unknown field(s) {sorted(fields - allowed)} for mode {self.mode}; "
                             f"allowed: {sorted(allowed)}")  # fmt: skip
        if required - fields:
            raise ValueError(f"rubric: a {self.mode} rubric must contain {sorted(required - fields)}")
        if self.score_max <= self.score_min:
            raise ValueError(f"score_max ({self.score_max}) must be greater than score_min ({self.score_min})")
        if self.backoff_max_s < self.backoff_s:
            raise ValueError("backoff_max_s must be >= backoff_s")
        return self

    @property
    def rubric_text(self) -> str:
        """The rubric in use (the configured one, else the shipped default of the mode)."""
        if self.rubric is not None:
            return self.rubric
        return PAIRWISE_RUBRIC if self.mode == "pairwise" else POINTWISE_RUBRIC

    @property
    def source(self) -> str:
        """The scores' source: ``judge:<name>``."""
        return f"judge:{self.name}"
