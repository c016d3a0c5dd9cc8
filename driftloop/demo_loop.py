"""``driftloop demo``: the whole loop, live, on embedded defaults.

What runs, all in this process except the broker and the training subprocess:

* a Tansu broker (Kafka-compatible), an SQLite database, a tiny GPT-2 built here (no downloads);
* ``driftloop serve``: the OpenAI-compatible server with vLLM's adapter endpoints, logging every
  request as a v1 record to Kafka;
* the daemon (``driftloop run``): ingestion, drift/quality checks, alert policies, the retrain policy
  (LoRA fine-tuning in a subprocess, the paired-bootstrap gate, promotion to a serving directory and
  to the server through its vLLM endpoints), the post-promotion watch, and the HTTP API with the
  status page;
* a traffic generator whose simulated users rate each answer (and correct some bad ones); halfway
  through, the questions shift from arithmetic (domain A, which the base model knows) to account
  support (domain B, which it does not).

It prints what happens as it happens and ends with a timeline: drift onset -> detection -> retrain ->
gate -> promotion -> recovery, in seconds, with the quality before the shift, after it and after
recovery. Everything it starts is stopped at the end, also on Ctrl-C (``--keep-running`` leaves the
services up).
"""

from __future__ import annotations

import logging
import random
import shutil
import threading
import time
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from driftloop.settings import Settings

log = logging.getLogger("driftloop.demo")


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo; ``quick()`` is the reduced mode the tests use."""

    window: int = 100
    windows_before_shift: int = 3
    recovery_windows: int = 2
    correction_rate: float = 0.8
    good_rouge: float = 0.6  # a simulated user is happy when the answer is this close to the right one
    clients: int = 2
    embeddings: bool = True
    reports: bool = True
    epochs: float = 6.0
    min_new_samples: int = 600  # eligible records (liked or corrected) before a retrain may start
    timeout_s: float = 600.0
    seed: int = 0

    @classmethod
    def quick(cls) -> DemoConfig:
        return cls(window=60, windows_before_shift=2, recovery_windows=1, embeddings=False, reports=True,
                   min_new_samples=500, timeout_s=600.0)  # fmt: skip


@dataclass
class Timeline:
    """Wall-clock moments of the loop, as seconds since the demo's traffic started."""

    t0: float = field(default_factory=time.time)
    events: dict[str, float] = field(default_factory=dict)
    quality: dict[str, float | None] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def mark(self, name: str, at: float | None = None) -> bool:
        if name in self.events:
            return False
        self.events[name] = round((at if at is not None else time.time()) - self.t0, 1)
        return True

    def to_dict(self) -> dict[str, Any]:
        return {"events": dict(self.events), "quality": dict(self.quality), "details": dict(self.details)}


def _say(msg: str) -> None:
    import typer

    typer.secho(msg, fg=typer.colors.CYAN)


def _free_port() -> int:
    from driftloop.broker import free_port

    return free_port()


class _Traffic:
    """Clients sending domain-A, then domain-B questions to the server; simulated users give feedback."""

    def __init__(self, url: str, model: str, logger: Any, cfg: DemoConfig) -> None:
        from rouge_score import rouge_scorer

        from driftloop.retrain.toy import sample_pairs

        self.url = url
        self.model = model
        self.logger = logger
        self.cfg = cfg
        self.domain = "A"
        self.sent = 0
        self.failed = 0
        self.shift_at: float | None = None
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.pairs = {d: sample_pairs(d, 5000, seed=cfg.seed + 101) for d in ("A", "B")}
        self.scorer = rouge_scorer.RougeScorer(["rougeL"])
        self.happy: dict[str, list[int]] = {"A": [], "B": []}
        self.threads = [threading.Thread(target=self._run, args=(i,), name=f"demo-client-{i}", daemon=True)
                        for i in range(cfg.clients)]  # fmt: skip

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def shift(self) -> None:
        with self.lock:
            self.domain = "B"
            self.shift_at = time.time()

    def _run(self, idx: int) -> None:
        import httpx

        rng = random.Random(self.cfg.seed * 100 + idx)
        with httpx.Client(timeout=60.0) as client:
            while not self.stop.is_set():
                with self.lock:
                    domain = self.domain
                prompt, answer = rng.choice(self.pairs[domain])
                body = post_counted(self, client, f"{self.url}/v1/completions", {
                    "model": self.model, "prompt": prompt, "max_tokens": 32, "temperature": 0}, pause_s=0.2)  # fmt: skip
                if body is None:
                    continue
                text = body["choices"][0]["text"].strip()
                rid = body["id"]
                good = self.scorer.score(answer, text)["rougeL"].fmeasure >= self.cfg.good_rouge
                fb: dict[str, Any] = {"score": 1.0 if good else 0.0}
                if not good and rng.random() < self.cfg.correction_rate:
                    fb["correction"] = answer
                self.logger.feedback(rid, **fb)
                with self.lock:
                    self.sent += 1
                    self.happy[domain].append(int(good))


def post_counted(traffic: Any, client: Any, url: str, payload: dict[str, Any], pause_s: float) -> Any:
    """POST ``payload``; the answer's JSON, or None after counting the failure on ``traffic`` (its ``lock`` and
    ``failed``), logging it and pausing: the demo reports failed requests, it never hides them."""
    try:
        r = client.post(url, json=payload)
        r.raise_for_status()
        return r.json()
    except Exception as e:
        with traffic.lock:
            traffic.failed += 1
        log.warning("request failed: %s", e)
        time.sleep(pause_s)
        return None


@dataclass
class _Services:
    """What the demo started; ``stop`` stops all of it, whatever happened."""

    broker: Any
    stop_daemon: threading.Event = field(default_factory=threading.Event)
    servers: list[Any] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)
    traffic: _Traffic | None = None
    logger: Any = None

    def stop(self) -> None:
        if self.traffic is not None:
            self.traffic.stop.set()
            for th in self.traffic.threads:
                th.join(timeout=60)
        if self.logger is not None:
            self.logger.close(timeout=5.0)
        self.stop_daemon.set()
        for s in self.servers:
            s.should_exit = True
        for th in self.threads:
            th.join(timeout=60)
        self.broker.stop()


def run_loop_demo(data_dir: Path = Path("driftloop-data/demo"), cfg: DemoConfig | None = None,
                  keep_running: bool = False, echo: Any = None) -> Timeline:  # fmt: skip
    """Run the live loop; return the timeline (also printed)."""

    cfg = cfg or DemoConfig()
    say = echo or _say
    return run_session(data_dir, keep_running, say, lambda svc, tl: _run(svc, tl, data_dir, cfg, say))


def run_session(data_dir: Path, keep_running: bool, say: Any, body: Any) -> Timeline:
    """A fresh ``data_dir``, a broker, ``body(services, timeline)``; then (or on Ctrl-C) everything stopped.

    Shared by both demos: what they start is registered on the :class:`_Services` that ``body`` gets.
    """
    from driftloop.broker import LocalTansu

    _quiet_services()
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    tl = Timeline()
    svc = _Services(LocalTansu(log_path=str(data_dir / "tansu.log")))
    try:
        body(svc, tl)
        if keep_running:
            say("\n--keep-running: services stay up; Ctrl-C stops them")
            while True:
                time.sleep(3600)
        return tl
    except KeyboardInterrupt:
        say("\ninterrupted: stopping everything the demo started")
        return tl
    finally:
        svc.stop()


def _quiet_services() -> None:
    """The demo narrates; the services' own warnings (overrunning 2 s job intervals, broker reconnects) go quiet."""
    for name in ("driftloop.jobs", "apscheduler", "kafka", "driftloop.ingest", "driftloop.alerts", "driftloop.monitor",
                 "driftloop.retrain", "transformers"):  # fmt: skip
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)


def _run(svc: _Services, tl: Timeline, data_dir: Path, cfg: DemoConfig, say: Any) -> None:
    """Steps 1 to 6: broker and database, base model, server, daemon, traffic followed to recovery, summary."""
    from sqlalchemy import text

    from driftloop.broker import ensure_topics
    from driftloop.client import DriftloopLogger
    from driftloop.retrain.toy import build_base_model
    from driftloop.store.db import create_engine_from_url

    t_start = time.time()
    db_url = start_broker_and_db(svc, data_dir, say)
    say("[2/6] building a tiny GPT-2 and training it on domain A (arithmetic questions); no downloads")
    t = time.time()
    base = build_base_model(data_dir / "models" / "base", "A", n=1500, epochs=3, seed=cfg.seed)
    say(f"      base model ready in {time.time() - t:.0f}s: {base}")
    serve_port, api_port = _free_port(), _free_port()
    serve_url = f"http://127.0.0.1:{serve_port}"
    settings = _demo_settings(cfg, data_dir, db_url, svc.broker.bootstrap, base, serve_port, api_port)
    ensure_topics(svc.broker.bootstrap, [settings.kafka.topics[0], settings.kafka.dlq_topic], partitions=1)
    _start_services(svc, settings, serve_url, api_port, cfg.window, say)
    svc.logger = DriftloopLogger([svc.broker.bootstrap], settings.kafka.topics[0], model_id="support-bot")
    traffic = svc.traffic = _Traffic(serve_url, "support-bot", svc.logger, cfg)
    tl.t0 = time.time()
    traffic.start()
    say(f"[5/6] traffic: domain A (what the model knows) for {cfg.windows_before_shift} windows, then domain B")
    eng = create_engine_from_url(db_url)
    watcher = _Watcher(tl, say, cfg, traffic, serve_url)
    if not _follow(watcher, eng, cfg.timeout_s):
        say(f"  the demo did not complete within {cfg.timeout_s:.0f}s; stopping (see the logs in {data_dir})")
    traffic.stop.set()
    tl.quality = _quality(eng, watcher.promoted_at, tl)
    tl.details.update({"requests": traffic.sent, "failed_requests": traffic.failed,
                       "database": db_url, "api": f"http://127.0.0.1:{api_port}/",
                       "reports": [r[0] for r in eng.connect().execute(text(
                           "select report_path from monitor_windows where report_path is not null "
                           "order by window_index desc limit 3")).all()],
                       "total_s": round(time.time() - t_start, 1)})  # fmt: skip
    _summary(tl, say)


def start_broker_and_db(svc: _Services, data_dir: Path, say: Any) -> str:
    """Step 1 of both demos: the broker started, the SQLite database migrated; returns the database URL."""
    from driftloop.store.db import migrate

    db_url = f"sqlite:///{data_dir / 'driftloop.db'}"
    say("[1/6] starting a local Kafka-compatible broker (Tansu) and the embedded database")
    svc.broker.start()
    migrate(db_url)
    say(f"      broker {svc.broker.bootstrap}, database {db_url}")
    return db_url


def _demo_settings(cfg: DemoConfig, data_dir: Path, db_url: str, bootstrap: str, base: Any, serve_port: int,
                   api_port: int) -> Settings:  # fmt: skip
    """The demo's settings: small windows, 2 s jobs, two alert rules, one retrain policy promoting to the server.

    The quality rule is relative (a one-sided Fisher test of the positive-feedback rate against the
    reference), so the reference is ``last_healthy``: the domain-B windows are unhealthy (drifted, their
    rate dropped), so the baseline stays on the domain-A windows and the alert stays open until the
    retrain has its ``min_new_samples``. A ``previous`` reference would take the domain-B windows into
    the baseline within two windows and close the alert before the retrain could start.
    """
    from driftloop.settings import load_settings

    serve_url = f"http://127.0.0.1:{serve_port}"
    w = cfg.window
    return load_settings(
        None,
        database={"url": db_url},
        data_dir=str(data_dir),
        kafka={"bootstrap_servers": [bootstrap], "group_id": "driftloop-demo", "topic_partitions": 1},
        ingest={"batch_max_ms": 200},
        monitor={"window": {"kind": "count", "size": w}, "min_window_size": min(100, w),
                 "reference": {"kind": "last_healthy", "windows": 2}, "reports": cfg.reports,
                 "reports_dir": str(data_dir / "reports"),
                 "embeddings": {"enabled": cfg.embeddings, "sample": min(100, w)}, "language_sample": 0},
        alerts={"rules": [
            {"name": "quality-drop", "condition": "drop(quality.feedback_positive_rate, alpha=0.01)", "windows": 1,
             "of": 1, "severity": "critical"},
            {"name": "dataset-drift", "condition": "drift.drifted == 1", "windows": 1, "of": 2},
        ]},
        scheduler={"drift_check_s": 2, "policy_evaluation_s": 2, "retrain_check_s": 2, "promotion_watch_s": 2,
                   "retention_s": 0, "leader_retry_s": 0.5},
        api={"host": "127.0.0.1", "port": api_port},
        serve={"host": "127.0.0.1", "port": serve_port, "base_model": str(base), "model_id": "support-bot",
               "serving_dir": str(data_dir / "serving"), "max_new_tokens": 32},
        retrain={
            "targets": [{"name": "serving-dir", "type": "filesystem", "path": str(data_dir / "serving")},
                        {"name": "server", "type": "vllm", "url": serve_url}],
            "policies": [{
                "name": "support-bot-retrain", "model_id": "support-bot", "base_model": str(base),
                "trigger": {"alerts": ["quality-drop"]}, "min_new_samples": cfg.min_new_samples,
                "cooldown_minutes": 30,
                "data": {"eval_fraction": 0.25, "min_eval_samples": 20, "lookback_hours": 24},
                "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
                "training": {"epochs": cfg.epochs, "learning_rate": 3e-3, "batch_size": 16, "max_length": 96},
                "gate": {"n_bootstrap": 1000, "min_examples": 20, "max_new_tokens": 32},
                "targets": ["serving-dir", "server"],
            }],
            "watch": {"windows": cfg.recovery_windows, "tolerance": 0.1},
        },
    )  # fmt: skip


def _start_services(svc: _Services, settings: Settings, serve_url: str, api_port: int, window: int,
                    say: Any) -> None:  # fmt: skip
    """Steps 3 and 4: the model server (uvicorn in a thread), then the daemon with its API."""
    import uvicorn

    from driftloop.daemon import Daemon
    from driftloop.serve import create_serve_app

    say(f"[3/6] starting the model server (OpenAI-compatible + vLLM adapter endpoints) at {serve_url}")
    serve_app = create_serve_app(settings)
    for app, port, name in ((serve_app, settings.serve.port, "serve"),):
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        th = threading.Thread(target=server.run, name=f"demo-{name}", daemon=True)
        th.start()
        svc.servers.append(server)
        svc.threads.append(th)
    _wait_http(f"{serve_url}/v1/models", 60)
    say(f"[4/6] starting the daemon: ingestion, checks every window of {window}, alerts, retrain policy, watch, "
        f"API + status page at http://127.0.0.1:{api_port}/")  # fmt: skip
    daemon = Daemon(settings, ingest=True, instance="demo")
    dth = threading.Thread(target=daemon.run, args=(svc.stop_daemon,), name="demo-daemon", daemon=True)
    dth.start()
    svc.threads.append(dth)


def _follow(watcher: _Watcher, eng: Any, timeout_s: float) -> bool:
    """Narrate the loop once a second until quality recovered (True) or ``timeout_s`` passed (False)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        time.sleep(1.0)
        with eng.connect() as c:
            if watcher.step(c):
                return True
    return False


class _Watcher:
    """Follows the loop in the database and narrates it: windows, alerts, retrain jobs, registry events, recovery."""

    def __init__(self, tl: Timeline, say: Any, cfg: DemoConfig, traffic: _Traffic, serve_url: str) -> None:
        self.tl, self.say, self.cfg, self.traffic, self.serve_url = tl, say, cfg, traffic, serve_url
        self.seen_windows = 0
        self.promoted_at: float | None = None

    def step(self, c: Any) -> bool:
        """One look at the database (connection ``c``); True once quality recovered for enough windows."""
        from sqlalchemy import text

        def q(sql: str, **kw: Any) -> list[Any]:
            return list(c.execute(text(sql), kw).all())

        n_rec = q("select count(*) from interactions")[0][0]
        self._shift(n_rec)
        wins = self._windows(q, n_rec)
        self._alerts(q)
        self._jobs(q)
        self._events(q)
        self._hot_loaded()
        return self._recovered(wins)

    def _shift(self, n_rec: int) -> None:
        tl, traffic = self.tl, self.traffic
        if traffic.shift_at is None and n_rec >= self.cfg.windows_before_shift * self.cfg.window:
            traffic.shift()
            tl.mark("drift_onset", traffic.shift_at)
            self.say(f"  t={tl.events['drift_onset']:6.1f}s  >>> traffic shifts to domain B (account support)")

    def _windows(self, q: Any, n_rec: int) -> list[Any]:
        wins: list[Any] = q("select w.window_index, w.status, w.drifted, w.drift_score, m.value, w.created_at, "
                            "w.window_start from monitor_windows w left join window_metrics m on m.window_id = w.id "
                            "and m.name = 'quality.feedback_positive_rate' where w.model_id = 'support-bot' "
                            "order by w.window_index")  # fmt: skip
        for idx, status, drifted, score, pos, _created, _start in wins[self.seen_windows :]:
            self.say(f"  t={time.time() - self.tl.t0:6.1f}s  window {idx}: {status}, drift score "
                     f"{(score or 0):.2f}{' DRIFT' if drifted else ''}, users happy "
                     f"{'-' if pos is None else f'{pos:.0%}'}  ({n_rec} records stored)")  # fmt: skip
        self.seen_windows = len(wins)
        return wins

    def _alerts(self, q: Any) -> None:
        tl = self.tl
        for rule, fired in q("select rule, fired_at from alerts order by id"):
            if tl.mark(f"alert:{rule}", _ts(fired)):
                self.say(f"  t={tl.events[f'alert:{rule}']:6.1f}s  ALERT {rule} fired")
                if rule == "quality-drop" or rule == "dataset-drift":
                    tl.mark("detected", _ts(fired))

    def _jobs(self, q: Any) -> None:
        tl = self.tl
        for jid, stage, started, msg in q("select id, stage, started_at, message from retrain_jobs order by id"):
            if started and tl.mark("retrain_started", _ts(started)):
                self.say(f"  t={tl.events['retrain_started']:6.1f}s  retrain job {jid} started "
                         "(dataset from corrected/liked traffic, LoRA in a subprocess)")  # fmt: skip
            key = f"job{jid}:{stage}"
            if stage in ("training", "evaluating", "gating", "promoting") and tl.mark(key):
                self.say(f"  t={tl.events[key]:6.1f}s  retrain job {jid}: {stage} ({msg or ''})"[:160])

    def _events(self, q: Any) -> None:
        tl, say = self.tl, self.say
        for action, version, at, reason in q(
                "select e.action, v.version, e.at, e.reason from model_events e "
                "left join model_versions v on v.id = e.version_id order by e.id"):  # fmt: skip
            if action == "gate_passed" and tl.mark("gate_passed", _ts(at)):
                say(f"  t={tl.events['gate_passed']:6.1f}s  gate PASSED for {version}: {reason}"[:400])
            elif action == "gate_rejected" and tl.mark("gate_rejected", _ts(at)):
                say(f"  t={tl.events['gate_rejected']:6.1f}s  gate REJECTED {version}: {reason}"[:400])
            elif action == "promoted" and version != "v0" and tl.mark("promoted", _ts(at)):
                self.promoted_at = _ts(at)
                say(f"  t={tl.events['promoted']:6.1f}s  PROMOTED {version}: serving dir switched, "
                    "server asked to hot-load the adapter")  # fmt: skip
            elif action == "rolled_back" and tl.mark("rolled_back", _ts(at)):
                say(f"  t={tl.events['rolled_back']:6.1f}s  ROLLED BACK {version}: {reason}"[:300])
            elif action == "watch_passed" and tl.mark("watch_passed", _ts(at)):
                say(f"  t={tl.events['watch_passed']:6.1f}s  post-promotion watch passed: {reason}"[:300])

    def _hot_loaded(self) -> None:
        mark_hot_loaded(self.tl, self.say, self.serve_url, self.promoted_at)

    def _recovered(self, wins: list[Any]) -> bool:
        tl, promoted_at = self.tl, self.promoted_at
        if promoted_at is None:
            return False
        # windows that started after the promotion (the query above already has their start)
        after = [(w[4], _ts(w[5])) for w in wins if w[4] is not None and _ts(w[6]) >= promoted_at]
        if after and "recovered" not in tl.events and after[0][0] >= 0.5:
            tl.mark("recovered", after[0][1])
            self.say(f"  t={tl.events['recovered']:6.1f}s  quality recovered: users happy {after[0][0]:.0%}")
        return len(after) >= self.cfg.recovery_windows and "recovered" in tl.events


def mark_hot_loaded(tl: Timeline, say: Any, serve_url: str, promoted_at: float | None) -> None:
    """After a promotion, mark (once) the moment the server lists an adapter: it serves it, no restart."""
    import httpx

    if promoted_at is not None and "hot_loaded" not in tl.events:
        models = httpx.get(f"{serve_url}/v1/models", timeout=5).json()
        if any(m.get("parent") for m in models.get("data", [])):
            tl.mark("hot_loaded")
            say(f"  t={tl.events['hot_loaded']:6.1f}s  the server serves the new adapter (no restart)")


def _ts(v: Any) -> float:
    if isinstance(v, datetime):
        return (v if v.tzinfo else v.replace(tzinfo=UTC)).timestamp()
    return float(datetime.fromisoformat(str(v)).replace(tzinfo=UTC).timestamp())


def _quality(eng: Any, promoted_at: float | None, tl: Timeline) -> dict[str, float | None]:
    """Mean users-happy rate of the windows before the shift, after it (before promotion), after promotion."""
    from sqlalchemy import text

    with eng.connect() as c:
        rows = c.execute(text("select w.window_start, w.window_end, m.value from monitor_windows w join "
                              "window_metrics m on m.window_id = w.id and m.name = 'quality.feedback_positive_rate' "
                              "where w.model_id = 'support-bot' and m.value is not null order by w.window_index"))  # fmt: skip
        wins = [(_ts(a), _ts(b), float(v)) for a, b, v in rows]
    onset = tl.t0 + tl.events.get("drift_onset", 1e12)
    prom = promoted_at or 1e20

    def mean(xs: list[float]) -> float | None:
        return round(sum(xs) / len(xs), 3) if xs else None

    return {
        "before_shift": mean([v for s, e, v in wins if e <= onset]),
        "after_shift": mean([v for s, e, v in wins if s >= onset and e <= prom]),
        "after_promotion": mean([v for s, e, v in wins if s >= prom]),
    }


def _summary(tl: Timeline, say: Any) -> None:
    ev, q = tl.events, tl.quality
    say("\n[6/6] summary timeline (seconds since traffic started)")

    def line(label: str, key: str, since: str | None = None) -> None:
        if key in ev:
            extra = f"   (+{ev[key] - ev[since]:.1f}s after {since.replace('_', ' ')})" if since and since in ev else ""
            say(f"  {label:<34} {ev[key]:7.1f}s{extra}")
        else:
            say(f"  {label:<34}     —  (did not happen)")

    line("drift onset (traffic -> domain B)", "drift_onset")
    line("alert fired (detection)", "detected", "drift_onset")
    line("retrain started", "retrain_started", "drift_onset")
    line("candidate passed the gate", "gate_passed", "drift_onset")
    line("promoted", "promoted", "drift_onset")
    line("server hot-loaded the adapter", "hot_loaded", "promoted")
    line("quality recovered", "recovered", "drift_onset")

    def pct(v: float | None) -> str:
        return "—" if v is None else f"{v:.0%}"

    say(f"  users happy: before the shift {pct(q.get('before_shift'))}, after it {pct(q.get('after_shift'))}, "
        f"after promotion {pct(q.get('after_promotion'))}")  # fmt: skip
    d = tl.details
    say(f"  requests {d.get('requests')} ({d.get('failed_requests')} failed), total {d.get('total_s')}s")
    for r in d.get("reports", []):
        say(f"  report: {r}")
    say(f"  status page: {d.get('api')}   database: {d.get('database')}")


def _wait_http(url: str, timeout_s: float) -> None:
    import httpx

    end = time.time() + timeout_s
    while time.time() < end:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f}s")
