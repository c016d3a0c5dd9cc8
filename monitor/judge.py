"""LLM judges: an OpenAI-compatible chat endpoint scores a seeded sample of each checked window.

Why this shape: judge calls cost money and time, so a judge sees a sample of each window (chosen by
content, like the monitor's other samples, so re-sent records give the same choice), never answers the
same content twice (scores carry a ``content_key`` of prompt, answer, reference, rubric and model; a key
already scored is copied, not asked again), and stops cleanly at its request budget. A reply that does
not end in the rubric's verdict line is a *parse failure*: counted (Prometheus and the run's stats),
never stored as a score, because a guessed score is worse than none for the estimates built on these.

Pairwise judges compare the window's answer with the champion's logged answer to the same prompt (else the
record's ``reference``); the order of the two answers is chosen by content, so a judge's position bias
averages out over a window instead of favouring one side.

Transport: one POST per verdict to ``{base_url}/v1/chat/completions`` through :mod:`driftloop.retry`
(connect errors, 429 and 5xx are retried; Retry-After is honoured; other 4xx are not retried).
This module is the only one that retries these requests.
"""

from __future__ import annotations

import logging
import os
import re
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from prometheus_client import Counter as PromCounter
from sqlalchemy import Connection, Engine, and_, insert, select

from driftloop.monitor.tables import monitor_windows, window_metrics
from driftloop.monitor.windows import window_rows
from driftloop.retry import Transient, retrying
from driftloop.settings.judges import JudgeSettings
from driftloop.settings.monitor import MonitorSettings
from driftloop.store.models import interactions
from driftloop.store.scores import Score, cached_values, content_key, record_scores
from driftloop.store.timestamps import utc

log = logging.getLogger("driftloop.monitor.judge")

REQUESTS = PromCounter("driftloop_judge_requests", "HTTP requests to judge endpoints by outcome (retries included)",
                       ["judge", "outcome"])  # fmt: skip
PARSE_FAILURES = PromCounter("driftloop_judge_parse_failures", "Judge replies without a valid verdict line (no score "
                             "stored)", ["judge"])  # fmt: skip
SCORES = PromCounter("driftloop_judge_scores", "Judge scores stored, by whether the content cache answered",
                     ["judge", "cached"])  # fmt: skip
SKIPPED = PromCounter("driftloop_judge_skipped", "Sampled records not judged, by reason", ["judge", "reason"])

SCORE_RE = re.compile(r"^\s*\**\s*SCORE\s*:\s*\**\s*(-?\d+)\s*\**\s*$", re.IGNORECASE)
PREFERENCE_RE = re.compile(r"^\s*\**\s*PREFERENCE\s*:\s*\**\s*(A|B|TIE)\s*\**\s*$", re.IGNORECASE)
METRIC_PREFIX = "judge."  # window_metrics: judge.<name>.{mean,n,parse_failures}; ``.n`` marks a judged window


class JudgeParseError(ValueError):
    """A reply without the verdict line the rubric asks for (counted, never stored)."""


class JudgeRequestError(RuntimeError):
    """A request that failed for good: a 4xx other than 429, or a transient failure past its retries."""


class BudgetExhausted(Exception):
    """The run's or the day's request budget is spent: the run stops cleanly."""


def parse_pointwise(reply: str, lo: int, hi: int) -> float:
    """The last non-empty line must be ``SCORE: <int in [lo, hi]>``; the score mapped to [0, 1]."""
    lines = [ln for ln in reply.strip().splitlines() if ln.strip()]
    m = SCORE_RE.match(lines[-1]) if lines else None
    if m is None:
        raise JudgeParseError("no final 'SCORE: <n>' line")
    v = int(m.group(1))
    if not lo <= v <= hi:
        raise JudgeParseError(f"score {v} outside {lo}-{hi}")
    return (v - lo) / (hi - lo)


def parse_pairwise(reply: str) -> str:
    """The last non-empty line must be ``PREFERENCE: A|B|TIE``; returns ``A``, ``B`` or ``TIE``."""
    lines = [ln for ln in reply.strip().splitlines() if ln.strip()]
    m = PREFERENCE_RE.match(lines[-1]) if lines else None
    if m is None:
        raise JudgeParseError("no final 'PREFERENCE: A|B|TIE' line")
    return m.group(1).upper()


@dataclass
class JudgeStats:
    """What one run of one judge did (returned, and logged by the job)."""

    judge: str
    windows: int = 0  # windows looked at
    windows_done: int = 0  # windows whose whole sample was handled (marked judged)
    sampled: int = 0
    requests: int = 0  # HTTP requests made (retries included): what the budget counts
    judged: int = 0  # verdicts asked for (one per record not in the cache)
    scored: int = 0  # scores stored from a fresh verdict
    cached: int = 0  # scores copied from the content cache (no request)
    parse_failures: int = 0
    errors: int = 0  # requests that failed for good
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> records
    budget_exhausted: bool = False

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + n
        SKIPPED.labels(self.judge, reason).inc(n)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class JudgeClient:
    """Verdicts from one OpenAI-compatible chat endpoint, within a request budget, with the project's retries."""

    def __init__(self, s: JudgeSettings, budget: int, *, transport: httpx.BaseTransport | None = None) -> None:
        self.s = s
        self.budget = budget
        self.requests = 0
        self.outcomes: Counter[str] = Counter()
        key = os.environ.get(s.api_key_env, "") if s.api_key_env else ""
        if s.api_key_env and not key:
            log.warning("judge %s: environment variable %s is empty; sending no API key", s.name, s.api_key_env)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=s.base_url.rstrip("/"), timeout=s.timeout_s, headers=headers,
                                 transport=transport)  # fmt: skip
        self._retry_after = 0.0

    def close(self) -> None:
        self.http.close()

    def _count(self, outcome: str) -> None:
        self.outcomes[outcome] += 1
        REQUESTS.labels(self.s.name, outcome).inc()

    def _sleep(self, seconds: float) -> None:
        """The backoff's wait, or the server's Retry-After when that is longer (capped by the settings)."""
        wait = max(seconds, min(self._retry_after, self.s.retry_after_max_s))
        self._retry_after = 0.0
        if wait > seconds:  # the retry log line names the backoff's wait; say that the server's is longer
            log.warning("judge %s: waiting %.2fs as the server's Retry-After asks", self.s.name, wait)
        time.sleep(wait)

    def _post_once(self, body: dict[str, Any]) -> str:
        if self.requests >= self.budget:
            raise BudgetExhausted(f"judge {self.s.name}: request budget of {self.budget} spent")
        self.requests += 1
        try:
            r = self.http.post("/v1/chat/completions", json=body)
        except httpx.TransportError:
            self._count("transport_error")
            raise
        self._count(f"http_{r.status_code}")
        if r.status_code == 429 or r.status_code >= 500:
            self._retry_after = _retry_after_s(r.headers.get("retry-after"))
            raise Transient(f"HTTP {r.status_code}: {r.text[:200]}")
        if r.status_code >= 400:
            raise JudgeRequestError(f"HTTP {r.status_code}: {r.text[:300]}")
        try:
            content = r.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise JudgeRequestError(f"not a chat completion: {r.text[:300]}") from e
        if not isinstance(content, str):
            raise JudgeRequestError("the chat completion has no text content")
        return content

    def complete(self, user: str) -> str:
        """The reply to one rubric prompt. Raises BudgetExhausted, or JudgeRequestError when it failed for good."""
        msgs = ([{"role": "system", "content": self.s.system}] if self.s.system else []) + [
            {"role": "user", "content": user}]  # fmt: skip
        body = {"model": self.s.model, "messages": msgs, "temperature": self.s.temperature,
                "max_tokens": self.s.max_tokens}  # fmt: skip
        try:
            for attempt in retrying(what=f"judge {self.s.name} request", attempts=self.s.attempts,
                                    initial_s=self.s.backoff_s, max_s=self.s.backoff_max_s,
                                    retry_on=(httpx.TransportError, Transient), sleep=self._sleep):  # fmt: skip
                with attempt:
                    return self._post_once(body)
        except (httpx.TransportError, Transient) as e:
            raise JudgeRequestError(f"failed after retries: {type(e).__name__}: {e}") from e
        raise AssertionError("unreachable: retrying() returns or raises")  # pragma: no cover


def _retry_after_s(value: str | None) -> float:
    """Seconds of a Retry-After header (delta-seconds or an HTTP date); 0 when absent or unreadable."""
    if not value:
        return 0.0
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
        except (TypeError, ValueError):
            return 0.0


@dataclass(frozen=True)
class Item:
    """One sampled record to judge."""

    request_id: str
    prompt: str
    response: str
    reference: str | None
    model_version: str | None


@dataclass(frozen=True)
class Verdict:
    """What to ask and how to read the answer for one item (the key covers everything that shaped it)."""

    key: str
    text: str
    swapped: bool  # pairwise: the judged answer was shown as B


def _salted_order(items: list[Item], salt: int) -> list[Item]:
    """Items ordered by their salted content keys (the monitor's sampling order)."""
    import pandas as pd

    from driftloop.monitor.features import content_keys, salted

    if not items:
        return []
    df = pd.DataFrame({"prompt": [i.prompt for i in items], "response": [i.response for i in items]})
    keys = salted(content_keys(df), salt)
    return [items[k] for k in sorted(range(len(items)), key=lambda k: (int(keys[k]), items[k].request_id))]


class Judge:
    """One configured judge over the checked windows of a database."""

    def __init__(self, s: JudgeSettings, engine: Engine, monitor: MonitorSettings,
                 champion: Callable[[str], str | None] | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:  # fmt: skip
        self.s = s
        self.engine = engine
        self.monitor = monitor
        self.champion = champion or (lambda _model_id: None)
        self.transport = transport
        self.metric_n = f"{METRIC_PREFIX}{s.name}.n"

    # -- which windows, which records ----------------------------------------------------------------
    def pending_windows(self, conn: Connection) -> list[Any]:
        """Checked windows with records that this judge has not judged yet, newest first.

        Every segment's and workload's window counts (streams' records are disjoint: with segment keys there
        is no whole-model window, and each workload has its own windows, so nothing is judged twice)."""
        mw, wm = monitor_windows.c, window_metrics.c
        judged = select(wm.window_id).where(wm.name == self.metric_n)
        q = (select(mw.id, mw.model_id, mw.workload, mw.segment, mw.window_kind, mw.window_index, mw.window_start, mw.window_end,
                    mw.first_id, mw.last_id)
             .where(mw.n_records > 0, mw.status.in_(("ok", "insufficient_data")),
                    mw.id.not_in(judged))
             .order_by(mw.window_end.desc(), mw.id.desc()).limit(self.s.windows_per_run))  # fmt: skip
        return list(conn.execute(q).all())

    def sample(self, conn: Connection, w: Any) -> tuple[list[Item], int]:
        """``sample`` records of window ``w`` with an answer (seeded by content and window); also how many lacked one."""
        # the window's own workload only: other workloads of the model share its time span
        rows = window_rows(conn, self.monitor, w.model_id, w.segment, w.window_kind, utc(w.window_start),
                           utc(w.window_end), w.first_id, w.last_id, w.workload)  # fmt: skip
        ids = [int(r[0]) for r in rows]
        c = interactions.c
        items: list[Item] = []
        no_answer = 0
        for k in range(0, len(ids), 5000):
            q = select(c.request_id, c.prompt, c.response, c.reference, c.model_version).where(
                c.id.in_(ids[k : k + 5000])
            )
            for r in conn.execute(q):
                if r.response is None or not str(r.response).strip():
                    no_answer += 1
                    continue
                items.append(Item(r.request_id, r.prompt, r.response, r.reference, r.model_version))
        return _salted_order(items, int(w.window_index))[: self.s.sample], no_answer

    def champion_answers(
        self, conn: Connection, model_id: str, items: Sequence[Item]
    ) -> tuple[str | None, dict[str, str]]:
        """The champion version of ``model_id`` and its newest logged answer to each of the items' prompts."""
        version = self.champion(model_id)
        if version is None or not items:
            return version, {}
        c = interactions.c
        prompts = sorted({i.prompt for i in items})
        out: dict[str, str] = {}
        q = (select(c.prompt, c.response).where(c.model_id == model_id, c.model_version == version,
                                                c.prompt.in_(prompts), c.response.is_not(None))
             .order_by(c.ts.desc(), c.id.desc()))  # fmt: skip
        for p, resp in conn.execute(q):
            if str(resp).strip():
                out.setdefault(p, resp)
        return version, out

    # -- what to ask ---------------------------------------------------------------------------------
    def verdict(self, item: Item, reference: str | None) -> Verdict:
        s = self.s
        rubric = s.rubric_text
        if s.mode == "pointwise":
            key = content_key(s.mode, item.prompt, item.response, reference or "", rubric, s.model)
            text = rubric.format(prompt=item.prompt, response=item.response, reference=reference or "")
            return Verdict(key, text, False)
        ref = reference or ""
        key = content_key(s.mode, item.prompt, item.response, ref, rubric, s.model)
        swapped = int(key[-1], 16) % 2 == 1  # by content: position bias averages out over a window
        a, b = (ref, item.response) if swapped else (item.response, ref)
        return Verdict(key, rubric.format(prompt=item.prompt, response_a=a, response_b=b), swapped)

    def value(self, reply: str, v: Verdict) -> float:
        """The score in [0, 1] a reply gives the judged answer (JudgeParseError when it gives none)."""
        if self.s.mode == "pointwise":
            return parse_pointwise(reply, self.s.score_min, self.s.score_max)
        pref = parse_pairwise(reply)
        if pref == "TIE":
            return 0.5
        return 1.0 if (pref == "B") == v.swapped else 0.0

    # -- a run ---------------------------------------------------------------------------------------
    def run_once(self, used_today: int = 0) -> JudgeStats:
        """Judge the newest pending windows within the budget. Never raises for a failed request or a bad reply."""
        st = JudgeStats(self.s.name)
        budget = max(0, min(self.s.max_requests_per_run, self.s.max_requests_per_day - used_today))
        client = JudgeClient(self.s, budget, transport=self.transport)
        try:
            with self.engine.connect() as conn:
                wins = self.pending_windows(conn)
            for w in wins:
                st.windows += 1
                if not self._window(w, client, st):
                    break
        finally:
            st.requests = client.requests
            client.close()
        return st

    def _window(self, w: Any, client: JudgeClient, st: JudgeStats) -> bool:
        """Judge one window's sample; False when the budget stopped the run."""
        s = self.s
        with self.engine.connect() as conn:
            items, no_answer = self.sample(conn, w)
            version, champ = (self.champion_answers(conn, w.model_id, items)
                              if s.mode == "pairwise" and s.reference == "champion" else (None, {}))  # fmt: skip
        if no_answer:
            st.skip("no_response", no_answer)
        st.sampled += len(items)
        todo: list[tuple[Item, Verdict, str]] = []
        for it in items:
            ref = it.reference
            kind = "record"
            if s.mode == "pairwise":
                if s.reference == "champion" and it.model_version != version and it.prompt in champ:
                    ref, kind = champ[it.prompt], "champion"
                if not ref or not ref.strip():
                    st.skip("no_reference")
                    continue
            todo.append((it, self.verdict(it, ref), kind))
        with self.engine.connect() as conn:
            cache = cached_values(conn, s.source, [v.key for _, v, _ in todo])
        values: list[float] = []
        failures = 0
        complete = True
        now = datetime.now(UTC)
        for n, (it, v, kind) in enumerate(todo):
            meta = {"model": s.model, "mode": s.mode, "window_id": int(w.id), "reference": kind}
            if v.key in cache:
                self._store(Score(it.request_id, s.source, cache[v.key], ts=now, content_key=v.key, event=v.key,
                                  metadata={**meta, "cached": True}))  # fmt: skip
                st.cached += 1
                SCORES.labels(s.name, "true").inc()
                values.append(cache[v.key])
                continue
            try:
                st.judged += 1
                reply = client.complete(v.text)
            except BudgetExhausted:
                st.judged -= 1
                st.budget_exhausted = True
                st.skip("budget_exhausted", len(todo) - n)
                log.info("judge %s: request budget spent; window %s left for a later run", s.name, w.id)
                return False
            except JudgeRequestError as e:
                st.errors += 1
                complete = False
                log.warning("judge %s: request for %s failed: %s", s.name, it.request_id, e)
                continue
            try:
                val = self.value(reply, v)
            except JudgeParseError as e:
                st.parse_failures += 1
                failures += 1
                PARSE_FAILURES.labels(s.name).inc()
                log.info("judge %s: reply for %s not parsed (%s): %r", s.name, it.request_id, e, reply[-200:])
                continue
            if s.mode == "pairwise":
                meta["position"] = "b" if v.swapped else "a"
            self._store(Score(it.request_id, s.source, val, ts=now, content_key=v.key, event=v.key,
                              comment=reply[-2000:], metadata=meta))  # fmt: skip
            cache = {**cache, v.key: val}  # a repeat inside the window is a cache hit too
            st.scored += 1
            SCORES.labels(s.name, "false").inc()
            values.append(val)
        if complete:
            self._mark(w, values, failures)
            st.windows_done += 1
        return True

    def _store(self, score: Score) -> None:
        with self.engine.begin() as conn:
            record_scores(conn, [score])

    def _mark(self, w: Any, values: list[float], failures: int) -> None:
        """Window metrics judge.<name>.{mean,n,parse_failures}; ``.n`` also marks the window as judged."""
        base = {"window_id": int(w.id), "model_id": w.model_id, "workload": w.workload, "segment": w.segment,
                "window_end": w.window_end}  # fmt: skip
        p = f"{METRIC_PREFIX}{self.s.name}."
        rows = [{**base, "name": p + "n", "value": float(len(values))},
                {**base, "name": p + "mean", "value": statistics.fmean(values) if values else None},
                {**base, "name": p + "parse_failures", "value": float(failures)}]  # fmt: skip
        with self.engine.begin() as conn:
            done = conn.execute(select(window_metrics.c.id).where(and_(
                window_metrics.c.window_id == int(w.id), window_metrics.c.name == self.metric_n))).first()  # fmt: skip
            if done is None:
                conn.execute(insert(window_metrics), rows)


def run_judges(judges: Sequence[JudgeSettings], engine: Engine, monitor: MonitorSettings,
               champion: Callable[[str], str | None] | None = None,
               used_today: Callable[[str], int] | None = None) -> list[JudgeStats]:  # fmt: skip
    """Run every judge once (one judge failing never stops the others: its error is logged and counted)."""
    out = []
    for s in judges:
        try:
            out.append(Judge(s, engine, monitor, champion).run_once(used_today(s.name) if used_today else 0))
        except Exception:
            log.exception("judge %s: run failed", s.name)
            st = JudgeStats(s.name, errors=1)
            out.append(st)
    return out
