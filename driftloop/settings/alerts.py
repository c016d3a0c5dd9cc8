"""Settings section for alert rules and notification channels."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from driftloop.settings.base import ConditionText, Section, unique_names
from driftloop.settings.conditions import parse_condition
from driftloop.settings.metrics import is_known_metric, metric_suggestion


class ChannelSettings(Section):
    """A notification channel: ``log``, ``webhook``, ``slack`` or ``grafana``."""

    name: str = Field(min_length=1)
    type: Literal["log", "webhook", "slack", "grafana"]
    url: str | None = None
    secret: str | None = Field(None, description="webhook: HMAC-SHA256 key for X-Driftloop-Signature")
    secret_env: str | None = Field(None, description="webhook: read the secret from this environment variable")
    token: str | None = Field(None, description="grafana: service account token")
    token_env: str | None = Field(None, description="grafana: read the token from this environment variable")
    dashboard_uid: str | None = None
    timeout_s: float = Field(5.0, gt=0)
    retries: int = Field(3, ge=0, le=10)
    backoff_s: float = Field(0.5, ge=0)
    headers: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _needs_url(self) -> ChannelSettings:
        if self.type != "log" and not self.url:
            raise ValueError(f"a {self.type} channel needs url")
        if self.url and not self.url.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        if self.secret and self.secret_env:
            raise ValueError("set secret or secret_env, not both")
        if self.token and self.token_env:
            raise ValueError("set token or token_env, not both")
        if (self.secret or self.secret_env) and self.type != "webhook":
            raise ValueError(f"secret applies to webhook channels only (this one is {self.type})")
        if (self.token or self.token_env or self.dashboard_uid) and self.type != "grafana":
            raise ValueError(f"token/dashboard_uid apply to grafana channels only (this one is {self.type})")
        return self


GroupBy = Literal["model", "workload", "segment"]
#: one alert (and one window history) per model and workload: a model serving three tasks is three streams.
#: Windows of records without a workload have workload "", so a deployment without workloads sees one per model.
_DEFAULT_GROUP_BY: tuple[GroupBy, ...] = ("model", "workload")


class RuleSettings(Section):
    """An alert rule: fire when ``condition`` held in ``windows`` of the last ``of`` windows."""

    name: str = Field(min_length=1, max_length=128)
    condition: ConditionText
    windows: int = Field(1, gt=0, description="N: windows in which the condition must hold")
    of: int = Field(1, gt=0, description="M: among the last M windows with data")
    severity: Literal["info", "warning", "critical"] = "warning"
    channels: list[str] = Field(default_factory=lambda: ["log"])
    cooldown_minutes: float = Field(30.0, ge=0)
    group_by: list[GroupBy] = Field(default_factory=lambda: list(_DEFAULT_GROUP_BY),
                                    description="model, and optionally workload and segment: one alert per group")
    description: str = ""

    @model_validator(mode="after")
    def _n_of_m(self) -> RuleSettings:
        if self.windows > self.of:
            raise ValueError(f"windows ({self.windows}) cannot exceed of ({self.of}): N of the last M windows")
        if "model" not in self.group_by:
            raise ValueError("group_by must include 'model'")
        return self


def _default_channels() -> list[ChannelSettings]:
    return [ChannelSettings(name="log", type="log")]


class AlertSettings(Section):
    """Alert rules and notification channels."""

    enabled: bool = True
    channels: Annotated[list[ChannelSettings], unique_names("channel")] = Field(default_factory=_default_channels)
    rules: list[RuleSettings] = Field(default_factory=list)


def cross_check_alerts(a: AlertSettings) -> list[str]:
    """Rules naming unknown metrics or channels, duplicate rule names; ``path: message`` lines."""
    problems: list[str] = []
    channels = {c.name for c in a.channels}
    seen: set[str] = set()
    for i, r in enumerate(a.rules):
        if r.name in seen:
            problems.append(f"alerts.rules.{i}.name: duplicate rule name {r.name!r}")
        seen.add(r.name)
        problems += condition_problems(f"alerts.rules.{i}.condition", r.condition)
        for j, ch in enumerate(r.channels):
            if ch not in channels:
                problems.append(
                    f"alerts.rules.{i}.channels.{j}: unknown channel {ch!r}; configured: {sorted(channels)}"
                )
    return problems


def condition_problems(path: str, condition: str) -> list[str]:
    """Unknown metrics anywhere in ``condition`` (comparisons, arithmetic, the counts a test reads).

    One ``path: message`` line per metric, with the closest known name. Alert rules and retrain trigger
    conditions share this check, as they share the grammar.
    """
    problems = []
    for m in sorted(parse_condition(condition).metrics()):
        if not is_known_metric(m):
            close = metric_suggestion(m)
            hint = f"; did you mean {close!r}?" if close else "; see docs/alerts.md for the metric names"
            problems.append(f"{path}: unknown metric {m!r}{hint}")
    return problems
