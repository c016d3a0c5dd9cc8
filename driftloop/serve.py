"""``driftloop serve``: an OpenAI-compatible server for a base model plus LoRA adapters (transformers + peft).

* ``POST /v1/completions``, ``POST /v1/chat/completions``, ``GET /v1/models`` in the OpenAI/vLLM shapes.
* vLLM's runtime adapter API, same status codes and bodies: ``POST /v1/load_lora_adapter``
  ``{"lora_name", "lora_path"}`` and ``POST /v1/unload_lora_adapter`` ``{"lora_name"}``, so a ``vllm``
  promotion target hot-loads a promoted adapter here without a restart. The most recently loaded adapter
  is the *active* one: requests naming the served model (``serve.model_id``) use it; a request may also name
  a loaded adapter, or ``base`` for the base model alone.
* Every request/response is logged as a v1 log record to Kafka through a bounded, non-blocking buffer
  (:class:`driftloop.client.RecordLogger`): a broker outage never fails or slows a request; records wait
  and are retried, the overflow is dropped and counted. A record over ``serve.max_log_record_bytes`` is
  truncated (``metadata.driftloop_truncated`` says what was cut), so one huge request cannot stall logging.
  ``POST /v1/feedback`` sends feedback events.
* ``GET /metrics`` (Prometheus), ``GET /health``.

Exposure: request bodies over ``serve.max_body_bytes`` get 413 (Content-Length or counted while reading a
chunked body). ``serve.api_key`` guards ``/v1/*``; the server refuses to start on a non-loopback host without
one, since the adapter endpoints change what is served. Adapters load at runtime only from
``serve.adapter_roots`` (real paths, so a symlink or ``..`` cannot leave them).

Generation is serialised (one request at a time, no batching): peft's active adapter is global to the
model. An adapter swap reads the new weights before taking the model lock and injects them under it, so
requests in flight finish on the old adapter, later ones use the new one, and none fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from driftloop.client import INVALID, RETRIES_EXHAUSTED, TOO_LARGE, RecordLogger, feedback_event, now_rfc3339

if TYPE_CHECKING:
    from driftloop.settings import Settings

log = logging.getLogger("driftloop.serve")

BASE = "base"  # model name of the base model alone; also the logged model_version without adapter


# ------------------------------------------------------------------------------------------------- errors


class ServeError(Exception):
    """An error answered in vLLM's shape ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, err_type: str = "BadRequestError") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.err_type = err_type

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.err_type, "param": None,
                                       "code": self.status}}, status_code=self.status)  # fmt: skip


# ------------------------------------------------------------------------------------------- model runtime


@dataclass(frozen=True)
class GenParams:
    """Sampling parameters of one request (``temperature`` None or 0: greedy)."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class Generation:
    """What one request produced and with which adapter (None: the base model)."""

    text: str
    tokens_in: int
    tokens_out: int
    finish_reason: str
    adapter: str | None

    @property
    def model_version(self) -> str:
        return self.adapter or BASE


@dataclass
class AdapterInfo:
    """A loaded adapter."""

    name: str
    path: str
    loaded_at: float = field(default_factory=time.time)
    seq: int = 0


class _StopOnStrings:
    """Stopping criterion: the generated text contains one of ``stops``."""

    def __init__(self, tokenizer: Any, stops: tuple[str, ...], prompt_len: int) -> None:
        self.tokenizer = tokenizer
        self.stops = stops
        self.prompt_len = prompt_len
        self.tail = max(len(s) for s in stops) + 16

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        text = self.tokenizer.decode(input_ids[0, self.prompt_len :][-self.tail :], skip_special_tokens=True)
        done = any(s in text for s in self.stops)
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


class ModelRuntime:
    """A base model and its tokenizer, plus LoRA adapters loaded with peft; thread-safe.

    ``generate`` runs under the model lock; ``load_adapter`` reads the adapter before taking it and only
    injects the weights under it; ``unload_adapter`` first stops routing requests to the adapter, then
    deletes it under the lock. Adapter operations are serialised among themselves.
    """

    def __init__(self, base_model: str, *, device: str | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not Path(base_model).is_dir():
            raise FileNotFoundError(f"base model directory {base_model} does not exist (serve.base_model)")
        self.base_model_path = base_model
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = torch.bfloat16 if self.device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(base_model)
        model = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype)
        self.base: Any = model.to(self.device).eval()  # type: ignore[arg-type]
        self.peft: Any = None  # a PeftModel once an adapter is loaded
        cfg = self.base.config
        self.context_length = int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 0)
                                  or 2048)  # fmt: skip
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_id
        self._model_lock = threading.Lock()  # generation and weight changes
        self._state_lock = threading.Lock()  # the adapter table (never held for long)
        self._admin_lock = threading.Lock()  # adapter loads/unloads, one at a time
        self._adapters: dict[str, AdapterInfo] = {}
        self._active: str | None = None
        self._seq = 0

    # -- state --------------------------------------------------------------------------------------------------

    def adapters(self) -> list[AdapterInfo]:
        """Loaded adapters, oldest first."""
        with self._state_lock:
            return sorted(self._adapters.values(), key=lambda a: a.seq)

    @property
    def active(self) -> str | None:
        """The adapter serving requests that name the served model (None: the base model)."""
        with self._state_lock:
            return self._active

    def resolve(self, name: str | None, served: str) -> str | None:
        """Adapter for a request's ``model``: the active one for ``served`` (or None), a loaded adapter, or base.

        Raises KeyError for an unknown name.
        """
        with self._state_lock:
            if name is None or name == served:
                return self._active
            if name in self._adapters:
                return name
            if name in (BASE, self.base_model_path, os.path.basename(self.base_model_path.rstrip("/"))):
                return None
        raise KeyError(name)

    # -- adapters -----------------------------------------------------------------------------------------------

    def load_adapter(self, name: str, path: str, *, resolve: Callable[[str], str] | None = None) -> None:
        """Load the adapter at ``path`` as ``name`` and make it the active one.

        ``resolve`` (e.g. :func:`check_adapter_path`) runs after the name check, as in vLLM, and maps ``path``
        to the directory actually read, so the checked real path is what loads (no swap in between);
        messages name ``path`` as the caller gave it.
        Raises ServeError: 400 already loaded or not a usable adapter, 404 no adapter directory.
        """
        with self._admin_lock:
            with self._state_lock:
                if name in self._adapters:
                    raise ServeError(400, f"The lora adapter '{name}' has already been loaded.", "InvalidUserInput")
            p = Path(resolve(path) if resolve is not None else path)
            if not p.is_dir() or not (p / "adapter_config.json").is_file():
                raise ServeError(404, f"Loading lora {name} failed: No adapter found for {path}", "NotFoundError")
            try:  # the slow part, off the model lock: read config and weights
                from peft import PeftConfig, load_peft_weights

                cfg = PeftConfig.from_pretrained(str(p))
                cfg.inference_mode = True
                weights = load_peft_weights(str(p), device=str(self.device))
            except Exception as e:
                msg = f"{type(e).__name__}: {e}".replace(str(p), path)
                raise ServeError(400, f"Loading lora {name} failed: {msg}") from e
            with self._model_lock:
                self._inject(name, cfg, weights)
            with self._state_lock:
                self._seq += 1
                self._adapters[name] = AdapterInfo(name, str(path), seq=self._seq)
                self._active = name
        log.info("loaded adapter %s from %s; it is now the active adapter", name, path)

    def _inject(self, name: str, cfg: Any, weights: dict[str, Any]) -> None:
        """Add the adapter to the model (model lock held); roll back on any failure."""
        from peft import get_peft_model, set_peft_model_state_dict

        created = self.peft is None
        try:
            if created:
                self.peft = get_peft_model(self.base, cfg, adapter_name=name, low_cpu_mem_usage=True)
            else:
                self.peft.add_adapter(name, cfg, low_cpu_mem_usage=True)
            res: Any = set_peft_model_state_dict(self.peft, weights, adapter_name=name, low_cpu_mem_usage=True)
            missing = [k for k in res.missing_keys if "lora_" in k and f".{name}" in k]
            if missing:
                raise ValueError(f"the adapter does not match the base model ({len(missing)} weights missing, "
                                 f"e.g. {missing[0]})")  # fmt: skip
            if hasattr(self.peft.base_model, "_cast_adapter_dtype"):
                self.peft.base_model._cast_adapter_dtype(adapter_name=name, autocast_adapter_dtype=True)
            self.peft.eval()
        except Exception as e:
            with contextlib.suppress(Exception):
                if created and self.peft is not None:
                    self.base = self.peft.unload()
                    self.peft = None
                elif self.peft is not None and name in self.peft.peft_config:
                    self.peft.delete_adapter(name)
            raise ServeError(400, f"Loading lora {name} failed: {type(e).__name__}: {e}") from e

    def unload_adapter(self, name: str) -> None:
        """Unload ``name``; if it was active, the newest remaining adapter (or the base) becomes active.

        Raises ServeError 404 when it is not loaded.
        """
        with self._admin_lock:
            with self._state_lock:
                if name not in self._adapters:
                    raise ServeError(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
                del self._adapters[name]  # no new request is routed to it from here on
                if self._active == name:
                    rest = sorted(self._adapters.values(), key=lambda a: a.seq)
                    self._active = rest[-1].name if rest else None
            with self._model_lock:  # requests still using it finish first
                if len(self.peft.peft_config) <= 1:
                    self.base = self.peft.unload()  # back to the plain base model
                    self.peft = None
                else:
                    self.peft.delete_adapter(name)
        log.info("unloaded adapter %s; active: %s", name, self.active or BASE)

    # -- generation ---------------------------------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        return len(self._encode(text))

    def _encode(self, text: str) -> list[int]:
        # exactly as retrain.trainer.encode_example encodes a formatted prompt
        if getattr(self.tokenizer, "chat_template", None):
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return list(self.tokenizer(text)["input_ids"])

    def generate(
        self, model: str | None, served: str, text: str, params: GenParams, default_max_tokens: int
    ) -> Generation:
        """Generate a completion of the already formatted prompt ``text`` with the adapter ``model`` names."""
        import torch

        ids = self._encode(text)
        room = self.context_length - len(ids)
        if room < 1:
            raise ServeError(400, f"This model's maximum context length is {self.context_length} tokens. However, "
                                  f"your prompt has {len(ids)} tokens.")  # fmt: skip
        if params.max_tokens is not None and params.max_tokens > room:
            raise ServeError(400, f"This model's maximum context length is {self.context_length} tokens. However, "
                                  f"you requested {len(ids) + params.max_tokens} tokens ({len(ids)} in the prompt, "
                                  f"{params.max_tokens} for the completion). Please reduce the prompt or max_tokens.")  # fmt: skip
        max_new = params.max_tokens if params.max_tokens is not None else min(default_max_tokens, room)
        kw: dict[str, Any] = {"max_new_tokens": max_new, "pad_token_id": self.pad_id, "eos_token_id": self.eos_id}
        if params.temperature:
            kw.update(do_sample=True, temperature=params.temperature, top_p=params.top_p or 1.0)
        else:
            kw["do_sample"] = False
        if params.stop:
            from transformers import StoppingCriteriaList

            kw["stopping_criteria"] = StoppingCriteriaList([_StopOnStrings(self.tokenizer, params.stop, len(ids))])
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        with self._model_lock:
            try:
                adapter = self.resolve(model, served)
            except KeyError:
                raise ServeError(404, f"The model `{model}` does not exist.", "NotFoundError") from None
            if params.seed is not None:
                torch.manual_seed(params.seed)
            with torch.inference_mode():
                if adapter is None:
                    ctx = self.peft.disable_adapter() if self.peft is not None else contextlib.nullcontext()
                    with ctx:
                        out = (self.peft or self.base).generate(input_ids=input_ids,
                                                                attention_mask=torch.ones_like(input_ids), **kw)  # fmt: skip
                else:
                    self.peft.set_adapter(adapter, inference_mode=True)
                    out = self.peft.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kw)
        new = [int(t) for t in out[0, len(ids) :].tolist()]
        finish = "length"
        if self.eos_id is not None and self.eos_id in new:
            new = new[: new.index(self.eos_id)]
            finish = "stop"
        completion = str(self.tokenizer.decode(new, skip_special_tokens=True))
        if params.stop:
            cut = [i for i in (completion.find(s) for s in params.stop) if i >= 0]
            if cut:
                completion = completion[: min(cut)]
                finish = "stop"
        if finish == "length" and len(new) < max_new:
            finish = "stop"
        return Generation(completion, len(ids), len(new), finish, adapter)


# ----------------------------------------------------------------------------------------------- requests


class _Req(BaseModel):
    model_config = ConfigDict(extra="allow")  # other OpenAI parameters are accepted and ignored

    model: str | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    n: int = 1
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    # torch.manual_seed takes [-2**63, 2**64); beyond that it raised and the server answered 500
    seed: Annotated[int, Field(ge=-(2**63), lt=2**64)] | None = None
    user: str | None = None
    metadata: dict[str, Any] | None = None

    def params(self, max_tokens: int | None = None) -> GenParams:
        if self.n != 1:
            raise ServeError(400, f"n={self.n} is not supported by this server (only n=1)")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(s for s in (self.stop or []) if s)
        return GenParams(max_tokens if max_tokens is not None else self.max_tokens, self.temperature, self.top_p,
                         stop, self.seed)  # fmt: skip


class CompletionRequest(_Req):
    prompt: str | list[str]


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(_Req):
    messages: Annotated[list[ChatMessageIn], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: Annotated[str, Field(min_length=1, max_length=256)]
    score: float | None = None
    correction: str | None = None
    comment: str | None = None
    feedback_id: str | None = None


def _text(content: str | list[dict[str, Any]] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(str(p.get("text") or "") for p in content if p.get("type", "text") == "text")


def chat_prompt(messages: list[ChatMessageIn]) -> str:
    """The prompt text of a chat request: the last user message, after the system message(s) if any.

    Single-turn on purpose: it is what :func:`retrain.trainer.format_prompt` formats for training, and it is
    logged as the record's ``prompt`` (the whole ``messages`` list is logged too).
    """
    users = [m for m in messages if m.role == "user"]
    if not users:
        raise ServeError(400, "messages: needs at least one message with role 'user'")
    system = "\n".join(_text(m.content) for m in messages if m.role in ("system", "developer") and m.content)
    last = _text(users[-1].content)
    return f"{system}\n\n{last}" if system else last


# ------------------------------------------------------------------------------------------------- metrics


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


# ----------------------------------------------------------------------------------------------------- app


@dataclass
class ServeState:
    """What the endpoints share (``app.state.serve``)."""

    settings: Settings
    runtime: ModelRuntime
    logger: RecordLogger | None
    metrics: ServeMetrics
    api_key: str | None
    gen_pool: ThreadPoolExecutor
    admin_pool: ThreadPoolExecutor
    adapter_roots: list[str] = field(default_factory=list)
    instance: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    started_at: str = field(default_factory=now_rfc3339)

    @property
    def model_id(self) -> str:
        return self.settings.serve.model_id

    def close(self, timeout: float = 10.0) -> int:
        """Stop the worker pools and flush the logger; return the number of undelivered records."""
        self.gen_pool.shutdown(wait=False, cancel_futures=True)
        self.admin_pool.shutdown(wait=False, cancel_futures=True)
        return self.logger.close(timeout) if self.logger is not None else 0


def startup_adapter(settings: Settings) -> tuple[str, str] | None:
    """``(name, path)`` of the adapter to load at start: ``serve.adapter``, else ``serving_dir/current``."""
    from driftloop.connectors.abc import safe_name
    from driftloop.connectors.filesystem import BASE_DIR, CURRENT

    s = settings.serve
    if s.adapter:
        p = Path(s.adapter).expanduser()
        return safe_name(p.resolve().name), str(p)
    if s.serving_dir:
        cur = Path(s.serving_dir).expanduser() / CURRENT
        if cur.is_symlink() or cur.exists():
            target = cur.resolve()
            if target.name != BASE_DIR and target.is_dir():
                return target.name, str(target)
    return None


def _api_key(settings: Settings) -> str | None:
    s = settings.serve
    if s.api_key_env:
        key = os.environ.get(s.api_key_env)
        if not key:
            raise ValueError(f"serve.api_key_env: environment variable {s.api_key_env} is not set")
        return key
    return s.api_key or None


def check_exposure(settings: Settings, api_key: str | None) -> None:
    """Refuse (ValueError) a server reachable beyond this machine without a real API key.

    Why: ``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter`` change what the model answers for everyone,
    so on a non-loopback host the key is required and must not be short or an example value (.env.example's
    ``change-me-...``). On loopback (the demo, local use) no key is needed.
    """
    from driftloop.settings import GENERATE_SECRET, MIN_SECRET_CHARS, is_loopback, placeholder_reason

    host = settings.serve.host
    if is_loopback(host):
        return
    if not api_key:
        raise ValueError(f"serve.host is {host}, reachable from other machines, but no API key is set, so anyone "
                         "could load and unload adapters: set serve.api_key_env (the name of an environment "
                         "variable holding the key; env DRIFTLOOP_SERVE__API_KEY_ENV) or serve.api_key, or bind "
                         "to 127.0.0.1")  # fmt: skip
    why = placeholder_reason(api_key)
    weak = (f"is shorter than {MIN_SECRET_CHARS} characters" if len(api_key) < MIN_SECRET_CHARS
            else f"looks like a placeholder ({why}; copied from .env.example?)" if why else None)  # fmt: skip
    if weak:
        where = f"${settings.serve.api_key_env}" if settings.serve.api_key_env else "serve.api_key"
        raise ValueError(f"serve.host is {host}, reachable from other machines, and the API key ({where}) {weak}; "
                         f"set it to a random value, e.g. from `{GENERATE_SECRET}`")  # fmt: skip


def adapter_roots(settings: Settings) -> list[str]:
    """Absolute directories runtime adapter loads may read: ``serve.adapter_roots``, else where adapters come from.

    The default follows the promotion flow: retraining writes adapters under the retrain artifacts directory
    (what a ``vllm`` target sends as ``lora_path``) and a ``filesystem`` target copies them to ``serving_dir``.
    """
    s = settings.serve
    if s.adapter_roots is not None:
        roots = list(s.adapter_roots)
    else:
        from driftloop.retrain.runner import artifacts_dir

        roots = [str(artifacts_dir(settings)), *([s.serving_dir] if s.serving_dir else [])]
    return [os.path.abspath(os.path.expanduser(r)) for r in roots]


def _inside(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def check_adapter_path(name: str, path: str, roots: list[str]) -> str:
    """The real path of ``path`` when it lies inside ``roots`` as written *and* resolved; else ServeError 400.

    Written (normalised, ``..`` collapsed): aliases such as ``/proc/self/root/...`` stay out even where they
    resolve inside a root. Resolved (``os.path.realpath``), for the directory and every file at its top (what
    peft reads): a symlink cannot lead out of the roots. The message repeats only what the caller sent.
    """
    written = os.path.normpath(os.path.abspath(path))
    real = os.path.realpath(path) if "\0" not in path else ""  # a NUL byte: no such path, and lstat would raise
    real_roots = [os.path.realpath(r) for r in roots]
    ok = bool(real) and _inside(written, [*roots, *real_roots]) and _inside(real, real_roots)
    if ok and os.path.isdir(real):
        with contextlib.suppress(OSError), os.scandir(real) as entries:
            ok = all(_inside(os.path.realpath(e.path), real_roots) for e in entries)
    if not ok:
        raise ServeError(400, f"Loading lora {name} failed: {path} is outside the directories this server loads "
                              "adapters from (serve.adapter_roots)", "InvalidUserInput")  # fmt: skip
    return real


def make_record_logger(settings: Settings) -> RecordLogger:
    """The Kafka record logger of ``driftloop serve`` (topic ``serve.log_topic`` or ``kafka.topics[0]``).

    Records are capped at ``serve.max_log_record_bytes`` (and ``ingest.max_message_bytes``) and text fields at
    ``ingest.max_field_chars``: what ingestion would refuse is truncated here instead.
    """
    k, s = settings.kafka, settings.serve
    return RecordLogger(k.bootstrap_servers, s.log_topic or k.topics[0], buffer_size=s.buffer_size,
                        producer_options=k.producer, create_topic=k.create_topics,
                        topic_partitions=k.topic_partitions, replication_factor=k.replication_factor,
                        name="driftloop-serve-logger",
                        max_record_bytes=min(s.max_log_record_bytes, settings.ingest.max_message_bytes),
                        max_field_chars=settings.ingest.max_field_chars)  # fmt: skip


class BodyLimit:
    """ASGI middleware: 413 for a request body over ``limit`` bytes, by Content-Length or counted as it arrives.

    Why: FastAPI reads a whole body before validating it, so without a cap one request (a chunked one too)
    holds as much memory as its client sends. The body is read here up to the limit and replayed to the app;
    the rest of a refused body is discarded by uvicorn, so the client still reads the 413 (tested over HTTP).
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        for k, v in scope.get("headers", ()):
            if k == b"content-length":
                with contextlib.suppress(ValueError):
                    declared = int(v)
        if declared is not None and declared > self.limit:
            await self._refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":  # the client went away
                return
            body = msg.get("body", b"")
            size += len(body)
            if size > self.limit:
                await self._refuse(scope, receive, send)
                return
            chunks.append(body)
            if not msg.get("more_body"):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # e.g. http.disconnect, for streaming responses
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        err = ServeError(413, f"Request body too large: this server accepts at most {self.limit} bytes "
                              "(serve.max_body_bytes)", "RequestTooLargeError")  # fmt: skip
        await err.response()(scope, receive, send)


def create_serve_app(settings: Settings, *, model_runtime: ModelRuntime | None = None,
                     record_logger: RecordLogger | None = None) -> FastAPI:  # fmt: skip
    """The serving app: loads the base model (unless ``model_runtime`` is given) and the start-up adapter.

    The record logger starts here (``serve.log_records``); the app's shutdown flushes it (10 s at most).
    Raises ValueError before loading anything when the host is not loopback and no real API key is set.
    """
    s = settings.serve
    api_key = _api_key(settings)
    check_exposure(settings, api_key)
    if model_runtime is None:
        if not s.base_model:
            raise ValueError("serve.base_model is not set: point it at a local Hugging Face model directory "
                             "(e.g. from `driftloop models toy DIR`)")  # fmt: skip
        model_runtime = ModelRuntime(s.base_model, device=s.device)
    runtime = model_runtime
    start = startup_adapter(settings)
    if start and start[0] not in {a.name for a in runtime.adapters()}:
        runtime.load_adapter(*start)
    logger = record_logger if record_logger is not None else (make_record_logger(settings) if s.log_records else None)
    state = ServeState(settings=settings, runtime=runtime, logger=logger, metrics=ServeMetrics(runtime, logger),
                       api_key=api_key, gen_pool=ThreadPoolExecutor(4, thread_name_prefix="serve-gen"),
                       admin_pool=ThreadPoolExecutor(2, thread_name_prefix="serve-admin"),
                       adapter_roots=adapter_roots(settings))  # fmt: skip

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        lost = await asyncio.to_thread(state.close, 10.0)
        why = f": {logger.last_error or 'broker unreachable: still connecting'}" if lost and logger else ""
        log.info("driftloop serve stopped (%d log record(s) undelivered%s)", lost, why)

    app = FastAPI(title="driftloop serve", lifespan=lifespan)
    app.state.serve = state
    _install_middleware(app, state)
    _install_routes(app, state)
    return app


def _endpoint_label(request: Request) -> str:
    route = request.scope.get("route")
    if route is not None:
        return str(getattr(route, "path", "other"))
    path = request.url.path  # answered before routing, e.g. 413
    return path if path in _ROUTES else "other"


def _install_middleware(app: FastAPI, st: ServeState) -> None:
    app.add_middleware(BodyLimit, limit=st.settings.serve.max_body_bytes)  # inside _observe: 401 before reading

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, exc: ServeError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors()[:5]:
            loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
            parts.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
        return ServeError(400, "; ".join(parts) or "invalid request").response()

    @app.middleware("http")
    async def _observe(request: Request, call_next: Callable[[Request], Any]) -> Response:
        t0 = time.perf_counter()
        path = request.url.path
        if st.api_key and path.startswith("/v1"):
            got = request.headers.get("authorization", "")
            if not hmac.compare_digest(got.encode(), f"Bearer {st.api_key}".encode()):
                st.metrics.requests.labels(path if path in _ROUTES else "other", "401").inc()
                return JSONResponse({"error": "Unauthorized"}, status_code=401)
        try:
            response: Response = await call_next(request)
        except Exception:
            st.metrics.requests.labels(_endpoint_label(request), "500").inc()
            raise
        label = _endpoint_label(request)
        st.metrics.requests.labels(label, str(response.status_code)).inc()
        st.metrics.latency.labels(label).observe(time.perf_counter() - t0)
        return response


_ROUTES = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/v1/load_lora_adapter",
           "/v1/unload_lora_adapter", "/v1/feedback", "/metrics", "/health")  # fmt: skip


def _install_routes(app: FastAPI, st: ServeState) -> None:
    rt = st.runtime
    loop_pool = st.gen_pool

    async def run_generation(model: str | None, text: str, params: GenParams) -> Generation:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(loop_pool, rt.generate, model, st.model_id, text, params,
                                          st.settings.serve.max_new_tokens)  # fmt: skip

    def submit(rec: dict[str, Any]) -> None:
        if st.logger is None:
            return
        try:
            st.logger.submit(rec)
        except Exception as e:  # pragma: no cover - submit does not raise; never fail a request over logging
            log.warning("could not queue a log record: %s", e)

    def record(rid: str, ts: str, req: _Req, gen: Generation, latency_ms: float, endpoint: str,
               prompt: str, messages: list[dict[str, Any]] | None) -> dict[str, Any]:  # fmt: skip
        rec: dict[str, Any] = {
            "request_id": rid, "timestamp": ts, "model_id": st.model_id, "model_version": gen.model_version,
            "prompt": prompt, "response": gen.text, "latency_ms": round(latency_ms, 3),
            "tokens_in": gen.tokens_in, "tokens_out": gen.tokens_out, "finish_reason": gen.finish_reason,
            "metadata": {**(req.metadata or {}), "adapter": gen.adapter, "endpoint": endpoint,
                         "requested_model": req.model, "server": "driftloop-serve"},
        }  # fmt: skip
        if messages is not None:
            rec["messages"] = messages
        if req.user:
            rec["user_id"] = req.user
        return rec

    def usage(gen: Generation) -> dict[str, int]:
        return {"prompt_tokens": gen.tokens_in, "completion_tokens": gen.tokens_out,
                "total_tokens": gen.tokens_in + gen.tokens_out}  # fmt: skip

    def headers(gen: Generation) -> dict[str, str]:
        return {"X-Driftloop-Model-Version": gen.model_version}

    def count(gen: Generation) -> None:
        st.metrics.tokens.labels("prompt").inc(gen.tokens_in)
        st.metrics.tokens.labels("completion").inc(gen.tokens_out)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest) -> Response:
        from driftloop.retrain.trainer import format_prompt

        ts, t0 = now_rfc3339(), time.perf_counter()
        if isinstance(req.prompt, list):
            if len(req.prompt) != 1:
                raise ServeError(400, "prompt: exactly one prompt per request is supported by this server")
            prompt = req.prompt[0]
        else:
            prompt = req.prompt
        gen = await run_generation(req.model, format_prompt(rt.tokenizer, prompt), req.params())
        latency = (time.perf_counter() - t0) * 1000
        rid, created, model = f"cmpl-{uuid.uuid4().hex}", int(time.time()), req.model or st.model_id
        count(gen)
        submit(record(rid, ts, req, gen, latency, "completions", prompt, None))
        if req.stream:
            chunks = [{"id": rid, "object": "text_completion", "created": created, "model": model,
                       "system_fingerprint": gen.model_version,
                       "choices": [{"index": 0, "text": gen.text, "logprobs": None,
                                    "finish_reason": gen.finish_reason}]}]  # fmt: skip
            if (req.stream_options or {}).get("include_usage"):
                chunks.append({"id": rid, "object": "text_completion", "created": created, "model": model,
                               "choices": [], "usage": usage(gen)})  # fmt: skip
            return _sse(chunks, headers(gen))
        return JSONResponse({
            "id": rid, "object": "text_completion", "created": created, "model": model,
            "system_fingerprint": gen.model_version,
            "choices": [{"index": 0, "text": gen.text, "logprobs": None, "finish_reason": gen.finish_reason}],
            "usage": usage(gen),
        }, headers=headers(gen))  # fmt: skip

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest) -> Response:
        from driftloop.retrain.trainer import format_prompt

        ts, t0 = now_rfc3339(), time.perf_counter()
        prompt = chat_prompt(req.messages)
        params = req.params(req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens)
        gen = await run_generation(req.model, format_prompt(rt.tokenizer, prompt), params)
        latency = (time.perf_counter() - t0) * 1000
        rid, created, model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), req.model or st.model_id
        count(gen)
        msgs = [{"role": m.role, "content": _text(m.content)} for m in req.messages]
        submit(record(rid, ts, req, gen, latency, "chat", prompt, msgs))
        if req.stream:
            base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "system_fingerprint": gen.model_version}  # fmt: skip
            chunks = [
                {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": gen.text},
                                      "logprobs": None, "finish_reason": None}]},
                {**base, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                      "finish_reason": gen.finish_reason}]},
            ]  # fmt: skip
            if (req.stream_options or {}).get("include_usage"):
                chunks.append({**base, "choices": [], "usage": usage(gen)})
            return _sse(chunks, headers(gen))
        return JSONResponse({
            "id": rid, "object": "chat.completion", "created": created, "model": model,
            "system_fingerprint": gen.model_version,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": gen.text}, "logprobs": None,
                         "finish_reason": gen.finish_reason}],
            "usage": usage(gen),
        }, headers=headers(gen))  # fmt: skip

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        now = int(time.time())
        active = rt.active
        base = {"id": st.model_id, "object": "model", "created": now, "owned_by": "driftloop",
                "root": rt.base_model_path, "parent": None, "max_model_len": rt.context_length, "permission": [],
                "active_adapter": active}  # fmt: skip
        cards: list[dict[str, Any]] = [{"id": a.name, "object": "model", "created": int(a.loaded_at), "owned_by": "driftloop",
                  "root": a.path, "parent": st.model_id, "max_model_len": None, "permission": [],
                  "active": a.name == active} for a in rt.adapters()]  # fmt: skip
        return {"object": "list", "data": [base, *cards]}

    async def admin(fn: Callable[..., None], *args: Any) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(st.admin_pool, fn, *args)

    async def body_of(request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            body = None
        return body if isinstance(body, dict) else {}

    def load_checked(name: str, path: str) -> None:
        rt.load_adapter(name, path, resolve=lambda p: check_adapter_path(name, p, st.adapter_roots))

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(request: Request) -> Response:
        body = await body_of(request)
        name, path = body.get("lora_name"), body.get("lora_path")
        if not name or not path or not isinstance(name, str) or not isinstance(path, str):
            raise ServeError(400, "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput")
        try:
            await admin(load_checked, name, path)
        except ServeError as e:
            st.metrics.adapter_ops.labels("load", str(e.status)).inc()
            raise
        st.metrics.adapter_ops.labels("load", "ok").inc()
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(request: Request) -> Response:
        body = await body_of(request)
        name = body.get("lora_name")
        if not name or not isinstance(name, str):
            raise ServeError(400, "either 'lora_name' and 'lora_int_id' needs to be provided.", "InvalidUserInput")
        try:
            await admin(rt.unload_adapter, name)
        except ServeError as e:
            st.metrics.adapter_ops.labels("unload", str(e.status)).inc()
            raise
        st.metrics.adapter_ops.labels("unload", "ok").inc()
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

    @app.post("/v1/feedback", status_code=202)
    async def feedback(req: FeedbackRequest) -> dict[str, Any]:
        try:
            ev = feedback_event(req.request_id, score=req.score, correction=req.correction, comment=req.comment,
                                feedback_id=req.feedback_id)  # fmt: skip
        except ValueError as e:
            raise ServeError(400, str(e)) from None
        queued = st.logger.submit(ev) if st.logger is not None else False
        return {"request_id": req.request_id, "feedback_id": ev["feedback_id"], "queued": queued}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(st.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        stats = st.logger.stats() if st.logger is not None else None
        return {"status": "ok", "instance": st.instance, "started_at": st.started_at, "pid": os.getpid(),
                "model_id": st.model_id, "active_adapter": rt.active,
                "log_records": None if stats is None else {
                    "sent": stats.sent, "dropped": stats.dropped, "buffered": stats.buffered,
                    "truncated": stats.truncated, "rejected": dict(stats.rejected_reasons),
                    "last_error": stats.last_error}}  # fmt: skip


def _sse(chunks: list[dict[str, Any]], headers: dict[str, str]) -> StreamingResponse:
    """Server-sent events of the (already complete) answer, then ``[DONE]``."""

    async def gen() -> AsyncIterator[bytes]:
        for c in chunks:
            yield f"data: {json.dumps(c)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    return StreamingResponse(gen(), media_type="text/event-stream", headers=headers)


# ------------------------------------------------------------------------------------------------------ CLI


ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML settings file (default: $DRIFTLOOP_CONFIG, else built-in defaults)."),
]


def serve_command(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default: serve.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: serve.port; 0 picks a free one).")] = None,
    base_model: Annotated[str | None, typer.Option(help="Local model directory (serve.base_model).")] = None,
    adapter: Annotated[str | None, typer.Option(help="LoRA adapter directory to load at start.")] = None,
    model_id: Annotated[str | None, typer.Option(help="Served model name, logged as model_id.")] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING, ERROR.")] = "INFO",
) -> None:
    """Serve a base model + LoRA adapter (OpenAI API, vLLM adapter endpoints), logging to Kafka."""
    import uvicorn
    from pydantic import ValidationError

    from driftloop.cli import get_settings, setup_logging
    from driftloop.settings import ServeSettings, format_validation_error

    setup_logging(log_level)
    s = get_settings(config)
    over = {k: v for k, v in {"host": host, "port": port, "base_model": base_model, "adapter": adapter,
                              "model_id": model_id}.items() if v is not None}  # fmt: skip
    try:  # command-line options beat the file and the environment
        serve_cfg = ServeSettings.model_validate({**s.serve.model_dump(), **over})
    except ValidationError as e:
        for p in format_validation_error(e):
            typer.echo(f"error: serve.{p}", err=True)
        raise typer.Exit(2) from None
    s = s.model_copy(update={"serve": serve_cfg})
    try:
        api = create_serve_app(s)
    except (ValueError, FileNotFoundError, ServeError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    st: ServeState = api.state.serve
    typer.echo(f"driftloop serve: {serve_cfg.model_id} on http://{serve_cfg.host}:{serve_cfg.port}/v1 "
               f"(base {serve_cfg.base_model}, adapter {st.runtime.active or 'none'}, device {st.runtime.device}; "
               f"logging to {st.logger.topic if st.logger else 'nowhere'})", err=True)  # fmt: skip
    uvicorn.run(api, host=serve_cfg.host, port=serve_cfg.port, log_level=log_level.lower(), access_log=False,
                timeout_graceful_shutdown=30)  # fmt: skip


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the root CLI."""
    app.command("serve")(serve_command)
