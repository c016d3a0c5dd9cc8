"""Real OpenTelemetry clients against ``driftloop serve``: the instrumented ``openai`` client and an OTLP capture.

Issue 16's acceptance asks for the real clients, not hand-built OTLP: the ``openai`` Python client instrumented
with ``opentelemetry-instrumentation-openai-v2`` (several content modes) or ``openinference-instrumentation-openai``,
exporting through the OTLP/HTTP protobuf exporters of ``opentelemetry-sdk``. Instrumentors patch ``openai``
globally and the content mode is read from the environment once, so each configuration runs in its own
process: ``python -m tests.otel_capture CONFIG --serve URL --otlp URL [--header K=V]`` (see :func:`run_client`).

Used by ``tests/fixtures/otlp_captured/record.py`` (records the payloads as fixtures) and by
``tests/test_otel_real_clients.py`` (the end-to-end path into Postgres).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ClientConfig:
    """One way to instrument the openai client: the instrumentation and the environment it reads."""

    name: str
    instrumentation: str  # "openai-v2" | "openinference"
    env: dict[str, str]
    content: bool  # whether prompt/response text is exported at all
    doc: str


CONFIGS: dict[str, ClientConfig] = {c.name: c for c in (
    ClientConfig("v2-nocontent", "openai-v2", {}, False,
                 "openai-v2, default (semconv 1.30, content capture off)"),
    ClientConfig("v2-content-legacy", "openai-v2", {"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"}, True,
                 "openai-v2, legacy semconv 1.30 with content: messages as log records (events)"),
    ClientConfig("v2-latest-span-only", "openai-v2",
                 {"OTEL_SEMCONV_STABILITY_OPT_IN": "gen_ai_latest_experimental",
                  "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "SPAN_ONLY"}, True,
                 "openai-v2, latest experimental semconv, content on the span"),
    ClientConfig("v2-latest-event-only", "openai-v2",
                 {"OTEL_SEMCONV_STABILITY_OPT_IN": "gen_ai_latest_experimental",
                  "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "EVENT_ONLY"}, True,
                 "openai-v2, latest experimental semconv, content in a log record (event)"),
    ClientConfig("openinference", "openinference", {}, True,
                 "openinference-instrumentation-openai (content on span attributes by default)"),
)}  # fmt: skip


@dataclass(frozen=True)
class Call:
    """One chat completion the client makes; ``system`` adds a system message, ``stream`` streams with usage."""

    user: str
    system: str | None = None
    stream: bool = False
    max_tokens: int = 12


CALLS: tuple[Call, ...] = (
    Call("What is 10 minus 4?", system="Answer briefly."),
    Call("What is 2 plus 2?", stream=True, max_tokens=8),
)


# ------------------------------------------------------------------------------------------ the client process


def _providers(otlp: str, headers: dict[str, str], service: str, batch: bool) -> tuple[Any, Any]:
    """Global tracer and logger providers exporting OTLP/HTTP protobuf to ``otlp``.

    ``batch=False``: Simple processors, one POST per span or log record (what the fixtures show: a call's log
    records in separate bodies). ``batch=True``: the SDK's Batch processors with gzip, what a service set up
    by ``opentelemetry-instrument`` sends; their schedule delay comes from OTEL_BSP_/OTEL_BLRP_SCHEDULE_DELAY.
    """
    from opentelemetry import trace
    from opentelemetry._logs import set_logger_provider
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, SimpleLogRecordProcessor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    resource = Resource.create({"service.name": service})
    comp = Compression.Gzip if batch else Compression.NoCompression
    spans = OTLPSpanExporter(endpoint=f"{otlp}/v1/traces", headers=headers, compression=comp)
    logs = OTLPLogExporter(endpoint=f"{otlp}/v1/logs", headers=headers, compression=comp)
    tp = TracerProvider(resource=resource)
    tp.add_span_processor(BatchSpanProcessor(spans) if batch else SimpleSpanProcessor(spans))
    trace.set_tracer_provider(tp)
    lp = LoggerProvider(resource=resource)
    lp.add_log_record_processor(BatchLogRecordProcessor(logs) if batch else SimpleLogRecordProcessor(logs))
    set_logger_provider(lp)
    return tp, lp


def run_client(config: str, serve: str, otlp: str, model: str, headers: dict[str, str],
               batch: bool = False) -> list[dict[str, Any]]:  # fmt: skip
    """Instrument, make :data:`CALLS` against ``serve``, flush; return what the server answered per call."""
    cfg = CONFIGS[config]
    tp, lp = _providers(otlp, headers, f"otel-capture-{config}", batch)
    if cfg.instrumentation == "openai-v2":
        from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

        OpenAIInstrumentor().instrument(tracer_provider=tp, logger_provider=lp)
    else:
        from openinference.instrumentation.openai import OpenAIInstrumentor as OIInstrumentor

        OIInstrumentor().instrument(tracer_provider=tp)
    from openai import OpenAI

    client = OpenAI(base_url=f"{serve}/v1", api_key="unused", max_retries=0, timeout=120)
    out: list[dict[str, Any]] = []
    for call in CALLS:
        messages: list[Any] = [{"role": "system", "content": call.system}] if call.system else []
        messages.append({"role": "user", "content": call.user})
        if call.stream:
            text, finish, usage = "", None, None
            stream = client.chat.completions.create(model=model, messages=messages, max_tokens=call.max_tokens,
                                                    stream=True, stream_options={"include_usage": True})  # fmt: skip
            for chunk in stream:
                for ch in chunk.choices:
                    text += ch.delta.content or ""
                    finish = ch.finish_reason or finish
                usage = chunk.usage or usage
        else:
            r = client.chat.completions.create(model=model, messages=messages, max_tokens=call.max_tokens)
            text, finish, usage = r.choices[0].message.content or "", r.choices[0].finish_reason, r.usage
        assert usage is not None, "driftloop serve sent no usage"
        out.append({"user": call.user, "system": call.system, "stream": call.stream, "response": text,
                    "finish_reason": finish, "tokens_in": usage.prompt_tokens,
                    "tokens_out": usage.completion_tokens})  # fmt: skip
    tp.force_flush()
    lp.force_flush()
    tp.shutdown()
    lp.shutdown()
    return out


def client_subprocess(config: str, serve: str, otlp: str, model: str, headers: dict[str, str] | None = None,
                      batch: bool = False, env: dict[str, str] | None = None,
                      timeout_s: float = 300) -> list[dict[str, Any]]:  # fmt: skip
    """Run :func:`run_client` in a fresh interpreter with exactly the configuration's OTel environment
    (plus ``env``); raise with the client's stderr if it fails (an export error is logged there)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OPENINFERENCE_"))}
    base |= CONFIGS[config].env | (env or {}) | {"PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "tests.otel_capture", config, "--serve", serve, "--otlp", otlp, "--model", model]
    if batch:
        cmd.append("--batch")
    for k, v in (headers or {}).items():
        cmd += ["--header", f"{k}={v}"]
    p = subprocess.run(cmd, env=base, cwd=REPO, capture_output=True, text=True, timeout=timeout_s, check=False)
    if p.returncode != 0:
        raise RuntimeError(f"client {config} failed ({p.returncode}):\n{p.stderr[-4000:]}")
    result: list[dict[str, Any]] = json.loads(p.stdout.strip().splitlines()[-1])
    return result


# ------------------------------------------------------------------------------------------ the capture server


@dataclass
class Captured:
    """One POST the capture server received."""

    path: str
    content_type: str
    body: bytes


@dataclass
class CaptureServer:
    """A local OTLP/HTTP endpoint that answers 200 with an empty export response and keeps every body."""

    bodies: list[Captured] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.httpd is not None
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> CaptureServer:
        cap = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with cap.lock:
                    cap.bodies.append(Captured(self.path, self.headers.get("Content-Type", ""), body))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, name="otlp-capture", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.httpd is not None
        self.httpd.shutdown()
        self.httpd.server_close()

    def take(self) -> list[Captured]:
        """The bodies received so far, clearing the list."""
        with self.lock:
            out, self.bodies = self.bodies, []
        return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("config", choices=sorted(CONFIGS))
    ap.add_argument("--serve", required=True, help="driftloop serve base URL (http://host:port)")
    ap.add_argument("--otlp", required=True, help="OTLP/HTTP base URL (the exporter appends /v1/traces, /v1/logs)")
    ap.add_argument("--model", required=True)
    ap.add_argument("--header", action="append", default=[], help="K=V header on every export")
    ap.add_argument("--batch", action="store_true", help="Batch processors + gzip (default: Simple, uncompressed)")
    a = ap.parse_args(argv)
    headers = dict(h.split("=", 1) for h in a.header)
    print(json.dumps(run_client(a.config, a.serve, a.otlp, a.model, headers, a.batch)))


if __name__ == "__main__":
    main()
