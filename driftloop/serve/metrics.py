"""Prometheus metrics of the serving app: requests, latency, tokens, adapter operations, log-record delivery."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from driftloop.client import INVALID, RETRIES_EXHAUSTED, TOO_LARGE, RecordLogger
from driftloop.serve.runtime import BASE, ModelRuntime


class ServeMetrics:
    """Prometheus metrics of one app, in their own registry (several apps may live in one process)."""

    def __init__(self, runtime: ModelRuntime, logger: RecordLogger | None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("driftloop_serve_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=r)  # fmt: skip
        self.latency = Histogram("driftloop_serve_request_latency_seconds", "Request latency by endpoint",
                                 ["endpoint"], registry=r,
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))  # fmt: skip
        self.tokens = Counter("driftloop_serve_tokens", "Prompt and completion tokens", ["kind"], registry=r)
        self.adapter_ops = Counter("driftloop_serve_adapter_operations", "Adapter loads and unloads by result",
                                   ["operation", "result"], registry=r)  # fmt: skip
        r.register(_StateCollector(runtime, logger))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector(Collector):
    def __init__(self, runtime: ModelRuntime, logger: RecordLogger | None) -> None:
        self.runtime = runtime
        self.logger = logger

    def collect(self) -> Iterator[Metric]:
        active = GaugeMetricFamily("driftloop_serve_active_adapter_info", "The adapter serving the model name "
                                   "(base: none)", labels=["adapter"])  # fmt: skip
        active.add_metric([self.runtime.active or BASE], 1.0)
        yield active
        yield GaugeMetricFamily("driftloop_serve_adapters_loaded", "Loaded LoRA adapters",
                                value=len(self.runtime.adapters()))  # fmt: skip
        if self.logger is None:
            return
        s = self.logger.stats()
        for name, help_, v in (("sent", "Log records acknowledged by the broker", s.sent),
                               ("dropped", "Log records dropped because the buffer was full", s.dropped),
                               ("send_errors", "Failed attempts to deliver log records (retried)", s.send_errors),
                               ("invalid", "Log records that could not be serialised", s.invalid),
                               ("truncated", "Log records truncated to fit serve.max_log_record_bytes",
                                s.truncated)):  # fmt: skip
            yield CounterMetricFamily(f"driftloop_serve_log_records_{name}", help_, value=v)
        rejected = CounterMetricFamily("driftloop_serve_log_records_rejected", "Log records refused for a reason "
                                       "of their own and dropped without retrying", labels=["reason"])  # fmt: skip
        for reason in (TOO_LARGE, INVALID, RETRIES_EXHAUSTED):
            rejected.add_metric([reason], float(s.rejected_reasons.get(reason, 0)))
        yield rejected
        yield GaugeMetricFamily("driftloop_serve_log_records_buffered", "Log records waiting for the broker",
                                value=s.buffered)  # fmt: skip
        yield GaugeMetricFamily("driftloop_serve_log_buffer_size", "Capacity of the log record buffer",
                                value=s.buffer_size)  # fmt: skip
        yield GaugeMetricFamily("driftloop_serve_log_broker_connected", "1 while a producer is connected",
                                value=1.0 if s.connected else 0.0)  # fmt: skip
