"""OTLP receiver throughput: spans/s through ``POST /v1/traces`` into Kafka vs a bare parse + produce loop.

Builds N realistic GenAI chat spans (semconv attributes with message content, ~1 KB each, made with the
opentelemetry-proto classes) in ``ExportTraceServiceRequest`` bodies of ``--batch`` spans, then, in the
same run, against the same broker (a local Tansu unless --bootstrap is given):

  1. receiver: the driftloop API (create_app, the receiver's routes) served by uvicorn in its own process;
     ``--clients`` threads POST the bodies (protobuf; gzip with --gzip; keep-alive connections of the standard
     library, the lightest load generator at hand) with an ingest token. Every 200 means
     the broker acknowledged every record of the request (acks=all).
  2. baseline: one loop in this process that parses each body (``ExportTraceServiceRequest.FromString``),
     produces each span's serialized bytes with the receiver's producer settings and flushes per body.

The two alternate ``--repeat`` times (fresh topics each time) and the medians are compared (ratio
receiver / baseline; target >= 0.5). The receiver's produced-record counter (from its /metrics) is checked
against N, and its process's peak RSS is reported. So is the CPU time per span of the receiver's process and of
the baseline loop (its process, producer thread included): on a shared machine the spans/s of the two move
with the load, the CPU they cost much less. The last line is JSON.

    python bench/otlp.py            # 20000 spans x 2, under ~2 minutes
    python bench/otlp.py --quick    # a few seconds
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from driftloop.broker import LocalTansu, ensure_topics, free_port, make_producer, wait_for_port

TOKEN = "bench-ingest-token-" + "x" * 16
QUESTIONS = ["Summarise the attached incident report for the on-call channel.",
             "Translate the following paragraph into French, keeping the technical terms.",
             "Which of these three SQL queries uses the index on (tenant_id, created_at)?",
             "Write a polite reply declining the meeting and proposing Thursday instead."]  # fmt: skip


def kv(k: str, v: str | int) -> KeyValue:
    return KeyValue(key=k, value=AnyValue(int_value=v) if isinstance(v, int) else AnyValue(string_value=v))


def genai_span(i: int, rnd: bytes) -> Span:
    """One chat call as opentelemetry-instrumentation-openai-v2 records it with content capture on."""
    q = QUESTIONS[i % len(QUESTIONS)]
    inp = [
        {"role": "system", "parts": [{"type": "text", "content": "You are a concise assistant for an SRE team."}]},
        {"role": "user", "parts": [{"type": "text", "content": f"{q} (ticket {i})\n" + "context line. " * 20}]},
    ]
    out = [{"role": "assistant", "finish_reason": "stop",
            "parts": [{"type": "text", "content": f"Answer {i}: " + "a reasonably detailed sentence. " * 8}]}]  # fmt: skip
    t0 = 1_760_000_000_000_000_000 + i * 1_000_000
    return Span(trace_id=rnd[:16], span_id=rnd[16:24], name="chat gpt-4o-mini", kind=Span.SPAN_KIND_CLIENT,
                start_time_unix_nano=t0, end_time_unix_nano=t0 + 850_000_000,
                attributes=[kv("gen_ai.operation.name", "chat"), kv("gen_ai.provider.name", "openai"),
                            kv("gen_ai.request.model", "gpt-4o-mini"), kv("gen_ai.response.model", "gpt-4o-mini-2024-07-18"),
                            kv("gen_ai.response.id", f"chatcmpl-{i}"), kv("gen_ai.usage.input_tokens", 180),
                            kv("gen_ai.usage.output_tokens", 64), kv("gen_ai.response.finish_reasons", "stop"),
                            kv("server.address", "api.openai.com"), kv("gen_ai.input.messages", json.dumps(inp)),
                            kv("gen_ai.output.messages", json.dumps(out))])  # fmt: skip


def bodies(n: int, batch: int) -> list[bytes]:
    res = Resource(attributes=[kv("service.name", "support-bot"), kv("deployment.environment", "prod")])
    out = []
    for start in range(0, n, batch):
        spans = [genai_span(i, os.urandom(24)) for i in range(start, min(n, start + batch))]
        req = ExportTraceServiceRequest(
            resource_spans=[ResourceSpans(resource=res, scope_spans=[ScopeSpans(spans=spans)])]
        )
        out.append(req.SerializeToString())
    return out


# -- the receiver process --------------------------------------------------------------------------------------
def settings_for(bootstrap: str, topic: str, batch: int) -> Any:
    from driftloop.settings import load_settings

    return load_settings(None, database={"url": "sqlite://"},
                         kafka={"bootstrap_servers": [bootstrap], "topics": [topic], "create_topics": False},
                         api={"tokens": [{"name": "bench", "token": TOKEN, "role": "ingest"}],
                              "receiver": {"max_records": max(batch, 10_000)}})  # fmt: skip


def serve(bootstrap: str, topic: str, port: int, batch: int) -> None:
    import uvicorn
    from sqlalchemy import create_engine

    from driftloop.api.app import create_app

    app = create_app(settings_for(bootstrap, topic, batch), create_engine("sqlite://"))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) that process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def produced_counter(url: str) -> float:
    import httpx

    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith('driftloop_receiver_records_total{format="otlp",outcome="produced"}'):
            total += float(line.rsplit(" ", 1)[1])
    return total


def run_receiver(url: str, data: list[bytes], clients: int, gz: bool, n: int) -> float:
    """spans/s of ``clients`` threads POSTing ``data`` (each body once); raises on any non-200.

    The clients use the standard library's keep-alive HTTP connection: they share the machine's cores with
    the receiver, so the load generator should cost as little as it can (httpx took 5.6-7 ms of CPU per
    146 KB request here, http.client 0.4-0.5 ms).
    """
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(url)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-protobuf"}
    if gz:
        headers["Content-Encoding"] = "gzip"
        data = [gzip.compress(b, 1) for b in data]
    nxt = iter(range(len(data)))
    lock = threading.Lock()
    errors: list[str] = []

    def client() -> None:
        conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=60)
        try:
            while True:
                with lock:
                    i = next(nxt, None)
                if i is None or errors:
                    return
                conn.request("POST", "/v1/traces", body=data[i], headers=headers)
                r = conn.getresponse()
                content = r.read()
                if r.status != 200:
                    errors.append(f"{r.status}: {content[:200]!r}")
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"receiver answered {errors[0]}")
    return n / dt


def run_baseline(bootstrap: str, topic: str, data: list[bytes], n: int, cpu: list[float]) -> float:
    """spans/s of a bare loop: parse each body, produce each span's bytes, flush per body; appends the CPU
    us/span of this process (the loop and the producer's I/O thread) to ``cpu``."""
    from driftloop.api.receiver import KafkaSink

    opts = KafkaSink([bootstrap], topic, 10.0).producer_options()
    prod = make_producer(bootstrap, **opts)
    # connect (metadata) outside the measurement, as the receiver is warmed by its first request
    prod.send(topic, b"warm-up").get(timeout=30)
    t0, c0 = time.perf_counter(), time.process_time()
    for body in data:
        req = ExportTraceServiceRequest.FromString(body)
        for rs in req.resource_spans:
            for ss in rs.scope_spans:
                for sp in ss.spans:
                    prod.send(topic, key=sp.span_id, value=sp.SerializeToString())
        prod.flush()
    dt = time.perf_counter() - t0
    cpu.append((time.process_time() - c0) / n * 1e6)
    prod.close()
    return n / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spans", type=int, default=20_000, help="spans per measurement (default 20000)")
    ap.add_argument("--batch", type=int, default=100, help="spans per request (default 100)")
    ap.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients (default 4)")
    ap.add_argument("--repeat", type=int, default=2, help="receiver/baseline pairs; medians compared (default 2)")
    ap.add_argument("--gzip", action="store_true", help="gzip the request bodies (as the OTel exporters can)")
    ap.add_argument("--quick", action="store_true", help="2000 spans, one pair: a smoke run of a few seconds")
    ap.add_argument("--bootstrap", help="use this broker instead of starting a local Tansu")
    ap.add_argument("--serve", nargs=3, metavar=("BOOTSTRAP", "TOPIC", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve[0], args.serve[1], int(args.serve[2]), args.batch)
        return
    if args.quick:
        args.spans, args.repeat = 2000, 1
    broker = None if args.bootstrap else LocalTansu().start()
    bootstrap = args.bootstrap or broker.bootstrap  # type: ignore[union-attr]
    data = bodies(args.spans, args.batch)
    size = sum(len(b) for b in data) / args.spans
    print(f"{args.spans} spans ({size:.0f} B each in protobuf), {len(data)} requests of {args.batch}, "
          f"{args.clients} clients{', gzip' if args.gzip else ''}", file=sys.stderr)  # fmt: skip
    suffix = uuid.uuid4().hex[:6]
    rtopic, btopic = f"bench-otlp-recv-{suffix}", f"bench-otlp-base-{suffix}"
    ensure_topics(bootstrap, [rtopic, btopic], partitions=3)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, __file__, "--batch", str(args.batch), "--serve", bootstrap, rtopic,
                             str(port)])  # fmt: skip
    recv: list[float] = []
    base: list[float] = []
    recv_cpu: list[float] = []
    base_cpu: list[float] = []
    try:
        wait_for_port("127.0.0.1", port, 60)
        warm = min(args.batch, args.spans)
        run_receiver(url, data[:1], 1, args.gzip, warm)  # warm-up: the lazy producer connects
        for i in range(args.repeat):
            c0 = cpu_s(proc.pid)
            recv.append(run_receiver(url, data, args.clients, args.gzip, args.spans))
            recv_cpu.append((cpu_s(proc.pid) - c0) / args.spans * 1e6)
            base.append(run_baseline(bootstrap, btopic, data, args.spans, base_cpu))
            print(f"run {i + 1}/{args.repeat}: receiver {recv[-1]:,.0f} spans/s ({recv_cpu[-1]:.0f} us CPU/span), "
                  f"baseline {base[-1]:,.0f} spans/s ({base_cpu[-1]:.0f} us CPU/span)", file=sys.stderr)  # fmt: skip
        produced = produced_counter(url)
        expected = warm + args.repeat * args.spans
        if produced != expected:
            raise RuntimeError(f"the receiver counted {produced:.0f} produced records, expected {expected}")
        rss = peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)
        if broker:
            broker.stop()
    r, b = statistics.median(recv), statistics.median(base)
    ratio = r / b
    print(f"receiver (HTTP -> map -> Kafka, acked), median: {r:,.0f} spans/s")
    print(f"baseline (parse + produce loop), median:       {b:,.0f} spans/s")
    rc, bc = statistics.median(recv_cpu), statistics.median(base_cpu)
    print(f"ratio receiver/baseline: {ratio:.2f} (target >= 0.5)   receiver peak RSS: {rss:.0f} MB")
    print(f"CPU per span, median: receiver process {rc:.0f} us, baseline {bc:.0f} us (baseline/receiver {bc / rc:.2f})")
    print(json.dumps({"receiver_spans_per_s": round(r), "baseline_spans_per_s": round(b), "ratio": round(ratio, 3),
                      "target": 0.5, "receiver_peak_rss_mb": round(rss, 1), "spans": args.spans, "batch": args.batch,
                      "clients": args.clients, "gzip": args.gzip, "repeat": args.repeat,
                      "receiver_runs": [round(x) for x in recv], "baseline_runs": [round(x) for x in base],
                      "receiver_cpu_us_per_span": [round(x, 1) for x in recv_cpu],
                      "baseline_cpu_us_per_span": [round(x, 1) for x in base_cpu]}))  # fmt: skip


if __name__ == "__main__":
    main()
