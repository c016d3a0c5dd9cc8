"""Adapters: ``GET /v1/models`` and vLLM's runtime adapter API (``/v1/load_lora_adapter``, ``/v1/unload_lora_adapter``).

Same status codes and bodies as vLLM, so a ``vllm`` promotion target hot-loads a promoted adapter here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response

from driftloop.serve.app import ServeState
from driftloop.serve.deps import State
from driftloop.serve.errors import ServeError
from driftloop.serve.security import check_adapter_path

router = APIRouter()


@router.get("/v1/models")
async def models(st: State) -> dict[str, Any]:
    rt = st.runtime
    now = int(time.time())
    active = rt.active
    base = {"id": st.model_id, "object": "model", "created": now, "owned_by": "driftloop",
            "root": rt.base_model_path, "parent": None, "max_model_len": rt.context_length, "permission": [],
            "active_adapter": active}  # fmt: skip
    cards: list[dict[str, Any]] = [{"id": a.name, "object": "model", "created": int(a.loaded_at), "owned_by": "driftloop",
              "root": a.path, "parent": st.model_id, "max_model_len": None, "permission": [],
              "active": a.name == active} for a in rt.adapters()]  # fmt: skip
    return {"object": "list", "data": [base, *cards]}


async def admin(st: ServeState, fn: Callable[..., None], *args: Any) -> None:
    """Run an adapter operation in the admin pool (one at a time), off the event loop."""
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(st.admin_pool, fn, *args)


async def body_of(request: Request) -> dict[str, Any]:
    """The JSON object body, or ``{}`` (vLLM answers a missing field, not a parse error)."""
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        body = None
    return body if isinstance(body, dict) else {}


def load_checked(st: ServeState, name: str, path: str) -> None:
    """Load ``path`` as ``name`` if it lies inside the adapter roots (checked as it is read)."""
    st.runtime.load_adapter(name, path, resolve=lambda p: check_adapter_path(name, p, st.adapter_roots))


@router.post("/v1/load_lora_adapter")
async def load_lora_adapter(request: Request, st: State) -> Response:
    body = await body_of(request)
    name, path = body.get("lora_name"), body.get("lora_path")
    if not name or not path or not isinstance(name, str) or not isinstance(path, str):
        raise ServeError(400, "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput")
    try:
        await admin(st, load_checked, st, name, path)
    except ServeError as e:
        st.metrics.adapter_ops.labels("load", str(e.status)).inc()
        raise
    st.metrics.adapter_ops.labels("load", "ok").inc()
    return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")


@router.post("/v1/unload_lora_adapter")
async def unload_lora_adapter(request: Request, st: State) -> Response:
    body = await body_of(request)
    name = body.get("lora_name")
    if not name or not isinstance(name, str):
        raise ServeError(400, "either 'lora_name' and 'lora_int_id' needs to be provided.", "InvalidUserInput")
    try:
        await admin(st, st.runtime.unload_adapter, name)
    except ServeError as e:
        st.metrics.adapter_ops.labels("unload", str(e.status)).inc()
        raise
    st.metrics.adapter_ops.labels("unload", "ok").inc()
    return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")
