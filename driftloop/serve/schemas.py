"""OpenAI request bodies (completions, chat, feedback) and the chat-to-prompt rule."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from driftloop.serve.errors import ServeError
from driftloop.serve.runtime import GenParams


class Req(BaseModel):
    """What completions and chat requests share: the OpenAI sampling parameters, user and metadata."""

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


class CompletionRequest(Req):
    prompt: str | list[str]


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(Req):
    messages: Annotated[list[ChatMessageIn], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: Annotated[str, Field(min_length=1, max_length=256)]
    score: float | None = None
    correction: str | None = None
    comment: str | None = None
    feedback_id: str | None = None


def message_text(content: str | list[dict[str, Any]] | None) -> str:
    """The text of a message's content (a string, or the ``text`` parts of a list of parts)."""
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
    system = "\n".join(message_text(m.content) for m in messages if m.role in ("system", "developer") and m.content)
    last = message_text(users[-1].content)
    return f"{system}\n\n{last}" if system else last
