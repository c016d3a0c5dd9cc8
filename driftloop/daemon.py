"""``driftloop run``: ingestion, leader election and the scheduler in one process."""

from __future__ import annotations

import logging
import threading
from typing import Any

from driftloop.jobs import default_instance, set_context
from driftloop.leader import LeaderElection, lock_for
from driftloop.scheduler import make_scheduler, register_jobs
from driftloop.settings import Settings
from driftloop.store.db import create_engine_from_url

log = logging.getLogger("driftloop.daemon")


class Daemon:
    """One daemon instance; ``run(stop)`` blocks until ``stop`` is set, then shuts down in order."""

    def __init__(self, settings: Settings, *, ingest: bool | None = None, instance: str | None = None) -> None:
        self.settings = settings
        self.instance = instance or default_instance()
        self.engine = create_engine_from_url(settings.database.url, pool_size=settings.database.pool_size)
        self.ingest = settings.scheduler.ingest if ingest is None else ingest
        self.scheduler: Any = None
        self._sched_lock = threading.Lock()
        set_context(settings, self.engine, self.instance)

    def _start_scheduler(self) -> None:
        with self._sched_lock:
            if self.scheduler is not None:
                return
            sched = make_scheduler(self.engine, self.settings.scheduler)
            sched.start(paused=True)
            ids = register_jobs(sched, self.settings.scheduler)
            sched.resume()
            self.scheduler = sched
            log.info("scheduler started with jobs %s", ids)

    def _stop_scheduler(self) -> None:
        with self._sched_lock:
            if self.scheduler is None:
                return
            try:
                self.scheduler.shutdown(wait=True)
            except Exception:
                log.exception("scheduler shutdown")
            self.scheduler = None
            log.info("scheduler stopped")

    def run(self, stop: threading.Event) -> None:
        threads: list[threading.Thread] = []
        ingest_stop = threading.Event()
        if self.ingest:
            from driftloop.ingest.service import IngestService

            svc = IngestService(self.settings, self.engine, instance=self.instance)

            def ingest_main() -> None:
                try:
                    svc.run(ingest_stop, progress_every_s=60)
                except Exception:
                    log.exception("ingestion stopped with an error; the daemon shuts down")
                    stop.set()

            threads.append(threading.Thread(target=ingest_main, name="driftloop-ingest", daemon=True))
        if self.settings.scheduler.enabled:
            s = self.settings.scheduler
            election = LeaderElection(lock_for(self.settings.database.url, s.leader_lock_id), self.instance,
                                      self._start_scheduler, self._stop_scheduler, s.leader_retry_s, s.leader_check_s)  # fmt: skip
            threads.append(threading.Thread(target=election.run, args=(stop,), name="driftloop-leader", daemon=True))
        for t in threads:
            t.start()
        log.info("driftloop daemon %s running (ingest=%s, scheduler=%s)", self.instance, self.ingest,
                 self.settings.scheduler.enabled)  # fmt: skip
        stop.wait()
        log.info("shutting down")
        ingest_stop.set()
        for t in threads:
            t.join(timeout=30)
        self._stop_scheduler()
        self.engine.dispose()
        log.info("stopped")
