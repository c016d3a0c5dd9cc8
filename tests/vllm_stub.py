"""A real local HTTP server that speaks vLLM's runtime LoRA adapter API, for tests.

Mirrors vLLM (entrypoints/openai/serving_models.py): ``POST /v1/load_lora_adapter`` answers 200 with a plain-text
success line, 400 ``InvalidUserInput`` "The lora adapter 'x' has already been loaded." for a loaded name, 404
``NotFoundError`` "... No adapter found for <path>" when the path is not on disk; ``POST /v1/unload_lora_adapter``
answers 404 "The lora adapter 'x' cannot be found." for an unknown name; ``GET /v1/models`` lists the base model
and the loaded adapters (``parent`` = base). Errors use vLLM's current body ``{"error": {"message", "type",
"param", "code"}}``; with ``api_key`` set, /v1 routes need ``Authorization: Bearer <key>`` (else 401
``{"error": "Unauthorized"}``); with ``runtime_lora=False`` the adapter routes are 404 ``{"detail": "Not Found"}``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.helpers import http_reply


@dataclass
class Recorded:
    """One request the stub received."""

    method: str
    path: str
    headers: dict[str, str]
    json: Any


@dataclass
class _Failure:
    remaining: int
    status: int | None  # None: drop the connection without an answer
    path: str | None


class VllmStub:
    """``with VllmStub() as srv:`` — ``srv.url``, ``srv.requests``, ``srv.loaded``, ``srv.fail_next(n)``."""

    def __init__(self, *, base_model: str = "base-model", api_key: str | None = None, runtime_lora: bool = True):
        self.base_model = base_model
        self.api_key = api_key
        self.runtime_lora = runtime_lora
        self.loaded: dict[str, str] = {}
        self.requests: list[Recorded] = []
        self._failures: list[_Failure] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- control ---------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail_next(self, n: int, status: int | None = 500, *, path: str | None = None) -> None:
        """Answer the next ``n`` requests (to ``path`` only, if given) with ``status``; None drops the connection."""
        with self._lock:
            self._failures.append(_Failure(n, status, path))

    def calls(self, path: str) -> list[Recorded]:
        """The recorded requests to ``path``."""
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def start(self) -> VllmStub:
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="vllm-stub", daemon=True
        )
        self._thread.start()
        return self

    def down(self) -> None:
        """Stop listening (connections are refused); ``up()`` listens on the same port again."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def up(self) -> None:
        self.start()

    def __enter__(self) -> VllmStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.down()

    # -- vLLM behaviour --------------------------------------------------------------------------------------

    def _take_failure(self, path: str) -> tuple[bool, int | None]:
        with self._lock:
            for f in self._failures:
                if f.remaining > 0 and (f.path is None or f.path == path):
                    f.remaining -= 1
                    return True, f.status
        return False, None

    def _handle(self, method: str, path: str, headers: dict[str, str], body: Any) -> tuple[int, Any]:
        if (
            self.api_key is not None
            and path.startswith("/v1")
            and headers.get("authorization") != f"Bearer {self.api_key}"
        ):
            return 401, {"error": "Unauthorized"}
        if method == "GET" and path == "/v1/models":
            return 200, self._models()
        if method == "POST" and path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter") and self.runtime_lora:
            body = body if isinstance(body, dict) else {}
            name = body.get("lora_name")
            with self._lock:
                if path.endswith("/load_lora_adapter"):
                    return self._load(name, body.get("lora_path"))
                return self._unload(name)
        return 404, {"detail": "Not Found"}

    def _load(self, name: str | None, lora_path: str | None) -> tuple[int, Any]:
        if not name or not lora_path:
            return _error(400, "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput")
        if name in self.loaded:
            return _error(400, f"The lora adapter '{name}' has already been loaded.", "InvalidUserInput")
        if not os.path.isdir(lora_path):
            return _error(404, f"Loading lora {name} failed: No adapter found for {lora_path}", "NotFoundError")
        self.loaded[name] = lora_path
        return 200, f"Success: LoRA adapter '{name}' added successfully."

    def _unload(self, name: str | None) -> tuple[int, Any]:
        if not name:
            return _error(400, "either 'lora_name' and 'lora_int_id' needs to be provided.", "InvalidUserInput")
        if name not in self.loaded:
            return _error(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
        del self.loaded[name]
        return 200, f"Success: LoRA adapter '{name}' removed successfully."

    def _models(self) -> dict[str, Any]:
        now = int(time.time())

        def card(id_: str, root: str, parent: str | None) -> dict[str, Any]:
            return {"id": id_, "object": "model", "created": now, "owned_by": "vllm", "root": root, "parent": parent,
                    "max_model_len": 2048 if parent is None else None, "permission": []}  # fmt: skip

        with self._lock:
            loras = [card(n, p, self.base_model) for n, p in self.loaded.items()]
        return {"object": "list", "data": [card(self.base_model, f"/models/{self.base_model}", None), *loras]}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                headers = {k.lower(): v for k, v in self.headers.items()}
                path = self.path.split("?", 1)[0]
                with stub._lock:
                    stub.requests.append(Recorded(method, path, headers, body))
                failing, status = stub._take_failure(path)
                if failing and status is None:
                    self.close_connection = True
                    return  # no answer at all: the client sees the connection drop
                if failing:
                    code, out = _error(status or 500, "injected failure", "InternalServerError")
                else:
                    code, out = stub._handle(method, path, headers, body)
                http_reply(self, code, out)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

        return Handler


def _error(code: int, message: str, err_type: str) -> tuple[int, dict[str, Any]]:
    return code, {"error": {"message": message, "type": err_type, "param": None, "code": code}}
