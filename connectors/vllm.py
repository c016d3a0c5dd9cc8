"""vLLM promotion target: hot-load the new LoRA adapter through vLLM's runtime adapter API.

The server must run with ``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``; ``lora_path`` is read
by the server, so the adapter directory must be visible on its machine (e.g. a shared filesystem target's
``versions/``). Clients select the served version by model name ``<family>-<version>``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import requests

from driftloop.connectors.abc import Promotion, PromotionError, PromotionTarget
from driftloop.retry import Transient, attempts_made, retrying
from driftloop.settings.connectors import TargetSettings

log = logging.getLogger("driftloop.connectors")

LOAD = "/v1/load_lora_adapter"
UNLOAD = "/v1/unload_lora_adapter"
MODELS = "/v1/models"


def server_message(r: requests.Response) -> str:
    """The error text of a vLLM answer: ``{"error": {"message"}}`` (new), ``{"message"}`` (old) or ``{"detail"}``."""
    try:
        body = r.json()
    except ValueError:
        return r.text.strip()[:500]
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        for key in ("message", "detail", "error"):
            if body.get(key):
                return str(body[key])
    return r.text.strip()[:500]


class VllmPromotionTarget(PromotionTarget):
    """Loads ``<family>-<version>`` into a running vLLM server, then unloads the previous adapter."""

    def __init__(self, cfg: TargetSettings, session: requests.Session | None = None) -> None:
        if not cfg.url:
            raise ValueError(f"target {cfg.name!r}: a vllm target needs url")
        self.name = cfg.name
        self.cfg = cfg
        self.url = cfg.url
        self.session = session or requests.Session()

    # -- public ----------------------------------------------------------------------------------------------

    def apply(self, p: Promotion) -> None:
        """Load the new adapter (already loaded counts as done), then unload the previous one if configured.

        A version without adapter (the base model alone) loads nothing. Failing to unload the previous adapter is
        a warning: the new adapter is serving.
        """
        new = p.lora_name() if p.adapter_path else None
        if new and p.adapter_path:
            self._load(new, p.adapter_path)
        prev = p.previous_lora_name()
        if self.cfg.unload_previous and prev and prev != new:
            try:
                self._unload(prev)
            except PromotionError as e:
                log.warning("%s: %s is serving but the previous adapter %s is still loaded: %s", self.name,
                            new or "the base model", prev, e)  # fmt: skip

    def revert(self, p: Promotion) -> None:
        """Load the previous adapter again (if it had one), then unload the new one (a failure there is a warning)."""
        prev = p.previous_lora_name()
        if prev and p.previous_adapter_path:
            self._load(prev, p.previous_adapter_path)
        new = p.lora_name() if p.adapter_path else None
        if new and new != prev:
            try:
                self._unload(new)
            except PromotionError as e:
                log.warning(
                    "%s: reverted to %s but %s is still loaded: %s", self.name, prev or "the base model", new, e
                )

    def check(self) -> None:
        """``GET /v1/models`` answers 200 (reachable, API key accepted)."""
        r = self._request("GET", MODELS, None)
        if r.status_code != 200:
            raise PromotionError(self._explain(MODELS, r), target=self.name)

    def loaded_adapters(self) -> dict[str, str]:
        """``lora name -> path`` of the adapters the server lists in ``/v1/models``."""
        r = self._request("GET", MODELS, None)
        if r.status_code != 200:
            raise PromotionError(self._explain(MODELS, r), target=self.name)
        return {m["id"]: m.get("root", "") for m in r.json().get("data", []) if m.get("parent")}

    def close(self) -> None:
        self.session.close()

    # -- internals -------------------------------------------------------------------------------------------

    def _load(self, lora_name: str, lora_path: str) -> None:
        r = self._request("POST", LOAD, {"lora_name": lora_name, "lora_path": lora_path})
        if r.status_code == 200:
            log.info("%s: loaded adapter %s from %s", self.name, lora_name, lora_path)
            return
        msg = server_message(r)
        if r.status_code == 400 and "already" in msg.lower() and "loaded" in msg.lower():
            log.info("%s: adapter %s was already loaded", self.name, lora_name)
            return
        raise PromotionError(self._explain(LOAD, r, lora_path=lora_path), target=self.name)

    def _unload(self, lora_name: str) -> None:
        r = self._request("POST", UNLOAD, {"lora_name": lora_name})
        if r.status_code == 200:
            log.info("%s: unloaded adapter %s", self.name, lora_name)
            return
        msg = server_message(r).lower()
        if r.status_code in (400, 404) and ("cannot be found" in msg or "not found" in msg) and msg != "not found":
            return  # not loaded: nothing to undo
        raise PromotionError(self._explain(UNLOAD, r), target=self.name)

    def _headers(self) -> dict[str, str]:
        key = self.cfg.api_key
        if self.cfg.api_key_env:
            key = os.environ.get(self.cfg.api_key_env)
            if not key:
                raise PromotionError(
                    f"{self.name}: environment variable {self.cfg.api_key_env} (vLLM API key) is not set",
                    target=self.name,
                )
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _request(self, method: str, endpoint: str, body: dict[str, Any] | None) -> requests.Response:
        """One call, retried (:mod:`driftloop.retry`, ``retries``/``backoff_s`` of the target) on connection
        errors, timeouts, 5xx and 429.

        This is the only retry level of a promotion: the registry switches its targets once and relies on these.
        Returns the final answer (2xx or a 4xx the caller interprets); raises PromotionError once retries are spent.
        """
        url = self.url + endpoint
        headers = self._headers()

        def call() -> requests.Response:
            r = self.session.request(method, url, json=body, headers=headers, timeout=self.cfg.timeout_s)
            if r.status_code >= 500 or r.status_code == 429:
                raise Transient(f"HTTP {r.status_code}: {server_message(r)[:300]}")
            return r

        policy = retrying(what=f"{self.name}: {method} {url}", attempts=self.cfg.retries + 1,
                          initial_s=self.cfg.backoff_s, max_s=max(30.0, self.cfg.backoff_s),
                          retry_on=(requests.RequestException, Transient), logger=log)  # fmt: skip
        try:
            return policy(call)
        except (requests.RequestException, Transient) as e:
            last = str(e) if isinstance(e, Transient) else f"{type(e).__name__}: {e}"
            raise PromotionError(
                f"{self.name}: {method} {url} failed after {attempts_made(policy)} attempt(s): {last}; "
                "check that the vLLM server is up and reachable, then promote again",
                target=self.name,
            ) from None

    def _explain(self, endpoint: str, r: requests.Response, lora_path: str | None = None) -> str:
        msg = server_message(r)
        head = f"{self.name}: vLLM at {self.url} answered {endpoint} with HTTP {r.status_code}: {msg}"
        if r.status_code in (401, 403):
            return f"{head} (set api_key or api_key_env of this target to the server's --api-key)"
        if r.status_code == 404 and msg.lower() == "not found":
            return (f"{head} (the adapter API is off: start vLLM with --enable-lora and "
                    "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)")  # fmt: skip
        if lora_path and ("no adapter found" in msg.lower() or "not exist" in msg.lower()):
            return f"{head} (lora_path {lora_path} is read by the vLLM server: it must exist on the server's machine)"
        return f"{head} (fix the request or the server, then promote again)"
