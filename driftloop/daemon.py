"""``driftloop run``: ingestion, leader election and the scheduler in one process.

Threads: ``driftloop-ingest`` (``IngestService.run``, when enabled) and ``driftloop-leader``
(:class:`~driftloop.leader.LeaderElection`, when the scheduler is enabled); the elected instance
starts an APScheduler ``BackgroundScheduler``. With ``api.enabled`` every instance also serves the HTTP
API (uvicorn in the thread ``driftloop-api``; see :mod:`driftloop.api`). ``run(stop)`` blocks until
``stop`` is set (the CLI sets it on SIGTERM/SIGINT) or ingestion fails, then shuts down in order: the
API, scheduler (running jobs finish), ingestion (the batch in flight is committed or abandoned whole),
the lock.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from driftloop.clikit import default_instance
from driftloop.jobs import abandon_runs_of_others, clear_context, set_context
from driftloop.leader import LeaderElection, lock_for
from driftloop.scheduler import make_scheduler, register_jobs
from driftloop.settings import Settings
from driftloop.store.db import create_engine_from_url
from driftloop.store.feedback import store_feedback_threshold

log = logging.getLogger("driftloop.daemon")

# How often the main thread wakes up while the daemon runs, so that a signal whose C-level handler ran
# on another thread is acted on (see Daemon.run).
_SIGNAL_POLL_S = 1.0


class Daemon:
    """One daemon instance. ``run(stop)`` returns 0 after a clean shutdown, 1 when a component failed."""

    def __init__(self, settings: Settings, *, ingest: bool | None = None, instance: str | None = None,
                 api: bool | None = None) -> None:  # fmt: skip
        self.settings = settings
        self.api = settings.api.enabled if api is None else api
        self.api_server: Any = None
        self.instance = instance or default_instance()
        self.engine = create_engine_from_url(settings.database.url, pool_size=settings.database.pool_size)
        self.ingest = settings.scheduler.ingest if ingest is None else ingest
        self.scheduler: Any = None
        self.election: LeaderElection | None = None
        self.failed = False
        self._stop = threading.Event()
        self._sched_lock = threading.Lock()

    def is_leader(self) -> bool:
        return self.election is not None and self.election.is_leader and self.scheduler is not None

    def _start_scheduler(self) -> None:
        with self._sched_lock:
            if self.scheduler is not None:
                return
            try:
                abandon_runs_of_others(self.engine, self.instance)
            except Exception:
                log.exception("could not mark a previous leader's unfinished runs")
            try:  # retrain jobs of a dead daemon can never finish: fail them, the champion is unchanged
                from driftloop.retrain.runner import recover_jobs

                recover_jobs(self.engine, self.instance)
            except Exception:
                log.exception("could not mark a previous leader's unfinished retrain jobs")
            sched = make_scheduler(self.engine, self.settings)
            sched.start(paused=True)
            try:
                done = register_jobs(sched, self.settings)
                # Set before resume(): a job overdue in the store (e.g. after a fail-over) runs at
                # once, and its leadership fence (is_leader) must already see this scheduler.
                self.scheduler = sched
                sched.resume()
            except Exception:
                self.scheduler = None
                sched.shutdown(wait=False)
                raise
            log.info("scheduler started: %s", "; ".join(f"{k} {v}" for k, v in done.items()) or "no jobs enabled")

    def _stop_scheduler(self) -> None:
        # Holding the lock throughout: the election thread's step-down (which then releases the
        # leader lock) waits until a graceful shutdown in the main thread has finished its jobs.
        with self._sched_lock:
            sched = self.scheduler
            if sched is None:
                return
            # On shutdown let running jobs finish; after a lost election stop at once (no new runs
            # start, and the fence in run_job refuses runs already handed to the executor).
            graceful = self._stop.is_set()
            try:
                sched.pause()  # no new processing passes; one in flight is absorbed by the executor
                sched.shutdown(wait=graceful)
            except Exception:
                log.exception("scheduler shutdown")
            self.scheduler = None
            log.info("scheduler stopped%s", "" if graceful else " (leadership lost)")

    def _start_api(self) -> None:
        """Serve the HTTP API; a failure (port taken) is logged and the daemon runs on without it."""
        try:
            from driftloop.api.server import ApiServer

            srv = ApiServer(self.settings, self.engine, instance=self.instance)
            url = srv.start()
        except Exception as e:
            log.error("HTTP API not started: %s", e)
            return
        self.api_server = srv
        log.info("HTTP API at %s/ (status page), %s/docs, %s/metrics", url, url, url)

    def _store_feedback_threshold(self) -> None:
        """Store ``feedback.positive_threshold`` for the view ``feedback_latest``: Grafana's panels read the
        database, not this YAML (the monitor and the dataset builder store it again on every run)."""
        value = self.settings.feedback.positive_threshold
        try:
            if store_feedback_threshold(self.engine, value):
                log.info("feedback.positive_threshold %s stored for the dashboards (feedback_settings)", value)
        except Exception as e:  # the daemon runs on; the next monitor run stores it again
            log.warning("could not store feedback.positive_threshold in feedback_settings (is the database at "
                        "the newest migration? driftloop db upgrade): %s", e)  # fmt: skip

    def run(self, stop: threading.Event) -> int:
        self._stop = stop
        set_context(self.settings, self.engine, self.instance, is_leader=self.is_leader)
        self._store_feedback_threshold()
        threads: list[threading.Thread] = []
        ingest_stop = threading.Event()
        if self.ingest:
            try:
                from driftloop.ingest.service import IngestService
            except ImportError as e:
                log.error("ingestion is enabled but unavailable (%s); run with --no-ingest or "
                          "scheduler.ingest: false", e)  # fmt: skip
                return 1
            svc = IngestService(self.settings, self.engine, instance=self.instance)

            def ingest_main() -> None:
                try:
                    svc.run(ingest_stop, progress_every_s=60)
                except Exception:
                    log.exception("ingestion stopped with an error; the daemon shuts down")
                    self.failed = True
                    stop.set()

            threads.append(threading.Thread(target=ingest_main, name="driftloop-ingest", daemon=True))
        s = self.settings.scheduler
        if s.enabled:
            lock = lock_for(self.settings.database.url, s.leader_lock_id, instance=self.instance,
                            check_s=s.leader_check_s, timeout_s=s.leader_timeout_s)  # fmt: skip
            delay = s.takeover_delay_s if self.settings.database.url.startswith("postgresql") else 0.0
            self.election = LeaderElection(lock, self.instance, self._start_scheduler, self._stop_scheduler,
                                           retry_s=s.leader_retry_s, check_s=s.leader_check_s,
                                           timeout_s=s.leader_timeout_s, takeover_delay_s=delay)  # fmt: skip
            threads.append(threading.Thread(target=self.election.run, args=(stop,), name="driftloop-leader",
                                            daemon=True))  # fmt: skip
        for t in threads:
            t.start()
        if self.api:
            self._start_api()
        log.info("driftloop daemon %s running (ingest=%s, scheduler=%s, api=%s)", self.instance, self.ingest,
                 s.enabled, self.api_server is not None)  # fmt: skip
        # Never block here without a timeout. The kernel may run the C-level SIGTERM/SIGINT handler on
        # any thread (one that unblocks signals, as every thread start does, can take a pending
        # process signal), and CPython then only flags it: the Python handler (which sets ``stop``)
        # runs when the main thread next executes bytecode. A main thread asleep in ``stop.wait()``
        # never would, and the daemon would ignore SIGTERM. Waking up every second bounds that delay.
        while not stop.wait(_SIGNAL_POLL_S):
            pass
        log.info("shutting down: API, scheduler, then ingestion, then the leader lock")
        if self.api_server is not None:
            self.api_server.stop()
            self.api_server = None
        try:  # a retrain in progress would hold the graceful scheduler shutdown for its whole training time
            from driftloop.retrain.runner import cancel_running

            if cancel_running(self.engine, self.instance):
                log.warning("cancelled this daemon's retrain job(s) in progress; the champion is unchanged")
        except Exception:
            log.exception("could not cancel retrain jobs in progress")
        self._stop_scheduler()
        ingest_stop.set()
        for t in threads:
            t.join(timeout=60)
            if t.is_alive():
                log.error("thread %s did not stop within 60s", t.name)
                self.failed = True
        clear_context()
        self.engine.dispose()
        log.info("stopped")
        return 1 if self.failed else 0
