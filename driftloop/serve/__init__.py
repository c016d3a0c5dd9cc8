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

Modules: :mod:`.runtime` (model, adapters, generation), :mod:`.schemas` (OpenAI request bodies),
:mod:`.metrics`, :mod:`.security` (API key, exposure, adapter roots), :mod:`.middleware`, :mod:`.app`
(state and ``create_serve_app``), :mod:`.routes` (one router per resource) and :mod:`.cli`.
"""

from __future__ import annotations

from driftloop.serve.app import ServeState, create_serve_app, make_record_logger, startup_adapter
from driftloop.serve.cli import register, serve_command
from driftloop.serve.errors import ServeError
from driftloop.serve.metrics import ServeMetrics
from driftloop.serve.middleware import BodyLimit
from driftloop.serve.runtime import BASE, Generation, GenParams, ModelRuntime
from driftloop.serve.schemas import ChatRequest, CompletionRequest, FeedbackRequest, chat_prompt
from driftloop.serve.security import adapter_roots, check_adapter_path, check_exposure

__all__ = [
    "BASE",
    "BodyLimit",
    "ChatRequest",
    "CompletionRequest",
    "FeedbackRequest",
    "GenParams",
    "Generation",
    "ModelRuntime",
    "ServeError",
    "ServeMetrics",
    "ServeState",
    "adapter_roots",
    "chat_prompt",
    "check_adapter_path",
    "check_exposure",
    "create_serve_app",
    "make_record_logger",
    "register",
    "serve_command",
    "startup_adapter",
]
