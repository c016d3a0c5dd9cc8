"""Distillation: a teacher's answers to a workload's production prompts become training data.

A policy with ``mode: distill`` trains the student (``policy.model_id``) on the answers of a teacher to the
prompts the student served in the lookback (of ``data.workload`` if set); ``mode: mix`` adds the ``sft``
records (positive feedback and corrections), and a prompt with a correction keeps the correction (the
teacher is not asked for it).

Where a prompt's answer comes from, in this order:

1. **Logs** (``teacher.model_id``): the teacher's newest logged, non-empty response to the same prompt text
   (shadow traffic logs the same prompt under the teacher's model id). Matched by exact prompt text, the
   text the student is trained on (any of the student's near-duplicate texts of one prompt); no session or
   metadata linkage is needed, so shadowing needs no request-id bookkeeping. The teacher's own interactions
   of the workload (fallback traffic: the teacher served the request) are prompts with answers too. A logged
   answer whose latest feedback is negative is not used.
2. **Endpoint** (``teacher.endpoint``): an OpenAI-compatible chat server asked for the prompts still without
   an answer, newest first (the held-out prompts are the newest: the gate needs them most). The prompt text
   is sent as one user message. Calls go through the judge's client (:class:`~driftloop.monitor.judge.
   JudgeClient`: the project's retries, Retry-After, request budget), paced by a token bucket
   (``max_requests_per_minute``), and answers are cached on disk by content (base URL, model, prompt,
   max_tokens, temperature) under ``<artifacts>/teacher-cache``: a cache hit costs no request and no budget,
   so a second run over the same prompts makes no calls. The cache entry keeps the call's latency for the
   gate's cost report.

Counts of what happened (``TeacherStats``) go into the snapshot's manifest and the gate's report.

This module also scores generated answers against the references the way distillation needs it:
``similarity`` (MiniLM cosine, the monitor's embedder) and ``judge_win`` (a configured judge's pairwise
preference of the answer over the reference: 1 win, 0.5 tie, 0 loss).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Connection, Engine, func, or_, select

from driftloop.monitor.judge import BudgetExhausted, Judge, JudgeClient, JudgeParseError, JudgeRequestError
from driftloop.retrain.dataset import Snapshot, filter_records, near_key, sft_candidates, write_snapshot
from driftloop.settings.judges import JudgeSettings
from driftloop.settings.retrain import PolicySettings, TeacherEndpointSettings
from driftloop.store.feedback import feedback_latest, store_feedback_threshold
from driftloop.store.models import interactions
from driftloop.store.scores import content_key
from driftloop.store.timestamps import utc

log = logging.getLogger("driftloop.retrain.distill")

Clock = Callable[[], float]
Sleep = Callable[[float], None]
_CHUNK = 1000  # prompts per IN (...) query


@dataclass
class TeacherStats:
    """What gathering the teacher's answers did in one run."""

    prompts: int = 0  # distinct production prompts (near-duplicates merged) in the lookback
    from_logs: int = 0  # answered by a logged teacher response
    from_endpoint: int = 0  # answered by the endpoint (a call or the cache)
    cache_hits: int = 0  # endpoint answers the cache gave (no request, no budget)
    requests: int = 0  # HTTP requests to the endpoint (retries included): what the budget counts
    budget_exhausted: bool = False
    failures: int = 0  # prompts whose endpoint call failed for good
    unanswered: int = 0  # prompts left without a teacher answer (no log and no endpoint, budget, failure)
    capped: int = 0  # prompts beyond teacher.max_prompts (the oldest)
    kept_corrections: int = 0  # mix: prompts with a correction, which keep it (the teacher is not asked)
    endpoint_latency_ms: list[float] = field(default_factory=list, repr=False)  # of the endpoint's answers

    def to_dict(self, latencies: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not latencies:
            d.pop("endpoint_latency_ms")
        return d


class TokenBucket:
    """At most ``per_minute`` acquisitions a minute, evenly spaced: a bucket of ``burst`` tokens refilled at
    ``per_minute / 60`` a second. ``clock`` and ``sleep`` are injectable (tests advance a fake clock)."""

    def __init__(self, per_minute: float, *, burst: float = 1.0, clock: Clock = time.monotonic,
                 sleep: Sleep = time.sleep) -> None:  # fmt: skip
        if per_minute <= 0 or burst < 1:
            raise ValueError(f"token bucket: need per_minute > 0 and burst >= 1 (got {per_minute}, {burst})")
        self.rate = per_minute / 60.0
        self.capacity = float(burst)
        self.tokens = float(burst)
        self.clock = clock
        self.sleep = sleep
        self.t = clock()
        self.waited_s = 0.0

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + max(0.0, now - self.t) * self.rate)
        self.t = now

    def acquire(self) -> None:
        """Take a token, sleeping until one is there."""
        self._refill()
        while self.tokens < 1.0 - 1e-9:
            wait = (1.0 - self.tokens) / self.rate
            self.sleep(wait)
            self.waited_s += wait
            self._refill()
        self.tokens = max(0.0, self.tokens - 1.0)


class AnswerCache:
    """JSON values on disk, one file per content key (``root/ab/abcdef....json``), written atomically.

    ``root`` None: no cache (every lookup misses, nothing is written).
    """

    def __init__(self, root: str | Path | None) -> None:
        self.root = Path(root) if root is not None else None

    def _path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        if self.root is None:
            return None
        try:
            v = json.loads(self._path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):  # missing, or torn by a crash mid-write of an older version: a miss
            return None
        return v if isinstance(v, dict) else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        if self.root is None:
            return
        p = self._path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=p.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(value, f, ensure_ascii=False)
        os.replace(tmp, p)


def endpoint_root(base_url: str) -> str:
    """The server's root: ``http://h:8000/v1`` and ``http://h:8000/`` are both ``http://h:8000``."""
    u = base_url.rstrip("/")
    return u[: -len("/v1")] if u.endswith("/v1") else u


def teacher_key(ep: TeacherEndpointSettings, prompt: str) -> str:
    """The cache key of the endpoint's answer to ``prompt``: everything that shapes the answer."""
    return content_key("teacher", endpoint_root(ep.base_url), ep.model, prompt, str(ep.max_tokens),
                       repr(float(ep.temperature)))  # fmt: skip


def _as_judge_settings(ep: TeacherEndpointSettings) -> JudgeSettings:
    """The teacher's endpoint in the judge client's terms (same transport, retries and budget counting)."""
    return JudgeSettings(name="teacher", base_url=endpoint_root(ep.base_url), model=ep.model,
                         api_key_env=ep.api_key_env, timeout_s=min(ep.timeout_s, 600.0),
                         temperature=ep.temperature, max_tokens=ep.max_tokens, attempts=ep.retries + 1)  # fmt: skip


class TeacherClient(JudgeClient):
    """The judge's client, paced by a token bucket; remembers the latency of its last request."""

    def __init__(self, ep: TeacherEndpointSettings, bucket: TokenBucket, *,
                 transport: httpx.BaseTransport | None = None) -> None:  # fmt: skip
        super().__init__(_as_judge_settings(ep), ep.budget_requests, transport=transport)
        self.bucket = bucket
        self.last_latency_ms: float | None = None

    def _post_once(self, body: dict[str, Any]) -> str:
        if self.requests >= self.budget:  # before the bucket: a spent budget never waits for a token
            raise BudgetExhausted(f"teacher endpoint: request budget of {self.budget} spent")
        self.bucket.acquire()
        t = time.perf_counter()
        try:
            return super()._post_once(body)
        finally:
            self.last_latency_ms = (time.perf_counter() - t) * 1000.0


@dataclass
class _Prompt:
    """One distinct production prompt (near-duplicates merged) and its teacher answer, once found."""

    prompt: str
    ts: datetime
    request_id: str
    texts: set[str]
    answer: str | None = None
    source: str | None = None


def _rows(conn: Connection, model_id: str, workload: str | None, since: datetime, until: datetime,
          answered: bool = False) -> list[Any]:  # fmt: skip
    """Interactions of ``model_id`` (of ``workload``) in [since, until), oldest first; ``answered``: with a
    non-empty response whose latest feedback is not negative."""
    i = interactions.c
    q = select(i.request_id, i.ts, i.prompt, i.response).where(i.model_id == model_id, i.ts >= since, i.ts < until)
    if workload is not None:
        q = q.where(i.workload == workload)
    if answered:
        fl = feedback_latest.c
        q = (q.select_from(interactions.outerjoin(feedback_latest, fl.request_id == i.request_id))
             .where(i.response.is_not(None), i.response != "", or_(fl.positive.is_(None), fl.positive)))  # fmt: skip
    return list(conn.execute(q.order_by(i.ts, i.id)).all())


def _logged_answers(
    conn: Connection, teacher_id: str, texts: Sequence[str], until: datetime
) -> dict[str, tuple[Any, str]]:
    """The teacher's newest usable logged answer to each prompt text: ``{text: (ts, response)}``."""
    i, fl = interactions.c, feedback_latest.c
    out: dict[str, tuple[Any, str]] = {}
    uniq = sorted(set(texts))
    for k in range(0, len(uniq), _CHUNK):
        q = (select(i.prompt, i.ts, i.response)
             .select_from(interactions.outerjoin(feedback_latest, fl.request_id == i.request_id))
             .where(i.model_id == teacher_id, i.prompt.in_(uniq[k : k + _CHUNK]), i.ts < until,
                    i.response.is_not(None), or_(fl.positive.is_(None), fl.positive))
             .order_by(i.ts.desc(), i.id.desc()))  # fmt: skip
        for p, ts, resp in conn.execute(q):
            if str(resp).strip():
                out.setdefault(p, (utc(ts), str(resp)))
    return out


def count_prompts(engine: Engine, model_id: str, since: datetime, until: datetime, workload: str | None) -> int:
    """Production prompts of ``model_id`` (of ``workload``) in [since, until): a distill policy's new data."""
    i = interactions.c
    q = select(func.count()).where(i.model_id == model_id, i.ts >= since, i.ts < until)
    if workload is not None:
        q = q.where(i.workload == workload)
    with engine.connect() as c:
        return int(c.execute(q).scalar_one())


def teacher_records(engine: Engine, policy: PolicySettings, *, now: datetime, cache_dir: str | Path | None,
                    skip: set[str] | frozenset[str] = frozenset(), transport: httpx.BaseTransport | None = None,
                    clock: Clock = time.monotonic, sleep: Sleep = time.sleep) -> tuple[list[dict[str, Any]], TeacherStats]:  # fmt: skip
    """Training records ``{request_id, ts, prompt, response, source}`` with the teacher's answers (source
    ``teacher_log`` or ``teacher_endpoint``) to the student's production prompts, and what it took.

    ``skip``: near-keys of prompts not to distil (mix: they have a correction). The feedback view's
    threshold must be stored first (``store_feedback_threshold``): negative logged answers are not used.
    """
    t, data = policy.teacher, policy.data
    if t is None:
        raise ValueError(f"policy {policy.name}: mode {policy.mode} needs a teacher")
    st = TeacherStats()
    since = now - timedelta(hours=data.lookback_hours)
    groups: dict[str, _Prompt] = {}

    def add(r: Any, answer: str | None) -> None:
        k = near_key(r.prompt)
        if not k:
            return
        ts = utc(r.ts)
        g = groups.get(k)
        if g is None:
            g = groups[k] = _Prompt(r.prompt, ts, r.request_id, set())
        elif ts >= g.ts:
            g.prompt, g.ts, g.request_id = r.prompt, ts, r.request_id
        g.texts.add(r.prompt)
        if answer is not None:
            g.answer, g.source = answer, "teacher_log"  # rows come oldest first: the newest answer stays

    with engine.connect() as conn:
        for r in _rows(conn, policy.model_id, data.workload, since, now):
            add(r, None)
        if t.model_id is not None:
            for r in _rows(conn, t.model_id, data.workload, since, now, answered=True):  # fallback traffic
                add(r, str(r.response))
            missing = [g for g in groups.values() if g.answer is None]
            logged = _logged_answers(conn, t.model_id, [x for g in missing for x in g.texts], now)
            for g in missing:
                found = [logged[x] for x in g.texts if x in logged]
                if found:
                    g.answer, g.source = max(found, key=lambda a: a[0])[1], "teacher_log"
    st.prompts = len(groups)
    for k in skip:
        if groups.pop(k, None) is not None:
            st.kept_corrections += 1
    usable = [g for g in groups.values() if g.answer is not None or t.endpoint is not None]
    st.unanswered += len(groups) - len(usable)
    usable.sort(key=lambda g: (g.ts, g.request_id), reverse=True)  # newest first
    if len(usable) > t.max_prompts:
        st.capped = len(usable) - t.max_prompts
        usable = usable[: t.max_prompts]
    st.from_logs = sum(1 for g in usable if g.answer is not None)
    todo = [g for g in usable if g.answer is None]
    if todo:
        assert t.endpoint is not None
        _ask_endpoint(t.endpoint, todo, st, AnswerCache(cache_dir if t.endpoint.cache else None), transport,
                      TokenBucket(t.endpoint.max_requests_per_minute, clock=clock, sleep=sleep))  # fmt: skip
    recs = [{"request_id": g.request_id, "ts": g.ts, "prompt": g.prompt, "response": g.answer, "source": g.source}
            for g in usable if g.answer is not None]  # fmt: skip
    return recs, st


def _ask_endpoint(ep: TeacherEndpointSettings, todo: list[_Prompt], st: TeacherStats, cache: AnswerCache,
                  transport: httpx.BaseTransport | None, bucket: TokenBucket) -> None:  # fmt: skip
    """Answer ``todo`` (newest first) from the cache, else the endpoint, until the budget is spent."""
    client = TeacherClient(ep, bucket, transport=transport)
    try:
        for g in todo:
            key = teacher_key(ep, g.prompt)
            hit = cache.get(key)
            if hit is not None and isinstance(hit.get("answer"), str):
                g.answer, g.source = hit["answer"], "teacher_endpoint"
                st.cache_hits += 1
                st.from_endpoint += 1
                if isinstance(hit.get("latency_ms"), (int, float)):
                    st.endpoint_latency_ms.append(float(hit["latency_ms"]))
                continue
            if st.budget_exhausted:  # only the cache answers now
                st.unanswered += 1
                continue
            try:
                answer = client.complete(g.prompt)
            except BudgetExhausted:
                st.budget_exhausted = True
                st.unanswered += 1
                log.info("teacher endpoint: request budget of %d spent; later prompts only from the cache",
                         ep.budget_requests)  # fmt: skip
                continue
            except JudgeRequestError as e:
                st.failures += 1
                st.unanswered += 1
                log.warning("teacher endpoint: no answer for %s: %s", g.request_id, e)
                continue
            lat = client.last_latency_ms
            g.answer, g.source = answer, "teacher_endpoint"
            st.from_endpoint += 1
            if lat is not None:
                st.endpoint_latency_ms.append(lat)
            cache.put(key, {"answer": answer, "latency_ms": lat, "model": ep.model,
                            "at": datetime.now(UTC).isoformat()})  # fmt: skip
    finally:
        st.requests += client.requests
        client.close()


def build_distill_snapshot(engine: Engine, policy: PolicySettings, out_root: str | Path, *,
                           positive_threshold: float, cache_dir: str | Path | None, now: datetime | None = None,
                           transport: httpx.BaseTransport | None = None, clock: Clock = time.monotonic,
                           sleep: Sleep = time.sleep) -> tuple[Snapshot, TeacherStats]:  # fmt: skip
    """The snapshot of a ``distill`` or ``mix`` policy (``retrain.dataset.write_snapshot``) and the teacher's counts.

    mix: the ``sft`` records (positive feedback, corrections) and the teacher's answers; a prompt with a
    correction keeps it. Both go through the same filters (empties, refusals, duplicates, ``max_samples``).
    """
    if policy.mode == "sft":
        raise ValueError(f"policy {policy.name} is mode sft: use retrain.dataset.build_snapshot")
    now = now or datetime.now(UTC)
    data = policy.data
    store_feedback_threshold(engine, positive_threshold)
    sft = sft_candidates(engine, policy.model_id, data, now, positive_threshold=positive_threshold) \
        if policy.mode == "mix" else []  # fmt: skip
    corrected = {near_key(r["prompt"]) for r in sft if r["source"] == "correction"}
    teacher, st = teacher_records(engine, policy, now=now, cache_dir=cache_dir, skip=corrected,
                                  transport=transport, clock=clock, sleep=sleep)  # fmt: skip
    records, dropped = filter_records(sft + teacher, data)
    hint = ("configure teacher.endpoint (no logged teacher answer for most prompts)"
            if st.unanswered and policy.teacher and policy.teacher.endpoint is None
            else "wait for more traffic, raise teacher.endpoint.budget_requests")  # fmt: skip
    snap = write_snapshot(records, dropped, policy.model_id, data, out_root, positive_threshold=positive_threshold,
                          policy=policy.name, now=now, extra={"mode": policy.mode, "teacher": st.to_dict()},
                          hint=hint)  # fmt: skip
    return snap, st


# -- scoring against the teacher ----------------------------------------------------------------------
def suite_rows(eval_path: str | Path, golden_path: str | Path | None) -> dict[str, list[dict[str, str]]]:
    """The gate's suites as the worker reads them, in its order: ``{suite: [{prompt, reference, source}]}``."""

    def read(p: str | Path) -> list[dict[str, str]]:
        out = []
        for line in Path(p).read_text(encoding="utf-8").splitlines():
            if line.strip():
                o = json.loads(line)
                out.append({"prompt": str(o.get("prompt") or ""), "source": str(o.get("source") or ""),
                            "reference": str(o.get("reference", o.get("response")) or "")})  # fmt: skip
        return out

    out = {"heldout": read(eval_path)}
    if golden_path:
        out["golden"] = read(golden_path)
    return out


def similarity_values(outputs: Sequence[str | None], references: Sequence[str], embed: Callable[[list[str]], Any],
                      ) -> list[float] | None:  # fmt: skip
    """Cosine similarity of each answer to its reference with unit-length sentence vectors (``embed``); an
    empty answer scores 0. None when any answer is missing (generation off)."""
    import numpy as np

    if len(outputs) != len(references):
        raise ValueError(f"{len(outputs)} answers for {len(references)} references")
    if any(o is None for o in outputs):
        return None
    if not outputs:
        return []
    va = np.asarray(embed([str(o) for o in outputs]), dtype=np.float64)
    vb = np.asarray(embed(list(references)), dtype=np.float64)
    sims = np.clip((va * vb).sum(axis=1), -1.0, 1.0)
    return [0.0 if not str(o).strip() else float(s) for o, s in zip(outputs, sims, strict=True)]


@dataclass
class JudgeRun:
    """What scoring with the judge did (requests, cache hits, unparsed replies, failures)."""

    judge: str
    requests: int = 0
    cache_hits: int = 0
    parse_failures: int = 0
    failures: int = 0
    budget_exhausted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def judge_win_values(s: JudgeSettings, engine: Engine, prompts: Sequence[str], outputs: Sequence[str | None],
                     references: Sequence[str], *, cache: AnswerCache, run: JudgeRun,
                     client: JudgeClient | None = None) -> list[float] | None:  # fmt: skip
    """A pairwise judge's preference of each answer over its reference: 1 win, 0.5 tie, 0 loss.

    The judge's own rubric, order by content (position bias averages out) and parsing
    (:class:`~driftloop.monitor.judge.Judge`); a pointwise judge is asked with the shipped pairwise rubric.
    Verdicts are cached on disk by their content key. None when any answer is missing, or the judge gave
    no verdict for some answer (budget, failure, unparsed reply): a metric with holes is not compared.
    """
    from driftloop.monitor.judge import Item
    from driftloop.settings.monitor import MonitorSettings

    if any(o is None for o in outputs):
        return None
    if s.mode != "pairwise":
        s = s.model_copy(update={"mode": "pairwise", "rubric": None})
    judge = Judge(s, engine, MonitorSettings())

    own = client is None
    client = client or JudgeClient(s, s.max_requests_per_run)
    out: list[float] = []
    try:
        for p, o, ref in zip(prompts, outputs, references, strict=True):
            v = judge.verdict(Item("", p, str(o), ref, None), ref)
            hit = cache.get(v.key)
            if hit is not None and isinstance(hit.get("value"), (int, float)):
                run.cache_hits += 1
                out.append(float(hit["value"]))
                continue
            try:
                reply = client.complete(v.text)
                val = judge.value(reply, v)
            except BudgetExhausted:
                run.budget_exhausted = True
                return None
            except JudgeRequestError:
                run.failures += 1
                return None
            except JudgeParseError:
                run.parse_failures += 1
                return None
            cache.put(v.key, {"value": val, "judge": s.name, "model": s.model})
            out.append(val)
    finally:
        run.requests += client.requests
        if own:
            client.close()
    return out
