"""One typed settings tree for driftloop.

Sources, highest priority first: keyword arguments, ``DRIFTLOOP_*`` environment variables
(nested with ``__``, e.g. ``DRIFTLOOP_INGEST__BATCH_SIZE=2000``), the YAML file, defaults.
Every section forbids unknown keys so a typo is an error, not a silently ignored setting.

The bottom layer of driftloop (it imports nothing above it): this module holds the root ``Settings``, the
loaders and the start-up checks; the sections that are a subsystem's own live beside it (``monitor``,
``alerts``, ``retrain``, ``scheduler``, ``connectors``), with what their validation needs: the alert
condition grammar (``conditions``) and the catalogue of metric names (``metrics``). The code that runs a
subsystem takes these models as they are (e.g. the trainer ``TrainingSettings``, the gate ``GateSettings``).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from driftloop.settings.alerts import AlertSettings, cross_check_alerts
from driftloop.settings.base import Section, unique_names
from driftloop.settings.monitor import MonitorSettings
from driftloop.settings.quality import QualitySettings
from driftloop.settings.retrain import RetrainSettings, cross_check_retrain
from driftloop.settings.scheduler import SchedulerSettings

ENV_PREFIX = "DRIFTLOOP_"
CONFIG_ENV = "DRIFTLOOP_CONFIG"


class DatabaseSettings(Section):
    """Where interactions, results and the registry live."""

    url: str = "sqlite:///driftloop-data/driftloop.db"
    pool_size: int = Field(5, gt=0)
    echo: bool = False

    @field_validator("url")
    @classmethod
    def _known_dialect(cls, v: str) -> str:
        if not re.match(r"^(postgresql(\+psycopg)?|sqlite)://", v):
            raise ValueError("must start with postgresql+psycopg:// or sqlite:// (other databases are not supported)")
        if v.startswith("postgresql://"):
            v = "postgresql+psycopg://" + v[len("postgresql://") :]
        return v


_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")


TopicFormat = Literal["v1", "otlp", "otlp_logs", "openai", "litellm"]


class KafkaSettings(Section):
    """Broker, topics and kafka-python client options."""

    # NoDecode: env values are "a:1,b:2" (split below), not JSON (pydantic-settings' default for lists)
    bootstrap_servers: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["127.0.0.1:9092"], min_length=1)
    topics: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["driftloop.logs"], min_length=1)
    group_id: str = Field("driftloop-ingest", min_length=1)
    dlq_topic: str = Field("driftloop.dlq", min_length=1)
    create_topics: bool = True
    topic_partitions: int = Field(3, gt=0)
    replication_factor: int = Field(1, gt=0)
    # Passed through to KafkaConsumer; the defaults keep group joins fast (see README).
    consumer: dict[str, Any] = Field(
        default_factory=lambda: {
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 1000,
            "max_poll_interval_ms": 10000,
            "max_partition_fetch_bytes": 8 * 1024 * 1024,
            "fetch_max_bytes": 64 * 1024 * 1024,
        }
    )
    producer: dict[str, Any] = Field(default_factory=dict)
    # What the messages of an input topic are (issue 16, docs/ingest-formats.md); a topic not named here
    # carries v1 records. otlp: OTLP ExportTraceServiceRequest (protobuf or JSON, as the OTel Collector's
    # Kafka exporter writes it); otlp_logs: ExportLogsServiceRequest; openai: Chat Completions / Responses
    # request+response pairs; litellm: StandardLoggingPayload (an object, a JSON array or NDJSON).
    topic_formats: dict[str, TopicFormat] = Field(
        default_factory=dict, description="input topic -> format (v1, otlp, otlp_logs, openai, litellm); default v1"
    )

    @field_validator("bootstrap_servers", "topics", mode="before")
    @classmethod
    def _split_csv(cls, v: Any) -> Any:
        if isinstance(v, str):
            if v.lstrip().startswith("["):  # a JSON list, e.g. from an env variable
                try:
                    return json.loads(v)
                except ValueError:
                    raise ValueError('looks like a JSON list but is not valid JSON; use a,b or ["a", "b"]') from None
            return [s.strip() for s in v.split(",") if s.strip()]
        return v

    @field_validator("topics", "dlq_topic")
    @classmethod
    def _legal_topic_names(cls, v: Any) -> Any:
        # Kafka's rule; an illegal name would otherwise surface as a producer error on the first reject
        for name in [v] if isinstance(v, str) else v:
            if not _TOPIC_NAME.fullmatch(name) or name in (".", ".."):
                raise ValueError(f"{name!r} is not a legal Kafka topic name (1-249 of A-Z a-z 0-9 . _ -)")
        return v

    @field_validator("dlq_topic")
    @classmethod
    def _dlq_not_input(cls, v: str, info: ValidationInfo) -> str:
        # a field validator (topics is validated first), so the problem is reported as kafka.dlq_topic
        if v in (info.data.get("topics") or ()):
            raise ValueError("must not be one of the input topics (rejects would loop); pick another topic name")
        return v

    @model_validator(mode="after")
    def _formats_of_input_topics(self) -> KafkaSettings:
        unknown = sorted(set(self.topic_formats) - set(self.topics))
        if unknown:
            raise ValueError(f"topic_formats names {unknown}, which are not in kafka.topics {self.topics}")
        return self

    def format_of(self, topic: str) -> TopicFormat:
        """The format of an input topic's messages (v1 unless ``topic_formats`` says otherwise)."""
        return self.topic_formats.get(topic, "v1")


class WorkloadSettings(Section):
    """How a record's workload (the task it serves) is named, so one model serving three tasks is three streams.

    The first of ``keys`` found in the record's metadata wins (mapped formats put unknown attributes there,
    e.g. the OTel ``gen_ai.agent.name``; a v1 producer can set ``metadata.route``); else, with
    ``system_prompt_hash``, a short hash of the system message; else ``default`` (None: no workload).
    """

    keys: list[str] = Field(default_factory=list, description="metadata keys tried in order, e.g. [gen_ai.agent.name]")
    system_prompt_hash: bool = Field(False, description="fall back to sp-<hash> of the system message")
    default: str | None = Field(None, max_length=256, description="workload of records nothing names")


class IngestSettings(Section):
    """Batching and input limits of the ingestion pipeline."""

    # 7500 measured best on 2 cores with ~1 KB records (bench/ingest.py: 5000 and 2500 were 5-10 % slower)
    batch_size: int = Field(7500, gt=0, le=200_000)
    batch_max_ms: int = Field(500, gt=0)
    max_poll_records: int = Field(10_000, gt=0)
    max_message_bytes: int = Field(1024 * 1024, gt=0)
    max_field_chars: int = Field(200_000, gt=0)
    # Timestamps outside [min_timestamp, now + max_future_skew_s] are rejected as absurd.
    min_timestamp: str = "2000-01-01T00:00:00Z"
    max_future_skew_s: int = Field(86_400, ge=0)
    db_retry_initial_s: float = Field(0.2, gt=0)
    db_retry_max_s: float = Field(10.0, gt=0)
    # How many batches may be in flight between the consumer and the database writer.
    max_pending_batches: int = Field(2, gt=0)
    # Where decoding + database writes run: "process" (a child process, so that Kafka parsing and
    # decode/COPY use two cores), "thread" (inside the consumer's process), or "auto": process on
    # PostgreSQL, thread on SQLite (one writing process keeps the embedded database simple).
    pipeline: Literal["auto", "process", "thread"] = "auto"
    store_raw_reject_bytes: int = Field(65_536, ge=0)
    # Longest wait per batch for dead-letter copies; a copy not confirmed by then is recorded as failed
    # on its rejected_messages row (the row, not the DLQ, is what makes a reject safe to commit).
    dlq_timeout_s: float = Field(30.0, gt=0, le=600)
    workload: WorkloadSettings = Field(default_factory=WorkloadSettings)

    @field_validator("min_timestamp")
    @classmethod
    def _rfc3339(cls, v: str) -> str:
        try:
            ts = datetime.fromisoformat(v)
        except ValueError:
            raise ValueError("must be an RFC 3339 timestamp such as 2000-01-01T00:00:00Z") from None
        if ts.tzinfo is None:
            raise ValueError("needs a UTC offset (Z or +hh:mm), e.g. 2000-01-01T00:00:00Z")
        return v


class PiiRule(Section):
    """A custom redaction rule: a regular expression and its replacement."""

    name: str = Field(min_length=1)
    pattern: str = Field(min_length=1)
    replacement: str | None = None

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"invalid regular expression: {e}") from None
        return v


BuiltinPii = Literal["email", "phone", "credit_card", "ip_address"]


_ALL_PII: tuple[BuiltinPii, ...] = ("email", "phone", "credit_card", "ip_address")
DEFAULT_USER_ID_SALT = "driftloop-default-salt-change-me"


class PiiSettings(Section):
    """PII redaction applied to every stored text field."""

    enabled: bool = True
    builtin: list[BuiltinPii] = Field(default_factory=lambda: list(_ALL_PII))
    custom: list[PiiRule] = Field(default_factory=list)
    replacement: str = "[{name}]"
    # refused by `driftloop ingest`/`run`/check-config (see startup_problems); only the demo runs on it
    user_id_salt: str = DEFAULT_USER_ID_SALT


class ApiToken(Section):
    """A bearer token for the HTTP API: ``read`` may call GET endpoints, ``review`` also the review queue,
    ``admin`` everything."""

    name: str = Field(min_length=1, max_length=64)
    token: str | None = Field(None, min_length=16, description="the secret itself (prefer token_env)")
    token_env: str | None = Field(None, description="read the secret from this environment variable")
    # ingest: may only write to the ingest endpoints (the OTLP receiver, /v1/ingest/*); admin may too
    role: Literal["read", "review", "ingest", "admin"] = "read"

    @model_validator(mode="after")
    def _one_source(self) -> ApiToken:
        if bool(self.token) == bool(self.token_env):
            raise ValueError("set exactly one of token or token_env")
        return self

    def secret(self) -> str | None:
        """The token value (None when its environment variable is unset)."""
        return self.token if self.token else os.environ.get(self.token_env or "")


class ApiSettings(Section):
    """HTTP API, status page and Prometheus metrics endpoint."""

    host: str = "127.0.0.1"
    port: int = Field(8600, ge=0, lt=65536, description="0 picks a free port")
    enabled: bool = True
    tokens: Annotated[list[ApiToken], unique_names("token")] = Field(
        default_factory=list, description="bearer tokens; none: mutating endpoints refuse"
    )
    read_requires_token: bool = Field(False, description="GET endpoints need a token too (the status page as well)")
    public_reads: bool = Field(False, description="open reads on a non-loopback api.host, on purpose")
    public_url: str | None = Field(None, description="external base URL, used in links (e.g. in alerts)")
    receiver: ReceiverSettings = Field(default_factory=lambda: ReceiverSettings())


class ReceiverSettings(Section):
    """The HTTP front door (issue 16): OTLP/HTTP ``/v1/traces`` ``/v1/logs`` and ``POST /v1/ingest/{format}``.

    Every accepted request is produced to Kafka (and acknowledged by the broker) before the HTTP answer,
    so the receiver holds no state; the broker being down gives 503 with ``Retry-After``.
    """

    enabled: bool = True
    topic: str | None = Field(None, description="where mapped v1 records go (default: the first v1 topic of kafka.topics)")
    max_body_bytes: int = Field(8 * 1024 * 1024, gt=0, description="larger bodies (after gzip, too) get 413")
    max_records: int = Field(10_000, gt=0, description="records per request; more gets 413")
    produce_timeout_s: float = Field(10.0, gt=0, le=300, description="wait for the broker's acks before 503")
    retry_after_s: int = Field(5, ge=1, le=3600, description="Retry-After of a 503")


class GrafanaSettings(Section):
    """Where `driftloop dashboards push` sends the dashboards and the datasource."""

    url: str | None = Field(None, description="e.g. http://grafana:3000")
    token: str | None = Field(None, description="service account token (prefer token_env)")
    token_env: str | None = Field("GRAFANA_TOKEN", description="read the token from this environment variable")
    folder: str = "driftloop"
    datasource_uid: str = "driftloop-pg"
    datasource_name: str = "driftloop-postgres"
    # The datasource as Grafana should reach the database (its network view, not necessarily ours).
    datasource_url: str | None = Field(None, description="host:port of PostgreSQL for Grafana (default: from database.url)")
    datasource_user: str | None = None
    datasource_password_env: str | None = Field("DRIFTLOOP_PG_PASSWORD", description="env var holding its password")
    datasource_database: str | None = None
    timeout_s: float = Field(10.0, gt=0)

    @field_validator("url")
    @classmethod
    def _http(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/") if v else v


class ServeSettings(Section):
    """`driftloop serve`: the reference OpenAI-compatible server (base model + current LoRA adapter)."""

    host: str = "127.0.0.1"
    port: int = Field(8700, ge=0, lt=65536, description="0 picks a free port")
    base_model: str | None = Field(None, description="local Hugging Face model directory")
    model_id: str = Field("driftloop-model", min_length=1, description="served model name; logged as model_id")
    adapter: str | None = Field(None, description="LoRA adapter directory to load at start")
    serving_dir: str | None = Field(None, description="a filesystem promotion target's directory: load its `current`")
    log_topic: str | None = Field(None, description="Kafka topic for v1 log records (default: kafka.topics[0])")
    log_records: bool = True
    buffer_size: int = Field(10_000, gt=0, description="log records held while the broker is unreachable")
    max_new_tokens: int = Field(128, gt=0, le=8192)
    device: str | None = Field(None, description="cpu, cuda, ... (default: cuda when available)")
    # required when host is not loopback (the server refuses to start without one): it guards /v1/*, adapters too
    api_key: str | None = Field(None, description="bearer token for /v1/* (prefer api_key_env)")
    api_key_env: str | None = Field(None, description="read the bearer token from this environment variable")
    adapter_roots: list[str] | None = Field(
        None, description="directories /v1/load_lora_adapter may load from (default: retrain artifacts + serving_dir)"
    )
    max_body_bytes: int = Field(8 * 1024 * 1024, gt=0, description="larger request bodies are refused with 413")
    max_log_record_bytes: int = Field(
        1_000_000, ge=1024, description="larger log records are truncated (also capped by ingest.max_message_bytes)"
    )


class FeedbackSettings(Section):
    """What counts as positive feedback: one threshold for the quality metrics and the retrain data."""

    positive_threshold: float = Field(0.5, ge=0, le=1, description="a feedback score >= this is positive")


class Settings(BaseSettings):
    """The whole configuration of a driftloop daemon."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    pii: PiiSettings = Field(default_factory=PiiSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    grafana: GrafanaSettings = Field(default_factory=GrafanaSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    feedback: FeedbackSettings = Field(default_factory=FeedbackSettings)
    monitor: MonitorSettings = Field(default_factory=MonitorSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    retrain: RetrainSettings = Field(default_factory=RetrainSettings)
    quality: QualitySettings = Field(default_factory=QualitySettings)
    data_dir: str = "driftloop-data"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML values arrive as init kwargs (see load_settings); env must beat them,
        # so env goes first and init second.
        return (env_settings, init_settings)


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` lists ``path: message`` lines."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = problems
        self.source = source
        super().__init__(f"{source}: " + "; ".join(problems))


_MESSAGES = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "extra_forbidden": "unknown field (check the spelling; see README for the settings reference)",
    "missing": "required field is missing",
    "too_short": "must have at least {min_length} item(s)",
    "literal_error": "must be one of {expected}",
}


# Keys that moved: (where the old key sat, with "*" for any list index) -> where it lives now.
_MOVED: dict[tuple[str, ...], str] = {
    ("monitor", "feedback_positive_threshold"): "feedback.positive_threshold",
    ("retrain", "policies", "*", "data", "positive_feedback_min"): "feedback.positive_threshold",
}


# Keys that were removed -> why, and what to set instead.
_REMOVED: dict[tuple[str, ...], str] = {
    ("retrain", "promotion_retries"): "removed: a promotion is no longer retried as a whole on top of the targets' "
    "own retries (one retry level); set targets[].retries and backoff_s",
}


def _moved_to(loc: tuple[int | str, ...]) -> str | None:
    for old, new in _MOVED.items():
        if len(old) == len(loc) and all(o in ("*", str(p)) for o, p in zip(old, loc, strict=True)):
            return new
    return None


def format_validation_error(err: ValidationError) -> list[str]:
    """Turn a pydantic error into ``dotted.path: message`` lines."""
    out: list[str] = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<root>"
        moved = _moved_to(tuple(e["loc"])) if e["type"] == "extra_forbidden" else None
        if moved:
            out.append(f"{path}: this setting moved: set {moved} instead (one threshold for monitoring and retraining)")
            continue
        removed = _REMOVED.get(tuple(str(p) for p in e["loc"])) if e["type"] == "extra_forbidden" else None
        if removed:
            out.append(f"{path}: this setting was {removed}")
            continue
        tmpl = _MESSAGES.get(e["type"])
        ctx = e.get("ctx") or {}
        if tmpl:
            try:
                msg = tmpl.format(**ctx)
            except (KeyError, IndexError):
                msg = e["msg"]
        else:
            msg = e["msg"]
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
        if e["type"] not in ("extra_forbidden", "missing") and "input" in e:
            shown = repr(e["input"])
            if len(shown) <= 60:
                msg += f" (got {shown})"
        out.append(f"{path}: {msg}")
    return out


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML config file into a dict, raising ConfigError with a clear message."""
    p = Path(path)
    if not p.exists():
        raise ConfigError([f"file not found: {p}"], str(p))
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError([f"<yaml>: {where}{problem}"], str(p)) from None
    except UnicodeDecodeError as e:
        raise ConfigError([f"<file>: not UTF-8 text ({e.reason} at byte {e.start})"], str(p)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"<root>: must be a mapping of sections, got {type(data).__name__}"], str(p))
    return data


def load_settings(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Load settings from ``path`` (or ``$DRIFTLOOP_CONFIG``), env and overrides.

    Raises ConfigError listing every problem with its dotted path.
    """
    path = path or os.environ.get(CONFIG_ENV)
    data: dict[str, Any] = read_yaml(path) if path else {}
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            data[k] = {**data[k], **v}
        else:
            data[k] = v
    try:
        settings = Settings(**data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e), str(path or "settings")) from None
    except SettingsError as e:  # a DRIFTLOOP_* variable that cannot be parsed (e.g. bad JSON for a dict)
        cause = f" ({e.__cause__})" if e.__cause__ else ""
        raise ConfigError([f"<env>: {e}{cause}"], str(path or "settings")) from None
    problems = cross_check(settings)
    if problems:
        raise ConfigError(problems, str(path or "settings"))
    return settings


def cross_check(settings: Settings) -> list[str]:
    """Checks that span sections (e.g. alert rules naming channels that exist)."""
    judges = [j.name for j in settings.quality.judges]
    return cross_check_alerts(settings.alerts) + cross_check_retrain(settings.retrain, settings.alerts, judges)


# -- start-up checks ----------------------------------------------------------------------------
# Not part of validation, so tests and the demo can build Settings freely: `driftloop run`, `ingest`,
# `api serve` and `check-config` call startup_problems and refuse to start (ApiServer checks its bind
# address too). The demo (driftloop.demo, driftloop.demo_loop) builds its settings in-process and never
# calls it: that is its exemption, and it needs none of these secrets (throwaway SQLite, loopback only).

GENERATE_SECRET = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'
MIN_SECRET_CHARS = 16
# Words of example values (.env.example's change-me-..., docs' placeholders), looked for in the value's
# lower-cased letters and digits; long enough that a generated value holds one by chance about 1 in 30000.
_PLACEHOLDER_WORDS = ("changeme", "replace", "placeholder", "example", "secret", "password", "xxxx", "dummy")


def placeholder_reason(value: str) -> str | None:
    """Why ``value`` looks copied from an example rather than generated (None: it does not)."""
    folded = re.sub(r"[^a-z0-9]", "", value.lower())
    for word in _PLACEHOLDER_WORDS:
        if word in folded:
            return f"contains {word!r}"
    if len(set(folded)) < 5:
        return "has fewer than 5 distinct letters and digits"
    return None


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # another host name ("", 0.0.0.0 and :: are addresses): it may be any interface
        return False


def _weak_secret(value: str) -> str | None:
    if len(value) < MIN_SECRET_CHARS:
        return f"is shorter than {MIN_SECRET_CHARS} characters"
    why = placeholder_reason(value)
    return f"looks like a placeholder ({why}; copied from .env.example?)" if why else None


def salt_problems(pii: PiiSettings) -> list[str]:
    """The user-id salt must be this deployment's own secret: whoever knows it can test guesses of user ids."""
    todo = (f"set DRIFTLOOP_PII__USER_ID_SALT (or pii.user_id_salt) to a random value, e.g. from `{GENERATE_SECRET}`,"
            " and keep it: a new salt changes every stored user hash")  # fmt: skip
    if pii.user_id_salt == DEFAULT_USER_ID_SALT:
        return [f"pii.user_id_salt: is the built-in default, the same in every installation; {todo}"]
    weak = _weak_secret(pii.user_id_salt)
    return [f"pii.user_id_salt: {weak}; {todo}"] if weak else []


def api_problems(api: ApiSettings, host: str | None = None) -> list[str]:
    """Token values that are placeholders or short, and open reads on an address other machines can reach."""
    host = api.host if host is None else host
    problems: list[str] = []
    for i, t in enumerate(api.tokens):
        value = t.secret()
        if value is None:  # token_env unset: the token is just unusable (`api serve` warns)
            continue
        weak = _weak_secret(value)
        if weak:
            where = f"the value of ${t.token_env}" if t.token_env else "its token"
            problems.append(f"api.tokens[{i}] ({t.name}): {where} {weak}; set it to a random value, e.g. from "
                            f"`{GENERATE_SECRET}`")  # fmt: skip
    if not is_loopback(host) and not api.read_requires_token and not api.public_reads:
        problems.append(
            f"api.host: {host!r} is not a loopback address and reads are open (api.read_requires_token: false), so "
            "anyone who reaches it reads alerts, models and reports; set api.read_requires_token: true with a read "
            "token in api.tokens (token_env), or api.host: 127.0.0.1 (behind a proxy), or api.public_reads: true "
            "to serve open reads on purpose"
        )
    return problems


def startup_problems(settings: Settings, *, ingest: bool, api_host: str | None) -> list[str]:
    """What a command must refuse to start with: ``ingest`` when it ingests (the salt hashes user ids),
    ``api_host`` the address it serves the API on (None: it serves none)."""
    problems = salt_problems(settings.pii) if ingest else []
    if api_host is not None:
        problems.extend(api_problems(settings.api, api_host))
    return problems
