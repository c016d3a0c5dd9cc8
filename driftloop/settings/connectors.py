"""Settings of one promotion target (an entry of ``retrain.targets``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from driftloop.settings.base import Section

_ONLY = {
    "path": ("filesystem",),
    "url": ("vllm",),
    "api_key": ("vllm",),
    "api_key_env": ("vllm",),
    "topic": ("kafka",),
    "bootstrap_servers": ("kafka",),
}


class TargetSettings(Section):
    """A promotion target: ``filesystem`` (serving directory), ``vllm`` (adapter HTTP API) or ``kafka`` (event)."""

    name: str = Field(min_length=1)
    type: Literal["filesystem", "vllm", "kafka"]
    path: str | None = Field(None, description="filesystem: serving directory (versions/, current, current.json)")
    url: str | None = Field(None, description="vllm: base URL of the server, e.g. http://vllm:8000")
    api_key: str | None = Field(None, description="vllm: bearer token (the server's --api-key)")
    api_key_env: str | None = Field(None, description="vllm: read the bearer token from this environment variable")
    topic: str | None = Field(None, description="kafka: topic that receives ModelPromoted events")
    bootstrap_servers: list[str] | None = Field(None, description="kafka: default kafka.bootstrap_servers")
    unload_previous: bool = Field(True, description="vllm: unload the previous adapter after loading the new one")
    retries: int = Field(3, ge=0, le=10)
    backoff_s: float = Field(0.5, ge=0)
    timeout_s: float = Field(10.0, gt=0)

    @field_validator("bootstrap_servers", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [s.strip() for s in v.split(",") if s.strip()]
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https:// (got {v!r})")
        v = v.rstrip("/")
        return v[: -len("/v1")] if v.endswith("/v1") else v  # the OpenAI-style base URL is accepted too

    @model_validator(mode="after")
    def _per_type(self) -> TargetSettings:
        if self.type == "filesystem" and not self.path:
            raise ValueError("a filesystem target needs path (the serving directory)")
        if self.type == "vllm" and not self.url:
            raise ValueError("a vllm target needs url (the server's base URL, e.g. http://vllm:8000)")
        if self.type == "kafka" and not self.topic:
            raise ValueError("a kafka target needs topic")
        if self.bootstrap_servers is not None and not self.bootstrap_servers:
            raise ValueError("bootstrap_servers is empty: list host:port entries or leave it out")
        if self.api_key and self.api_key_env:
            raise ValueError("set api_key or api_key_env, not both")
        for fld, types in _ONLY.items():
            if getattr(self, fld) is not None and self.type not in types:
                raise ValueError(f"{fld} applies to {'/'.join(types)} targets only (this one is {self.type})")
        return self
