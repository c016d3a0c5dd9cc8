"""Log your own LLM calls to driftloop: v1 log records sent to Kafka without ever blocking your app.

::

    from driftloop.client import DriftloopLogger, wrap_openai

    dl = DriftloopLogger("kafka:9092", "driftloop.logs", model_id="support-bot", model_version="gpt-4o-2024-08")
    create = wrap_openai(openai_client.chat.completions.create, dl)
    resp = create(model="gpt-4o", messages=[{"role": "user", "content": "Where is my order 1234?"}])
    dl.feedback(resp.id, score=1)          # later, when the user rates the answer
    dl.close()                              # at exit: deliver what is buffered (bounded by a timeout)

Records go into a bounded in-memory buffer; a background thread sends them with kafka-python. When the
broker is unreachable the records wait in the buffer and are retried with backoff until it returns; when
the buffer is full new records are dropped and counted (``stats().dropped``). ``log`` and ``feedback``
never block on the network and never raise because of Kafka. Only kafka-python is needed (no openai).
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("driftloop.client")

#: kafka-python options that keep a dead broker from holding the sender thread for long (overridable).
PRODUCER_DEFAULTS: dict[str, Any] = {
    "linger_ms": 50,
    "max_block_ms": 2000,
    "request_timeout_ms": 5000,
    "delivery_timeout_ms": 10000,
    "bootstrap_timeout_ms": 2000,
    "reconnect_backoff_max_ms": 1000,
}


def now_rfc3339() -> str:
    """The current UTC time as RFC 3339 with milliseconds and ``Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class LoggerStats:
    """Counters of a :class:`RecordLogger` (``sent``/``dropped``/``send_errors``/``invalid`` since start)."""

    sent: int
    dropped: int
    buffered: int
    send_errors: int
    invalid: int
    connected: bool
    buffer_size: int


@dataclass(frozen=True)
class _Item:
    key: bytes | None
    value: bytes


class RecordLogger:
    """A bounded, non-blocking queue of JSON records drained to one Kafka topic by a background thread.

    ``submit`` only appends to the buffer (or drops and counts when it holds ``buffer_size`` records,
    those being sent included). Failed sends stay in the buffer, in order, and are retried with
    exponential backoff (``backoff_s`` .. ``max_backoff_s``); the producer is re-created after a failure,
    and with ``create_topic`` the topic is created again if it is missing (a broker that lost its data).
    Delivery is at least once: a record may be sent twice around a failure (ingestion stores a
    ``request_id`` once).
    """

    def __init__(
        self,
        bootstrap: str | Sequence[str],
        topic: str,
        *,
        buffer_size: int = 10_000,
        producer_options: Mapping[str, Any] | None = None,
        create_topic: bool = False,
        topic_partitions: int = 3,
        replication_factor: int = 1,
        max_batch: int = 500,
        backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
        name: str = "driftloop-logger",
        producer_factory: Callable[[], Any] | None = None,
    ) -> None:
        if buffer_size < 1:
            raise ValueError(f"buffer_size: must be >= 1, got {buffer_size}")
        if not topic:
            raise ValueError("topic: must not be empty")
        self.bootstrap: str | list[str] = bootstrap if isinstance(bootstrap, str) else list(bootstrap)
        self.topic = topic
        self.buffer_size = buffer_size
        self.producer_options = {**PRODUCER_DEFAULTS, **(producer_options or {})}
        self.create_topic = create_topic
        self.topic_partitions = topic_partitions
        self.replication_factor = replication_factor
        self.max_batch = max_batch
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._factory = producer_factory
        self._pending: collections.deque[_Item] = collections.deque()
        self._inflight = 0
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._closing = False
        self._close_deadline = 0.0
        self._producer: Any = None
        self._sent = 0
        self._dropped = 0
        self._errors = 0
        self._invalid = 0
        self._last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- producer side (your request path) --------------------------------------------------------------------

    def submit(self, record: Mapping[str, Any]) -> bool:
        """Queue ``record`` (JSON-serialisable); False when it was dropped (buffer full, closed, not JSON)."""
        try:
            value = json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
            rid = record.get("request_id")
            key = str(rid).encode() if rid is not None else None
        except (TypeError, ValueError) as e:
            with self._cond:
                self._invalid += 1
            log.warning("driftloop log record dropped: not JSON-serialisable (%s)", e)
            return False
        with self._cond:
            if self._closing or len(self._pending) + self._inflight >= self.buffer_size:
                self._dropped += 1
                return False
            self._pending.append(_Item(key, value))
            self._cond.notify()
        return True

    def stats(self) -> LoggerStats:
        """A consistent snapshot of the counters."""
        with self._cond:
            return LoggerStats(sent=self._sent, dropped=self._dropped, buffered=len(self._pending) + self._inflight,
                               send_errors=self._errors, invalid=self._invalid,
                               connected=self._producer is not None, buffer_size=self.buffer_size)  # fmt: skip

    @property
    def last_error(self) -> str | None:
        """The last send or connect error (None after a successful send)."""
        return self._last_error

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until the buffer is empty; True if it is."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._inflight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake.set()  # cut a retry backoff short
                self._cond.wait(min(left, 0.1))
        return True

    def close(self, timeout: float = 5.0) -> int:
        """Stop accepting records, deliver the buffer for up to ``timeout`` s; return how many were not delivered."""
        with self._cond:
            if not self._closing:
                self._closing = True
                self._close_deadline = time.monotonic() + timeout
            self._cond.notify_all()
        self._wake.set()
        self._thread.join(timeout + 3.0)
        with self._cond:
            lost = len(self._pending) + self._inflight
            self._pending.clear()
        self._drop_producer(timeout=1.0)
        if lost:
            log.warning("driftloop logger closed with %d record(s) undelivered (broker %s unreachable: %s)", lost,
                        self.bootstrap, self._last_error or "still connecting")  # fmt: skip
        return lost

    # -- sender thread ----------------------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = self.backoff_s
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait(0.5)
                if not self._pending or (self._closing and time.monotonic() >= self._close_deadline):
                    return
                batch = [self._pending.popleft() for _ in range(min(len(self._pending), self.max_batch))]
                self._inflight = len(batch)
            failed = self._send(batch)
            with self._cond:
                if failed:
                    self._pending.extendleft(reversed(failed))
                self._inflight = 0
                self._cond.notify_all()
            if not failed:
                backoff = self.backoff_s
                continue
            wait = backoff
            if self._closing:
                wait = min(wait, max(0.0, self._close_deadline - time.monotonic()))
            self._wake.clear()
            self._wake.wait(wait)
            backoff = min(backoff * 2, self.max_backoff_s)

    def _connect(self) -> Any:
        if self._factory is not None:
            return self._factory()
        from driftloop.broker import ensure_topics, make_producer

        if self.create_topic:
            ensure_topics(self.bootstrap, [self.topic], partitions=self.topic_partitions,
                          replication_factor=self.replication_factor, timeout_s=3.0)  # fmt: skip
        return make_producer(self.bootstrap, **self.producer_options)

    def _send(self, batch: list[_Item]) -> list[_Item]:
        """Send ``batch``; return the records that were not acknowledged."""
        try:
            if self._producer is None:
                prod = self._connect()
                with self._cond:
                    self._producer = prod
            prod = self._producer
        except Exception as e:  # unreachable broker, auth failure, ...: retried later
            self._note_error(f"connect: {type(e).__name__}: {e}")
            return batch
        futures: list[Any] = []
        try:
            for item in batch:
                futures.append(prod.send(self.topic, key=item.key, value=item.value))
            wait = self.producer_options.get("delivery_timeout_ms", 10000) / 1000 + 5
            if self._closing:  # close(timeout) bounds the last attempt
                wait = max(0.1, min(wait, self._close_deadline - time.monotonic()))
            prod.flush(timeout=wait)
        except Exception as e:
            self._note_error(f"send: {type(e).__name__}: {e}")
        failed: list[_Item] = []
        ok = 0
        err: str | None = None
        for i, item in enumerate(batch):
            fut = futures[i] if i < len(futures) else None
            if fut is not None and fut.is_done and fut.succeeded():
                ok += 1
            else:
                failed.append(item)
                if fut is not None and fut.is_done and err is None:
                    err = f"send: {fut.exception!r}"
        with self._cond:
            self._sent += ok
        if failed:
            self._note_error(err or "send: not acknowledged in time")
            self._drop_producer(timeout=0.0)
        else:
            self._last_error = None
        return failed

    def _note_error(self, msg: str) -> None:
        with self._cond:
            first = self._errors == 0 or self._last_error is None
            self._errors += 1
            self._last_error = msg
        if first:
            log.warning("driftloop logger: cannot deliver to %s on %s (%s); buffering and retrying", self.topic,
                        self.bootstrap, msg)  # fmt: skip

    def _drop_producer(self, timeout: float) -> None:
        with self._cond:
            prod, self._producer = self._producer, None
        if prod is not None:
            try:
                prod.close(timeout=timeout)
            except Exception as e:  # closing a producer of a dead broker may complain; nothing to do
                log.debug("closing the producer failed: %s", e)


# ------------------------------------------------------------------------------------------- user-facing logger


class DriftloopLogger:
    """Send v1 log records and feedback events of your own LLM calls (see the module docstring)."""

    def __init__(
        self,
        bootstrap: str | Sequence[str],
        topic: str = "driftloop.logs",
        model_id: str = "unknown",
        *,
        model_version: str | None = None,
        buffer_size: int = 10_000,
        metadata: Mapping[str, Any] | None = None,
        producer_options: Mapping[str, Any] | None = None,
        create_topic: bool = False,
    ) -> None:
        self.model_id = model_id
        self.model_version = model_version
        self.metadata = dict(metadata or {})
        self.records = RecordLogger(bootstrap, topic, buffer_size=buffer_size, producer_options=producer_options,
                                    create_topic=create_topic, name="driftloop-client-logger")  # fmt: skip

    def log(
        self,
        prompt: str | Sequence[Mapping[str, Any]],
        response: str | None,
        *,
        latency_ms: float | None = None,
        request_id: str | None = None,
        **fields: Any,
    ) -> str:
        """Queue one interaction; return its ``request_id`` (generated when not given).

        ``prompt`` is the prompt text or an OpenAI-style ``messages`` list. ``fields`` are other v1 fields
        (``tokens_in``, ``tokens_out``, ``finish_reason``, ``user_id``, ``session_id``, ``feedback``,
        ``reference``, ``metadata``, ``model_version``, ``timestamp``); unknown names end up in ``metadata``
        on the driftloop side. Never blocks, never raises because of Kafka.
        """
        rid = request_id or uuid.uuid4().hex
        rec: dict[str, Any] = {"request_id": rid, "timestamp": now_rfc3339(), "model_id": self.model_id}
        if self.model_version is not None:
            rec["model_version"] = self.model_version
        if isinstance(prompt, str):
            rec["prompt"] = prompt
        else:
            rec["messages"] = [dict(m) for m in prompt]
        if response is not None:
            rec["response"] = response
        if latency_ms is not None:
            rec["latency_ms"] = round(max(0.0, float(latency_ms)), 3)
        meta = {**self.metadata, **(fields.pop("metadata", None) or {})}
        rec.update({k: v for k, v in fields.items() if v is not None})
        if meta:
            rec["metadata"] = meta
        self.records.submit(rec)
        return rid

    def feedback(
        self,
        request_id: str,
        score: float | None = None,
        correction: str | None = None,
        *,
        comment: str | None = None,
        feedback_id: str | None = None,
    ) -> bool:
        """Queue a late feedback event for ``request_id``; False if it was dropped (buffer full).

        At least one of ``score``, ``correction``, ``comment`` is required (ValueError otherwise). A
        ``feedback_id`` is generated when not given, so a retried send is stored once.
        """
        ev = feedback_event(request_id, score=score, correction=correction, comment=comment, feedback_id=feedback_id)
        return self.records.submit(ev)

    def stats(self) -> LoggerStats:
        """Sent / dropped / buffered counters."""
        return self.records.stats()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything buffered was delivered (True) or ``timeout`` passed (False)."""
        return self.records.flush(timeout)

    def close(self, timeout: float = 5.0) -> int:
        """Deliver what is buffered (up to ``timeout`` s), stop; return the number of records not delivered."""
        return self.records.close(timeout)

    def __enter__(self) -> DriftloopLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def feedback_event(
    request_id: str,
    *,
    score: float | None = None,
    correction: str | None = None,
    comment: str | None = None,
    feedback_id: str | None = None,
) -> dict[str, Any]:
    """A v1 feedback event (``{"type": "feedback", ...}``); ValueError when it carries nothing."""
    if not request_id:
        raise ValueError("request_id: must not be empty")
    if score is None and correction is None and comment is None:
        raise ValueError("feedback needs at least one of score, correction, comment")
    ev: dict[str, Any] = {"type": "feedback", "request_id": request_id, "timestamp": now_rfc3339(),
                          "feedback_id": feedback_id or uuid.uuid4().hex}  # fmt: skip
    if score is not None:
        ev["score"] = float(score)
    if correction is not None:
        ev["correction"] = correction
    if comment is not None:
        ev["comment"] = comment
    return ev


# ---------------------------------------------------------------------------------------------- wrap_openai


def _get(obj: Any, name: str) -> Any:
    """``obj.name`` or ``obj[name]`` (OpenAI SDK objects and plain dicts alike); None if absent."""
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _first_choice(resp: Any) -> Any:
    choices = _get(resp, "choices")
    if choices:
        try:
            return choices[0]
        except (IndexError, KeyError, TypeError):
            return None
    return None


def _content_text(content: Any) -> str | None:
    """Message content as text: a string, or the text parts of a content-part list."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "".join(str(_get(p, "text") or "") for p in content)
    return str(content)


def wrap_openai(create_fn: Callable[..., Any], logger: DriftloopLogger, *,
                model_version: str | None = None) -> Callable[..., Any]:  # fmt: skip
    """Wrap an OpenAI-style ``create`` (``client.chat.completions.create`` or ``client.completions.create``).

    The wrapper calls ``create_fn`` unchanged, times it, logs one v1 record (the response ``id`` as
    ``request_id``, so ``logger.feedback(resp.id, ...)`` joins) and returns the original response. With
    ``stream=True`` the returned iterator is passed through and the record is logged when it is exhausted.
    Errors of ``create_fn`` propagate and are not logged; a problem while building the record is logged as a
    warning and never reaches your code. Duck-typed: SDK objects or dicts both work.
    """

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        resp = create_fn(*args, **kwargs)
        if kwargs.get("stream"):
            return _LoggedStream(resp, logger, kwargs, t0, model_version)
        try:
            _log_response(logger, kwargs, resp, (time.perf_counter() - t0) * 1000, model_version)
        except Exception as e:  # never break the caller because of logging
            log.warning("wrap_openai: could not log the call: %s", e)
        return resp

    wrapped.__wrapped__ = create_fn  # type: ignore[attr-defined]
    wrapped.__doc__ = create_fn.__doc__
    return wrapped


def _prompt_of(kwargs: Mapping[str, Any]) -> str | list[dict[str, Any]]:
    if kwargs.get("messages") is not None:
        return [{"role": str(_get(m, "role")), "content": _content_text(_get(m, "content"))}
                for m in kwargs["messages"]]  # fmt: skip
    p = kwargs.get("prompt")
    if isinstance(p, list):
        p = p[0] if len(p) == 1 else "\n".join(map(str, p))
    return "" if p is None else str(p)


def _log_response(logger: DriftloopLogger, kwargs: Mapping[str, Any], resp: Any, latency_ms: float,
                  model_version: str | None) -> str:  # fmt: skip
    choice = _first_choice(resp)
    msg = _get(choice, "message")
    text = _content_text(_get(msg, "content")) if msg is not None else _get(choice, "text")
    usage = _get(resp, "usage")
    fields: dict[str, Any] = {
        "tokens_in": _get(usage, "prompt_tokens"),
        "tokens_out": _get(usage, "completion_tokens"),
        "finish_reason": _get(choice, "finish_reason"),
        "user_id": kwargs.get("user"),
        # wrap_openai's model_version, else the logger's, else the model that answered
        "model_version": model_version or logger.model_version or _get(resp, "model") or kwargs.get("model"),
        "metadata": {"requested_model": kwargs.get("model")} if kwargs.get("model") else None,
    }
    rid = _get(resp, "id")
    return logger.log(_prompt_of(kwargs), None if text is None else str(text), latency_ms=latency_ms,
                      request_id=str(rid) if rid else None, **fields)  # fmt: skip


class _LoggedStream:
    """Iterates a streamed response, collecting the text; logs once when the stream ends."""

    def __init__(self, stream: Any, logger: DriftloopLogger, kwargs: Mapping[str, Any], t0: float,
                 model_version: str | None) -> None:  # fmt: skip
        self._stream = stream
        self._logger = logger
        self._kwargs = dict(kwargs)
        self._t0 = t0
        self._model_version = model_version
        self._parts: list[str] = []
        self._id: Any = None
        self._model: Any = None
        self._finish: Any = None
        self._usage: Any = None
        self._logged = False

    def __iter__(self) -> Iterator[Any]:
        try:
            for chunk in self._stream:
                self._collect(chunk)
                yield chunk
        finally:
            self._log()

    def __getattr__(self, name: str) -> Any:  # e.g. .close() or .response of the SDK's Stream
        return getattr(self._stream, name)

    def _collect(self, chunk: Any) -> None:
        try:
            self._id = self._id or _get(chunk, "id")
            self._model = self._model or _get(chunk, "model")
            self._usage = _get(chunk, "usage") or self._usage
            choice = _first_choice(chunk)
            if choice is None:
                return
            delta = _get(choice, "delta")
            piece = _content_text(_get(delta, "content")) if delta is not None else _get(choice, "text")
            if piece:
                self._parts.append(str(piece))
            self._finish = _get(choice, "finish_reason") or self._finish
        except Exception as e:  # a chunk of an unexpected shape: keep streaming
            log.debug("wrap_openai: unexpected chunk: %s", e)

    def _log(self) -> None:
        if self._logged:
            return
        self._logged = True
        try:
            fake = {"id": self._id, "model": self._model, "usage": self._usage,
                    "choices": [{"text": "".join(self._parts), "finish_reason": self._finish}]}  # fmt: skip
            _log_response(self._logger, self._kwargs, fake, (time.perf_counter() - self._t0) * 1000,
                          self._model_version)  # fmt: skip
        except Exception as e:
            log.warning("wrap_openai: could not log the streamed call: %s", e)
