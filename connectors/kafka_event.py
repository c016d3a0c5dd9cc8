"""Kafka promotion target: publish ``ModelPromoted`` / ``ModelPromotionReverted`` events for other systems.

The value is the promotion payload as JSON, the key the model family (per-family order), the header ``event``
the event name. Delivery is at least once: a retried ``apply`` may publish the event again, so consumers keep
the last event per family (it names the served version) rather than counting events.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from typing import Any

from driftloop.connectors.abc import PROMOTED, REVERTED, Promotion, PromotionError, PromotionTarget
from driftloop.settings.connectors import TargetSettings

log = logging.getLogger("driftloop.connectors")


class KafkaPromotionTarget(PromotionTarget):
    """Sends each promotion (and revert) as one JSON message to ``topic``, waiting for ``acks=all``."""

    def __init__(self, cfg: TargetSettings, bootstrap: list[str] | None = None, *, create_topic: bool = True) -> None:
        """``bootstrap`` is the fallback for settings without bootstrap_servers (the daemon's kafka section)."""
        if not cfg.topic:
            raise ValueError(f"target {cfg.name!r}: a kafka target needs topic")
        bootstrap = cfg.bootstrap_servers or bootstrap
        if not bootstrap:
            raise ValueError(f"target {cfg.name!r}: no bootstrap servers (set bootstrap_servers)")
        self.name = cfg.name
        self.cfg = cfg
        self.topic: str = cfg.topic
        self.bootstrap = list(bootstrap)
        self.create_topic = create_topic
        self._producer: Any = None
        self._topic_ready = False
        self._lock = threading.Lock()

    # -- public ----------------------------------------------------------------------------------------------

    def apply(self, p: Promotion) -> None:
        """Publish ``ModelPromoted``."""
        self._send(PROMOTED, p)

    def revert(self, p: Promotion) -> None:
        """Publish ``ModelPromotionReverted`` (consumers go back to ``previous_version``)."""
        self._send(REVERTED, p)

    def check(self) -> None:
        """The broker answers and the topic exists (created with 1 partition when missing and allowed)."""
        with self._lock:
            self._ensure_topic()
            try:
                parts = self._get_producer().partitions_for(self.topic)
            except Exception as e:
                raise self._error("cannot read topic metadata", e) from e
            if not parts:
                raise PromotionError(f"{self.name}: topic {self.topic} does not exist on {self.bootstrap}; create it",
                                     target=self.name)  # fmt: skip

    def close(self) -> None:
        with self._lock:
            self._reset()

    # -- internals -------------------------------------------------------------------------------------------

    def _send(self, event: str, p: Promotion) -> None:
        value = json.dumps(p.payload(event), sort_keys=True).encode()
        with self._lock:
            self._ensure_topic()
            try:
                fut = self._get_producer().send(
                    self.topic, key=p.family.encode(), value=value, headers=[("event", event.encode())]
                )
                md = fut.get(timeout=self.cfg.timeout_s)
            except Exception as e:  # KafkaError, KafkaTimeoutError, NoBrokersAvailable, ...
                self._reset()  # a fresh producer next time: no stale metadata or half-dead connections
                raise self._error(f"could not publish {event} for {p.family} {p.version}", e) from e
        log.info("%s: %s %s %s -> %s[%d]@%d", self.name, event, p.family, p.version, self.topic, md.partition,
                 md.offset)  # fmt: skip

    def _ensure_topic(self) -> None:
        if self._topic_ready or not self.create_topic:
            return
        from driftloop.broker import ensure_topics

        self._reachable()
        try:
            ensure_topics(self.bootstrap, [self.topic], partitions=1, timeout_s=self.cfg.timeout_s)
        except Exception as e:
            raise self._error(f"cannot ensure topic {self.topic} exists", e) from e
        self._topic_ready = True

    def _reachable(self) -> None:
        """Fail fast (one TCP connect per server) when no bootstrap server accepts connections."""
        errors = []
        for server in self.bootstrap:
            host, _, port = server.rpartition(":")
            try:
                with socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout=self.cfg.timeout_s):
                    return
            except (OSError, ValueError) as e:
                errors.append(f"{server}: {e}")
        raise PromotionError(
            f"{self.name}: no Kafka bootstrap server accepts connections ({'; '.join(errors)}); "
            "check that the broker is reachable and bootstrap_servers is right, then promote again",
            target=self.name,
        )

    def _get_producer(self) -> Any:
        if self._producer is None:
            from driftloop.broker import make_producer

            ms = int(self.cfg.timeout_s * 1000)
            self._producer = make_producer(
                self.bootstrap,
                acks="all",
                linger_ms=0,
                retries=max(self.cfg.retries, 1),
                retry_backoff_ms=max(int(self.cfg.backoff_s * 1000), 100),
                request_timeout_ms=ms,
                max_block_ms=ms,
            )
        return self._producer

    def _reset(self) -> None:
        if self._producer is not None:
            try:
                self._producer.close(timeout=self.cfg.timeout_s)
            except Exception as e:  # closing a broken producer must not hide the original error
                log.debug("%s: closing the producer: %s", self.name, e)
            self._producer = None

    def _error(self, what: str, e: Exception) -> PromotionError:
        return PromotionError(
            f"{self.name}: {what} on {','.join(self.bootstrap)}: {type(e).__name__}: {e}; "
            "check that the broker is reachable and the topic exists, then promote again",
            target=self.name,
        )
