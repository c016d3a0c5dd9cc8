"""The model runtime: a base model plus LoRA adapters (transformers + peft), generation and hot adapter swaps.

Generation is serialised (one request at a time, no batching): peft's active adapter is global to the
model. An adapter swap reads the new weights before taking the model lock and injects them under it, so
requests in flight finish on the old adapter, later ones use the new one, and none fails.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from driftloop.serve.errors import ServeError

log = logging.getLogger("driftloop.serve")

BASE = "base"  # model name of the base model alone; also the logged model_version without adapter


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
