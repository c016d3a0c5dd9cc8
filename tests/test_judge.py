"""LLM judges (driftloop.monitor.judge): against a scripted OpenAI-compatible stub and the real `driftloop serve`.

Storage is real PostgreSQL: interactions and a checked window are written as the monitor would, the judge
reads the window, asks the endpoint and stores scores.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Engine, func, insert, select

from driftloop.monitor.judge import Judge, JudgeStats, parse_pairwise, parse_pointwise
from driftloop.monitor.tables import monitor_windows, window_metrics
from driftloop.settings.judges import JudgeSettings
from driftloop.settings.monitor import MonitorSettings
from driftloop.store.db import create_engine_from_url
from driftloop.store.models import interactions
from driftloop.store.scores import content_key, scores
from tests.monitor_helpers import T0, insert_rows, interaction

pytestmark = pytest.mark.postgres

Reply = tuple[int, dict[str, str], str]  # status, headers, assistant content (or raw body for errors)


@dataclass
class Stub:
    """A scripted OpenAI-compatible chat endpoint that records every request and when it arrived."""

    reply: Callable[[dict[str, Any]], Reply]
    script: list[Reply] = field(default_factory=list)  # served first, in order
    requests: list[tuple[float, dict[str, Any], dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def prompts(self) -> list[str]:
        return [str(b["messages"][-1]["content"]) for _, b, _ in self.requests]


@pytest.fixture
def stub() -> Iterator[Stub]:
    st = Stub(reply=lambda body: (200, {}, "It is fine.\nSCORE: 4"))

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with st.lock:
                st.requests.append((time.monotonic(), body, dict(self.headers)))
                code, headers, content = st.script.pop(0) if st.script else st.reply(body)
            out = (json.dumps({"id": "x", "object": "chat.completion", "model": body["model"], "choices": [
                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}]})
                if code == 200 else json.dumps({"error": content}))  # fmt: skip
            data = out.encode()
            self.send_response(code)
            for k, v in {"Content-Type": "application/json", "Content-Length": str(len(data)), **headers}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    st.url = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        yield st
    finally:
        srv.shutdown()
        t.join(10)


@pytest.fixture
def engine(pg_url: str) -> Engine:
    return create_engine_from_url(pg_url)


def judge_settings(url: str, **kw: Any) -> JudgeSettings:
    base: dict[str, Any] = {"name": "stub", "base_url": url, "model": "judge-model", "sample": 5,
                            "backoff_s": 0.01, "backoff_max_s": 0.02}  # fmt: skip
    return JudgeSettings(**{**base, **kw})


def add_window(engine: Engine, rows: list[dict[str, Any]], index: int = 0, model: str = "m", segment: str = "",
               store: bool = True, workload: str = "") -> int:  # fmt: skip
    """Store interactions and one checked count window over them, as the monitor would; returns its id."""
    if store:
        insert_rows(engine, rows)
    with engine.begin() as c:
        ids = c.execute(select(interactions.c.id, interactions.c.ts).where(
            interactions.c.request_id.in_([r["request_id"] for r in rows])).order_by(interactions.c.ts,
                                                                                    interactions.c.id)).all()  # fmt: skip
        return int(c.execute(insert(monitor_windows).returning(monitor_windows.c.id), {
            "model_id": model, "workload": workload, "segment": segment, "window_kind": "count", "window_index": index,
            "window_start": ids[0][1], "window_end": ids[-1][1], "first_id": ids[0][0], "last_id": ids[-1][0],
            "n_records": len(ids), "ref_kind": "none", "ref_n": 0, "status": "ok",
            "created_at": datetime.now(UTC)}).scalar_one())  # fmt: skip


def stored(engine: Engine, source: str = "judge:stub") -> list[Any]:
    with engine.connect() as c:
        return list(c.execute(select(scores).where(scores.c.source == source).order_by(scores.c.request_id)).all())


def metric(engine: Engine, window_id: int, name: str) -> float | None:
    with engine.connect() as c:
        v = c.execute(select(window_metrics.c.value).where(window_metrics.c.window_id == window_id,
                                                           window_metrics.c.name == name)).first()  # fmt: skip
    return None if v is None else v[0]


def run(engine: Engine, s: JudgeSettings, used_today: int = 0, champion: str | None = None,
        monitor: MonitorSettings | None = None) -> JudgeStats:  # fmt: skip
    return Judge(s, engine, monitor or MonitorSettings(), champion=lambda _m: champion).run_once(used_today)


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def texts(n: int, start: int = 0, prefix: str = "r", **kw: Any) -> list[dict[str, Any]]:
    return [interaction(start + i, prompt=f"How do I reset password {start + i}?", response=f"Click reset {i}.",
                        prefix=prefix, **kw) for i in range(n)]  # fmt: skip


# ------------------------------------------------------------------------------------------------ parsing
def test_verdict_lines_are_parsed_strictly() -> None:
    assert parse_pointwise("Good.\nSCORE: 5", 1, 5) == 1.0
    assert parse_pointwise("ok\n\n  score: 2 \n", 1, 5) == 0.25
    assert parse_pointwise("**SCORE: 3**", 1, 5) == 0.5
    for bad in ("SCORE: 4\nbut on reflection it is weak", "SCORE: 6", "SCORE: 4.5", "I'd say 4/5", ""):
        with pytest.raises(ValueError):
            parse_pointwise(bad, 1, 5)
    assert [parse_pairwise(f"because\nPREFERENCE: {x}") for x in ("A", "b", "Tie")] == ["A", "B", "TIE"]
    for bad in ("PREFERENCE: both", "A is better", "PREFERENCE: A\nthanks"):
        with pytest.raises(ValueError):
            parse_pairwise(bad)


def test_settings_check_the_rubric_and_never_hold_a_key() -> None:
    with pytest.raises(ValueError, match="must contain"):
        JudgeSettings(name="j", base_url="http://x", model="m", rubric="Rate this: {prompt}")
    with pytest.raises(ValueError, match="unknown field"):
        JudgeSettings(name="j", base_url="http://x", model="m", mode="pairwise", rubric="{response} {response_a} "
                      "{response_b}")  # fmt: skip
    with pytest.raises(ValueError, match="api_key"):
        JudgeSettings(name="j", base_url="http://x", model="m", api_key_env="sk-123 secret")
    with pytest.raises(ValueError, match="extra"):
        JudgeSettings(name="j", base_url="http://x", model="m", api_key="sk-123")  # type: ignore[call-arg]
    assert "{response_a}" in JudgeSettings(name="j", base_url="http://x", model="m", mode="pairwise").rubric_text


# ------------------------------------------------------------------------------------------------ pointwise
def test_pointwise_scores_a_seeded_sample_and_the_cache_answers_repeats(engine: Engine, stub: Stub,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("JUDGE_KEY", "secret-key")
    rows = texts(12)
    wid = add_window(engine, rows)
    s = judge_settings(stub.url, api_key_env="JUDGE_KEY", sample=5)
    st = run(engine, s)
    assert (st.sampled, st.judged, st.scored, st.requests, st.parse_failures) == (5, 5, 5, 5, 0)
    assert all(h.get("Authorization") == "Bearer secret-key" for _, _, h in stub.requests)
    assert all(b["model"] == "judge-model" and b["temperature"] == 0 for _, b, _ in stub.requests)
    got = stored(engine)
    assert len(got) == 5 and {r.value for r in got} == {0.75}
    by_id = {r["request_id"]: r for r in rows}
    for r in got:  # the key covers prompt, answer, reference, rubric and judge model
        src = by_id[r.request_id]
        assert r.content_key == content_key("pointwise", src["prompt"], src["response"], "", s.rubric_text, s.model)
        assert r.metadata["window_id"] == wid and not r.metadata.get("cached")
        assert src["response"] in "\n".join(stub.prompts())
    assert metric(engine, wid, "judge.stub.n") == 5 and metric(engine, wid, "judge.stub.mean") == 0.75

    # the same window again: judged already, nothing asked
    assert run(engine, s).requests == 0 and len(stub.requests) == 5
    # the same content in another model's window (other request ids, other order): the sample picks the same
    # content (seeded by content and window index) and the cache answers every one of them
    again = [{**r, "request_id": "again-" + r["request_id"], "model_id": "m2"} for r in rows[::-1]]
    wid2 = add_window(engine, again, model="m2")
    st2 = run(engine, s)
    assert (st2.requests, st2.cached, st2.scored) == (0, 5, 0) and len(stub.requests) == 5
    cached = [r for r in stored(engine) if r.metadata["window_id"] == wid2]
    assert len(cached) == 5 and all(r.metadata["cached"] and r.value == 0.75 for r in cached)
    assert {r.content_key for r in cached} == {r.content_key for r in got}


def test_unparsed_replies_are_counted_and_never_stored(engine: Engine, stub: Stub) -> None:
    stub.reply = lambda body: (200, {}, "This answer looks quite good to me, maybe a four.")
    wid = add_window(engine, texts(6))
    before = counter("driftloop_judge_parse_failures_total", judge="stub")
    st = run(engine, judge_settings(stub.url, sample=4))
    assert (st.requests, st.parse_failures, st.scored) == (4, 4, 0)
    assert counter("driftloop_judge_parse_failures_total", judge="stub") - before == 4
    assert stored(engine) == []
    assert metric(engine, wid, "judge.stub.parse_failures") == 4 and metric(engine, wid, "judge.stub.n") == 0


def test_segment_windows_are_judged_each_on_its_own_records(engine: Engine, stub: Stub) -> None:
    rows = [{**r, "metadata": {"region": "eu" if i % 2 else "us"}} for i, r in enumerate(texts(8))]
    insert_rows(engine, rows)
    eu = add_window(engine, [r for r in rows if r["metadata"]["region"] == "eu"], segment="region=eu", store=False)
    us = add_window(engine, [r for r in rows if r["metadata"]["region"] == "us"], segment="region=us", store=False)
    st = run(engine, judge_settings(stub.url, sample=10), monitor=MonitorSettings(segment_keys=["region"]))
    assert (st.windows_done, st.scored) == (2, 8)
    region = {r["request_id"]: r["metadata"]["region"] for r in rows}
    for wid, want in ((eu, "eu"), (us, "us")):
        assert {region[r.request_id] for r in stored(engine) if r.metadata["window_id"] == wid} == {want}
        assert metric(engine, wid, "judge.stub.n") == 4


def test_workload_windows_are_judged_each_on_its_own_records(engine: Engine, stub: Stub) -> None:
    # two workloads of one model interleaved in time: each window's bounds span the other's records too
    rows = [{**r, "workload": "chat" if i % 2 else "rag"} for i, r in enumerate(texts(10))]
    insert_rows(engine, rows)
    wids = {wl: add_window(engine, [r for r in rows if r["workload"] == wl], workload=wl, store=False)
            for wl in ("chat", "rag")}  # fmt: skip
    st = run(engine, judge_settings(stub.url, sample=20))
    assert (st.windows_done, st.sampled, st.scored) == (2, 10, 10)
    workload = {r["request_id"]: r["workload"] for r in rows}
    for wl, wid in wids.items():
        judged = [r for r in stored(engine) if r.metadata["window_id"] == wid]
        assert len(judged) == 5 and {workload[r.request_id] for r in judged} == {wl}
        with engine.connect() as c:  # the dashboards' workload filter finds the window's judge metrics
            got = c.execute(select(window_metrics.c.name, window_metrics.c.workload).where(
                window_metrics.c.window_id == wid)).all()  # fmt: skip
        assert len(got) == 3 and {w for _, w in got} == {wl}
        assert metric(engine, wid, "judge.stub.n") == 5


# ------------------------------------------------------------------------------------------------ pairwise
def test_pairwise_against_the_champion_answer_else_the_reference(engine: Engine, stub: Stub) -> None:
    prompts = [f"Where is parcel {i}?" for i in range(4)]
    champ = [interaction(i, prompt=p, response=f"champion says {i}", version="v1", prefix="c",
                         ts=T0 - timedelta(hours=1, seconds=-i)) for i, p in enumerate(prompts[:3])]  # fmt: skip
    insert_rows(engine, champ)  # the champion's earlier answers to three of the prompts (outside the window)
    refs = [None, None, None, "the reference answer"]
    chal = [interaction(10 + i, prompt=p, response=f"challenger says {i}", version="v2", reference=refs[i])
            for i, p in enumerate(prompts)]  # fmt: skip
    chal.append(interaction(20, prompt="No answer to compare with", response="challenger alone", version="v2"))
    wid = add_window(engine, chal)

    def prefer_challenger(body: dict[str, Any]) -> Reply:
        text = str(body["messages"][-1]["content"])
        a = text.split("Answer A:")[1].split("Answer B:")[0]
        return 200, {}, "Reasons.\nPREFERENCE: " + ("A" if "challenger" in a else "B")

    stub.reply = prefer_challenger
    s = judge_settings(stub.url, mode="pairwise", sample=10)
    st = run(engine, s, champion="v1")
    assert (st.sampled, st.judged, st.scored, st.skipped) == (5, 4, 4, {"no_reference": 1})
    got = {r.request_id: r for r in stored(engine)}
    assert all(r.value == 1.0 for r in got.values())  # whatever position the challenger was shown in
    positions = {r.metadata["position"] for r in got.values()}
    assert positions <= {"a", "b"}
    kinds = {rid: r.metadata["reference"] for rid, r in got.items()}
    assert kinds == {"r-m-10": "champion", "r-m-11": "champion", "r-m-12": "champion", "r-m-13": "record"}
    assert got["r-m-10"].content_key == content_key("pairwise", prompts[0], "challenger says 0", "champion says 0",
                                                    s.rubric_text, s.model)  # fmt: skip
    assert metric(engine, wid, "judge.stub.mean") == 1.0

    # a judge that prefers the champion gives 0 to the same answers
    stub.reply = lambda body: (200, {}, "PREFERENCE: " + (
        "B" if "challenger" in str(body["messages"][-1]["content"]).split("Answer B:")[0].split("Answer A:")[1]
        else "A"))  # fmt: skip
    run(engine, judge_settings(stub.url, name="other", mode="pairwise", sample=10), champion="v1")
    assert {r.value for r in stored(engine, "judge:other")} == {0.0}


# ------------------------------------------------------------------------------------------------ budget
def test_the_budget_stops_a_run_cleanly_and_the_next_run_goes_on(engine: Engine, stub: Stub) -> None:
    wid = add_window(engine, texts(10))
    s = judge_settings(stub.url, sample=8, max_requests_per_run=3, max_requests_per_day=100)
    st = run(engine, s)
    assert (st.requests, st.scored, st.budget_exhausted, st.skipped) == (3, 3, True, {"budget_exhausted": 5})
    assert metric(engine, wid, "judge.stub.n") is None  # not complete: left for a later run
    assert run(engine, s).scored == 3 and run(engine, s).scored == 2
    assert len(stub.requests) == 8 and len(stored(engine)) == 8 and metric(engine, wid, "judge.stub.n") == 8
    # the day's budget counts what earlier runs used
    add_window(engine, texts(4, start=50), index=1)
    st = run(engine, s, used_today=100)
    assert (st.requests, st.budget_exhausted) == (0, True) and len(stub.requests) == 8


# ------------------------------------------------------------------------------------------------ retries
def test_a_503_is_retried_and_a_400_is_not(engine: Engine, stub: Stub) -> None:
    add_window(engine, texts(1))
    stub.script = [(503, {}, "busy")]
    st = run(engine, judge_settings(stub.url, attempts=3))
    assert (st.requests, st.scored, st.errors) == (2, 1, 0)

    wid = add_window(engine, texts(2, start=100, prefix="bad"), index=1)
    stub.reply = lambda body: (400, {}, "bad request: unknown model")
    n = len(stub.requests)
    st = run(engine, judge_settings(stub.url, name="four", attempts=3))
    assert (st.requests, st.errors, st.scored) == (3, 3, 0)  # both windows' 3 records, one request each
    assert len(stub.requests) - n == 3
    assert metric(engine, wid, "judge.four.n") is None  # failed requests leave the window for a later run


def test_retry_after_is_honoured(engine: Engine, stub: Stub) -> None:
    add_window(engine, texts(1))
    stub.script = [(429, {"Retry-After": "1"}, "slow down")]
    st = run(engine, judge_settings(stub.url, attempts=3, backoff_s=0.01, backoff_max_s=0.01))
    assert (st.requests, st.scored) == (2, 1)
    (t1, _, _), (t2, _, _) = stub.requests
    assert t2 - t1 >= 1.0  # the backoff alone would have waited 0.01 s


# ------------------------------------------------------------------------------------------------ driftloop serve
def test_against_driftloop_serve(engine: Engine, toy_base_model: Path) -> None:
    """The toy GPT-2 behind `driftloop serve` answers the rubric with text that is (almost always) no verdict."""
    from driftloop.serve import create_serve_app
    from driftloop.settings import load_settings
    from tests.test_serve import UvicornThread

    app = create_serve_app(load_settings(None, serve={"base_model": str(toy_base_model), "model_id": "toy-judge",
                                                      "max_new_tokens": 12, "log_records": False}))  # fmt: skip
    wid = add_window(engine, texts(4))
    before = counter("driftloop_judge_requests_total", judge="toy", outcome="http_200")
    with UvicornThread(app) as srv:
        # the toy's context is 256 tokens: a short rubric (same parsing: a final "SCORE: n" line)
        st = run(engine, JudgeSettings(name="toy", base_url=srv.url, model="toy-judge", sample=3, max_tokens=12,
                                       timeout_s=120, rubric="Q: {prompt}\nA: {response}\nRate 1-5.\nSCORE:"))  # fmt: skip
    assert st.requests == 3 and st.errors == 0  # the transport works: three chat completions answered
    assert counter("driftloop_judge_requests_total", judge="toy", outcome="http_200") - before == 3
    assert st.parse_failures + st.scored == 3
    assert len(stored(engine, "judge:toy")) == st.scored  # a reply without a verdict stores nothing
    assert metric(engine, wid, "judge.toy.parse_failures") == st.parse_failures
    with engine.connect() as c:
        assert c.execute(select(func.count()).select_from(scores)).scalar_one() == st.scored


# ------------------------------------------------------------------------------------------------ the job
def test_the_judge_job_keeps_to_the_day_budget_across_runs(engine: Engine, stub: Stub, pg_url: str) -> None:
    from driftloop.jobs import JOBS, JobContext, job_runs, run_named
    from driftloop.settings import load_settings

    judge = {"name": "stub", "base_url": stub.url, "model": "judge-model", "sample": 5, "max_requests_per_day": 3}
    s = load_settings(None, database={"url": pg_url}, quality={"judges": [judge]})
    assert JOBS["judge"].interval_s(s) == s.scheduler.drift_check_s > 0
    assert JOBS["judge"].interval_s(load_settings(None)) == 0  # no judge configured: not scheduled
    wid = add_window(engine, texts(6))
    ctx = JobContext(s, engine, "test")
    assert run_named("judge", ctx) == "succeeded" and run_named("judge", ctx) == "succeeded"
    with engine.connect() as c:
        results = [json.loads(r) for r in c.execute(select(job_runs.c.result).where(job_runs.c.job == "judge")
                                                    .order_by(job_runs.c.id)).scalars()]  # fmt: skip
    first, second = (r["judges"]["stub"] for r in results)
    assert (first["requests"], first["scored"], first["budget_exhausted"]) == (3, 3, True)
    assert (second["requests"], second["budget_exhausted"]) == (0, True)  # the day's 3 requests are spent
    assert len(stub.requests) == 3 and len(stored(engine)) == 3 and metric(engine, wid, "judge.stub.n") is None
