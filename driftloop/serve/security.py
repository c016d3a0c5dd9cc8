"""What the server exposes and what it may load: the API key, the exposure check, the adapter roots."""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

from driftloop.serve.errors import ServeError

if TYPE_CHECKING:
    from driftloop.settings import Settings


def configured_api_key(settings: Settings) -> str | None:
    """The key guarding ``/v1/*``: from ``$serve.api_key_env`` (refused when unset), else ``serve.api_key``."""
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
