"""Distillation datasets (driftloop.retrain.distill): the teacher's answers from logs (shadow and fallback
traffic, real PostgreSQL) and from an OpenAI-compatible endpoint (the real `driftloop serve` on the toy
model): request budget, content cache, rate limit (a fake clock), and mix mode with corrections."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, insert

from driftloop.retrain.dataset import DatasetError, load_snapshot
from driftloop.retrain.distill import (
    AnswerCache,
    TokenBucket,
    build_distill_snapshot,
    endpoint_root,
    teacher_records,
)
from driftloop.settings import FeedbackSettings
from driftloop.settings.retrain import PolicySettings
from driftloop.store.db import create_engine_from_url
from driftloop.store.feedback import store_feedback_threshold
from driftloop.store.models import feedback
from tests.monitor_helpers import T0, insert_rows, interaction

pytestmark = pytest.mark.postgres

POS = FeedbackSettings().positive_threshold
NOW = T0 + timedelta(hours=1)


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    eng = create_engine_from_url(pg_url)
    yield eng
    eng.dispose()


def policy(mode: str = "distill", teacher: dict[str, Any] | None = None, **data: Any) -> PolicySettings:
    return PolicySettings.model_validate({
        "name": "distil", "model_id": "stu", "base_model": "/nonexistent", "trigger": {"alerts": ["x"]},
        "mode": mode, "teacher": teacher or {"model_id": "tea"},
        "data": {"min_eval_samples": 1, "eval_fraction": 0.25, **data}})  # fmt: skip


def row(i: int, model: str, prompt: str, response: str | None = "ok", workload: str | None = "support",
        **kw: Any) -> dict[str, Any]:  # fmt: skip
    return {**interaction(i, model=model, prompt=prompt, response=response, **kw), "workload": workload}


def add_feedback(engine: Engine, request_id: str, score: float, correction: str | None = None) -> None:
    now = datetime.now(UTC)
    with engine.begin() as c:
        c.execute(insert(feedback), [{"event_key": f"fb-{request_id}-{score}", "request_id": request_id, "ts": now,
                                      "score": score, "comment": None, "correction": correction, "source": "event",
                                      "metadata": None, "ingested_at": now}])  # fmt: skip


class Clock:
    """A fake monotonic clock: sleeping advances it (and is recorded) instead of waiting."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.t += s


class Counting(httpx.HTTPTransport):
    """A real HTTP transport that counts the requests that reach the network."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.n += 1
        return super().handle_request(request)


# ------------------------------------------------------------------------------------------------ pieces
def test_token_bucket_paces_requests_evenly_and_allows_a_burst() -> None:
    clk = Clock()
    b = TokenBucket(120, clock=clk, sleep=clk.sleep)  # one every 0.5 s
    for _ in range(5):
        b.acquire()
    assert clk.sleeps == pytest.approx([0.5] * 4)
    clk.t += 10  # idle: the bucket holds one token, not twenty
    b.acquire()
    b.acquire()
    assert clk.sleeps[-1] == pytest.approx(0.5) and len(clk.sleeps) == 5
    clk2 = Clock()
    burst = TokenBucket(60, burst=3, clock=clk2, sleep=clk2.sleep)
    for _ in range(4):
        burst.acquire()
    assert clk2.sleeps == pytest.approx([1.0])  # three at once, the fourth a second later
    with pytest.raises(ValueError, match="per_minute"):
        TokenBucket(0)


def test_answer_cache_is_content_keyed_on_disk(tmp_path: Path) -> None:
    c = AnswerCache(tmp_path / "cache")
    assert c.get("ab12") is None
    c.put("ab12", {"answer": "x", "latency_ms": 3.0})
    assert AnswerCache(tmp_path / "cache").get("ab12") == {"answer": "x", "latency_ms": 3.0}
    (tmp_path / "cache" / "ab" / "ab12.json").write_text("{torn")
    assert c.get("ab12") is None  # a torn file is a miss, not an error
    off = AnswerCache(None)
    off.put("k", {"answer": "y"})
    assert off.get("k") is None
    assert endpoint_root("http://h:8000/v1/") == endpoint_root("http://h:8000") == "http://h:8000"


# ------------------------------------------------------------------------------------------------ teacher from logs
def test_teacher_answers_from_shadow_and_fallback_logs(engine: Engine, tmp_path: Path) -> None:
    rows = [row(i, "stu", f"Question {i}?", f"student answer {i}") for i in range(8)]
    rows += [row(8, "stu", "Other workload question?", workload="other")]
    # shadow traffic: the teacher answered the same prompts (some near-duplicates), one answer rated bad
    rows += [row(20 + i, "tea", f"Question {i}?", f"teacher answer {i}", workload=None) for i in range(5)]
    rows += [row(30, "tea", "question 5", "teacher answer 5", workload=None)]  # not the same text: no match
    rows += [row(31, "tea", "Question 6?", "a bad teacher answer", workload=None)]
    rows += [row(32, "tea", "Other workload question?", "teacher other", workload="other")]
    # fallback traffic: the teacher served requests of the workload itself
    rows += [row(40 + i, "tea", f"Fallback {i}?", f"fallback answer {i}") for i in range(3)]
    rows += [row(43, "tea", "Fallback elsewhere?", "elsewhere", workload="other")]
    # an older teacher answer to Question 0 loses against the newer one
    rows += [row(-5, "tea", "Question 0?", "stale teacher answer", workload=None)]
    insert_rows(engine, rows)
    add_feedback(engine, "r-tea-31", 0.0)
    store_feedback_threshold(engine, POS)

    p = policy(workload="support")
    recs, st = teacher_records(engine, p, now=NOW, cache_dir=tmp_path / "cache")
    got = {r["prompt"]: (r["response"], r["source"]) for r in recs}
    assert got["Question 0?"] == ("teacher answer 0", "teacher_log")
    # matched by exact text; a negative answer is no answer; none logged
    assert not {"Question 5?", "Question 6?", "Question 7?"} & set(got)
    assert {k for k in got if k.startswith("Fallback")} == {"Fallback 0?", "Fallback 1?", "Fallback 2?"}
    assert "Other workload question?" not in got and "Fallback elsewhere?" not in got
    assert st.from_logs == 8 and st.unanswered == 3 and st.from_endpoint == 0 and st.requests == 0
    assert st.prompts == 11
    # the student's request (its time) is the record's: the split by time follows production traffic
    q0 = next(r for r in recs if r["prompt"] == "Question 0?")
    assert q0["request_id"] == "r-stu-0"

    snap, _ = build_distill_snapshot(engine, p, tmp_path / "ds", positive_threshold=POS, cache_dir=None, now=NOW)
    assert snap.manifest["mode"] == "distill" and snap.manifest["teacher"]["from_logs"] == 8
    assert (
        snap.manifest["sources"]["teacher_log"] == 8 and snap.manifest["train_rows"] + snap.manifest["eval_rows"] == 8
    )
    assert all(r["source"] == "teacher_log" for r in snap.train + snap.eval)
    assert load_snapshot(snap.path).eval == snap.eval
    # the workload filter: without it the other workload's prompts come too
    recs_all, _ = teacher_records(engine, policy(), now=NOW, cache_dir=None)
    assert {"Other workload question?", "Fallback elsewhere?"} <= {r["prompt"] for r in recs_all}
    # the cap keeps the newest prompts
    capped, st3 = teacher_records(engine, policy(teacher={"model_id": "tea", "max_prompts": 4}, workload="support"),
                                  now=NOW, cache_dir=None)  # fmt: skip
    assert len(capped) == 4 and st3.capped == 4
    assert {r["prompt"] for r in capped} == {"Fallback 0?", "Fallback 1?", "Fallback 2?", "Question 4?"}


def test_too_few_teacher_answers_say_what_to_configure(engine: Engine, tmp_path: Path) -> None:
    insert_rows(engine, [row(i, "stu", f"Question {i}?") for i in range(4)])
    with pytest.raises(DatasetError, match=r"teacher\.endpoint"):
        build_distill_snapshot(engine, policy(), tmp_path, positive_threshold=POS, cache_dir=None, now=NOW)


# ------------------------------------------------------------------------------------------------ mix
def test_mix_keeps_feedback_and_corrections_and_a_correction_beats_the_teacher(engine: Engine, tmp_path: Path) -> None:
    rows = [row(i, "stu", f"Question {i}?", f"student answer {i}") for i in range(6)]
    rows += [row(20 + i, "tea", f"Question {i}?", f"teacher answer {i}") for i in range(6)]
    insert_rows(engine, rows)
    add_feedback(engine, "r-stu-0", 1.0)  # positive: the student's answer is a training row too
    add_feedback(engine, "r-stu-1", 0.0, correction="the corrected answer 1")
    add_feedback(engine, "r-stu-2", 0.0)  # negative, no correction: only the teacher's answer
    snap, st = build_distill_snapshot(engine, policy("mix"), tmp_path, positive_threshold=POS, cache_dir=None,
                                      now=NOW)  # fmt: skip
    rows_out = snap.train + snap.eval
    by = {(r["prompt"], r["source"]): r["response"] for r in rows_out}
    assert by[("Question 1?", "correction")] == "the corrected answer 1"
    assert ("Question 1?", "teacher_log") not in by and st.kept_corrections == 1
    assert by[("Question 0?", "feedback")] == "student answer 0"
    assert by[("Question 0?", "teacher_log")] == "teacher answer 0"
    assert by[("Question 2?", "teacher_log")] == "teacher answer 2" and ("Question 2?", "feedback") not in by
    assert snap.manifest["sources"] == {"feedback": 1, "correction": 1, "teacher_log": 5}
    assert snap.manifest["mode"] == "mix"


# ------------------------------------------------------------------------------------------------ endpoint
@pytest.fixture(scope="module")
def toy_serve(toy_base_model: Path) -> Iterator[str]:
    """The real `driftloop serve` (the toy GPT-2) as the teacher's OpenAI-compatible endpoint."""
    from driftloop.serve import create_serve_app
    from driftloop.settings import load_settings
    from tests.test_serve import UvicornThread

    app = create_serve_app(load_settings(None, serve={"base_model": str(toy_base_model), "model_id": "toy-teacher",
                                                      "max_new_tokens": 8, "log_records": False}))  # fmt: skip
    with UvicornThread(app) as srv:
        yield srv.url


def test_endpoint_teacher_budget_cache_and_rate_limit(engine: Engine, tmp_path: Path, toy_serve: str) -> None:
    prompts = ["What is 3 plus 4?", "What is 10 minus 2?", "Is 7 an even number?", "Compute 3 times 5.",
               "What is 20 plus 22?", "What is 9 minus 4?"]  # fmt: skip
    rows = [row(i, "stu", p) for i, p in enumerate(prompts)]
    rows.append(row(10, "tea", prompts[0], "logged teacher answer"))  # logs first: no call for this one
    insert_rows(engine, rows)
    store_feedback_threshold(engine, POS)
    cache = tmp_path / "teacher-cache"

    def teacher(budget: int) -> dict[str, Any]:
        return {"model_id": "tea", "endpoint": {"base_url": toy_serve + "/v1", "model": "toy-teacher",
                "budget_requests": budget, "max_requests_per_minute": 30, "max_tokens": 8, "retries": 0}}  # fmt: skip

    clk, net = Clock(), Counting()
    recs, st = teacher_records(engine, policy(teacher=teacher(3)), now=NOW, cache_dir=cache, transport=net,
                               clock=clk, sleep=clk.sleep)  # fmt: skip
    assert st.from_logs == 1 and st.requests == 3 == net.n and st.from_endpoint == 3
    assert st.budget_exhausted and st.unanswered == 2 and st.cache_hits == 0 and st.failures == 0
    assert len(recs) == 4 and sum(r["source"] == "teacher_endpoint" for r in recs) == 3
    assert all(r["response"] is not None for r in recs)
    assert clk.sleeps == pytest.approx([2.0, 2.0])  # 30 a minute: one every 2 s, the first at once
    assert len(st.endpoint_latency_ms) == 3 and all(x > 0 for x in st.endpoint_latency_ms)
    # newest prompts first: the two oldest endpoint prompts are the ones left
    assert {r["prompt"] for r in recs} == {prompts[0], *prompts[3:]}
    answers = {r["prompt"]: r["response"] for r in recs}

    # the second run: the cache answers the three, the endpoint the two left; the third run makes no call
    clk2, net2 = Clock(), Counting()
    recs2, st2 = teacher_records(engine, policy(teacher=teacher(10)), now=NOW, cache_dir=cache, transport=net2,
                                 clock=clk2, sleep=clk2.sleep)  # fmt: skip
    assert st2.cache_hits == 3 and st2.requests == 2 == net2.n and st2.from_endpoint == 5 and not st2.budget_exhausted
    assert {r["prompt"]: r["response"] for r in recs2 if r["prompt"] in answers} == answers
    assert clk2.sleeps == pytest.approx([2.0])  # cache hits take no token
    net3 = Counting()
    _, st3 = teacher_records(engine, policy(teacher=teacher(0)), now=NOW, cache_dir=cache, transport=net3)
    assert st3.requests == 0 == net3.n and st3.cache_hits == 5 and st3.unanswered == 0
    assert len(st3.endpoint_latency_ms) == 5  # the cache keeps each call's latency for the cost report
    # cache off: the same prompts are asked again
    t_off = teacher(10)
    t_off["endpoint"]["cache"] = False
    net4 = Counting()
    _, st4 = teacher_records(engine, policy(teacher=t_off), now=NOW, cache_dir=cache, transport=net4,
                             sleep=lambda s: None)  # fmt: skip
    assert st4.requests == 5 == net4.n and st4.cache_hits == 0


def test_failed_calls_are_counted_and_retried_within_the_budget(engine: Engine, tmp_path: Path) -> None:
    insert_rows(engine, [row(i, "stu", f"Question {i}?") for i in range(3)])
    seen: list[dict[str, Any]] = []

    def handler(req: httpx.Request) -> httpx.Response:
        body = json.loads(req.content)
        seen.append(body)
        if "Question 2" in body["messages"][-1]["content"]:
            return httpx.Response(400, json={"error": "bad prompt"})
        if len(seen) == 2:
            return httpx.Response(503, json={"error": "busy"})  # retried
        return httpx.Response(200, json={"choices": [{"message": {"role": "assistant", "content": "teacher says"}}]})

    t = {"endpoint": {"base_url": "http://teacher.invalid:8000", "model": "big", "retries": 1,
                      "max_requests_per_minute": 6000}}  # fmt: skip
    recs, st = teacher_records(engine, policy(teacher=t), now=NOW, cache_dir=tmp_path,
                               transport=httpx.MockTransport(handler), sleep=lambda s: None)  # fmt: skip
    assert st.failures == 1 and st.from_endpoint == 2 and st.requests == 4 and st.unanswered == 1
    assert {r["response"] for r in recs} == {"teacher says"}
    assert seen[0]["model"] == "big" and seen[0]["temperature"] == 0.0 and seen[0]["max_tokens"] == 512


# ------------------------------------------------------------------------------------------------ settings
def test_distill_settings_are_checked() -> None:
    from pydantic import ValidationError

    from driftloop.settings.alerts import AlertSettings
    from driftloop.settings.retrain import RetrainSettings, cross_check_retrain

    with pytest.raises(ValidationError, match="needs a teacher"):
        PolicySettings.model_validate({"name": "p", "model_id": "m", "base_model": "/b",
                                       "trigger": {"alerts": ["x"]}, "mode": "distill"})  # fmt: skip
    with pytest.raises(ValidationError, match="base_url"):
        policy(teacher={"endpoint": {"base_url": "teacher:8000", "model": "big"}})
    with pytest.raises(ValidationError, match=r"data\.workload"):
        policy(workload="")
    p = policy(workload="support", teacher={"model_id": "tea"})
    assert p.data.workload == "support"
    p = p.model_copy(update={"gate": p.gate.model_copy(update={"judge": "nope"})})
    r = RetrainSettings(policies=[p])
    assert cross_check_retrain(r, AlertSettings()) == [
        "retrain.policies.0.trigger.alerts.0: unknown alert rule 'x'; defined: []"]  # fmt: skip
    assert any("gate.judge: unknown judge 'nope'" in x for x in cross_check_retrain(r, AlertSettings(), ["j1"]))
