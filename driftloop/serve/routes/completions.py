"""``POST /v1/completions`` and ``POST /v1/chat/completions``: generate, count tokens, log the exchange."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response, StreamingResponse

from driftloop.records import ChatMessage, LogRecordV1, now_rfc3339
from driftloop.serve.app import ServeState
from driftloop.serve.deps import State
from driftloop.serve.errors import ServeError
from driftloop.serve.runtime import Generation, GenParams
from driftloop.serve.schemas import ChatRequest, CompletionRequest, Req, chat_prompt, message_text

log = logging.getLogger("driftloop.serve")

router = APIRouter()


async def run_generation(st: ServeState, model: str | None, text: str, params: GenParams) -> Generation:
    """Generate in the generation pool, off the event loop."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(st.gen_pool, st.runtime.generate, model, st.model_id, text, params,
                                      st.settings.serve.max_new_tokens)  # fmt: skip


def submit(st: ServeState, rec: LogRecordV1) -> None:
    """Queue a log record; never fail a request over logging."""
    if st.logger is None:
        return
    try:
        st.logger.submit(rec)
    except Exception as e:  # pragma: no cover - submit does not raise; never fail a request over logging
        log.warning("could not queue a log record: %s", e)


def record(st: ServeState, rid: str, ts: str, req: Req, gen: Generation, latency_ms: float, endpoint: str,
           prompt: str, messages: list[ChatMessage] | None) -> LogRecordV1:  # fmt: skip
    """The v1 log record of one exchange: the type the client logger sends and ingestion decodes."""
    return LogRecordV1(
        request_id=rid, timestamp=ts, model_id=st.model_id, model_version=gen.model_version, prompt=prompt,
        messages=messages, response=gen.text, latency_ms=round(latency_ms, 3), tokens_in=gen.tokens_in,
        tokens_out=gen.tokens_out, finish_reason=gen.finish_reason, user_id=req.user or None,
        metadata={**(req.metadata or {}), "adapter": gen.adapter, "endpoint": endpoint,
                  "requested_model": req.model, "server": "driftloop-serve"},
    )  # fmt: skip


def usage(gen: Generation) -> dict[str, int]:
    return {"prompt_tokens": gen.tokens_in, "completion_tokens": gen.tokens_out,
            "total_tokens": gen.tokens_in + gen.tokens_out}  # fmt: skip


def headers(gen: Generation) -> dict[str, str]:
    return {"X-Driftloop-Model-Version": gen.model_version}


def count(st: ServeState, gen: Generation) -> None:
    st.metrics.tokens.labels("prompt").inc(gen.tokens_in)
    st.metrics.tokens.labels("completion").inc(gen.tokens_out)


def sse(chunks: list[dict[str, Any]], headers: dict[str, str]) -> StreamingResponse:
    """Server-sent events of the (already complete) answer, then ``[DONE]``."""

    async def gen() -> AsyncIterator[bytes]:
        for c in chunks:
            yield f"data: {json.dumps(c)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    return StreamingResponse(gen(), media_type="text/event-stream", headers=headers)


@router.post("/v1/completions")
async def completions(req: CompletionRequest, st: State) -> Response:
    from driftloop.retrain.trainer import format_prompt

    ts, t0 = now_rfc3339(), time.perf_counter()
    if isinstance(req.prompt, list):
        if len(req.prompt) != 1:
            raise ServeError(400, "prompt: exactly one prompt per request is supported by this server")
        prompt = req.prompt[0]
    else:
        prompt = req.prompt
    gen = await run_generation(st, req.model, format_prompt(st.runtime.tokenizer, prompt), req.params())
    latency = (time.perf_counter() - t0) * 1000
    rid, created, model = f"cmpl-{uuid.uuid4().hex}", int(time.time()), req.model or st.model_id
    count(st, gen)
    submit(st, record(st, rid, ts, req, gen, latency, "completions", prompt, None))
    if req.stream:
        chunks = [{"id": rid, "object": "text_completion", "created": created, "model": model,
                   "system_fingerprint": gen.model_version,
                   "choices": [{"index": 0, "text": gen.text, "logprobs": None,
                                "finish_reason": gen.finish_reason}]}]  # fmt: skip
        if (req.stream_options or {}).get("include_usage"):
            chunks.append({"id": rid, "object": "text_completion", "created": created, "model": model,
                           "choices": [], "usage": usage(gen)})  # fmt: skip
        return sse(chunks, headers(gen))
    return JSONResponse({
        "id": rid, "object": "text_completion", "created": created, "model": model,
        "system_fingerprint": gen.model_version,
        "choices": [{"index": 0, "text": gen.text, "logprobs": None, "finish_reason": gen.finish_reason}],
        "usage": usage(gen),
    }, headers=headers(gen))  # fmt: skip


@router.post("/v1/chat/completions")
async def chat(req: ChatRequest, st: State) -> Response:
    from driftloop.retrain.trainer import format_prompt

    ts, t0 = now_rfc3339(), time.perf_counter()
    prompt = chat_prompt(req.messages)
    params = req.params(req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens)
    gen = await run_generation(st, req.model, format_prompt(st.runtime.tokenizer, prompt), params)
    latency = (time.perf_counter() - t0) * 1000
    rid, created, model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), req.model or st.model_id
    count(st, gen)
    msgs = [ChatMessage(role=m.role, content=message_text(m.content)) for m in req.messages]
    submit(st, record(st, rid, ts, req, gen, latency, "chat", prompt, msgs))
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
        return sse(chunks, headers(gen))
    return JSONResponse({
        "id": rid, "object": "chat.completion", "created": created, "model": model,
        "system_fingerprint": gen.model_version,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": gen.text}, "logprobs": None,
                     "finish_reason": gen.finish_reason}],
        "usage": usage(gen),
    }, headers=headers(gen))  # fmt: skip
