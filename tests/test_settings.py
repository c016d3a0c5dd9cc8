"""Settings: YAML + DRIFTLOOP_* environment, and `driftloop check-config` error reporting."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from driftloop.cli import app
from driftloop.settings import (
    ConfigError,
    Settings,
    api_problems,
    is_loopback,
    load_settings,
    placeholder_reason,
    read_yaml,
    startup_problems,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No DRIFTLOOP_* variable of the calling shell leaks into these tests."""
    import os

    for k in list(os.environ):
        if k.startswith("DRIFTLOOP_"):
            monkeypatch.delenv(k)
    yield


def write(tmp_path: Path, text: str, name: str = "driftloop.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


GOOD = """\
database:
  url: postgresql://driftloop@db:5432/driftloop
kafka:
  bootstrap_servers: [k1:9092]
  topics: [logs-a, logs-b]
  dlq_topic: logs-dlq
ingest:
  batch_size: 100
pii:
  user_id_salt: 9Kc2-rVw7_QxZp4LmT8n
  custom:
    - {name: ticket, pattern: 'T-\\d+'}
"""


def check(path: Path | str) -> tuple[int, str]:
    res = CliRunner().invoke(app, ["check-config", str(path)])
    return res.exit_code, res.output


# --- loading -----------------------------------------------------------------------------------


def test_defaults_without_file() -> None:
    s = load_settings(None)
    assert s.ingest.batch_size == 7500
    assert s.kafka.topics == ["driftloop.logs"]
    assert s.database.url.startswith("sqlite:///")


def test_yaml_values(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, GOOD))
    assert s.database.url == "postgresql+psycopg://driftloop@db:5432/driftloop"  # normalized driver
    assert s.kafka.topics == ["logs-a", "logs-b"]
    assert s.ingest.batch_size == 100
    assert s.pii.custom[0].name == "ticket"


def test_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLOOP_INGEST__BATCH_SIZE", "7")
    monkeypatch.setenv("DRIFTLOOP_KAFKA__BOOTSTRAP_SERVERS", "a:1,b:2")
    s = load_settings(None)
    assert s.ingest.batch_size == 7
    assert s.kafka.bootstrap_servers == ["a:1", "b:2"]


def test_env_beats_yaml_and_keeps_other_yaml_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, GOOD)
    monkeypatch.setenv("DRIFTLOOP_INGEST__BATCH_SIZE", "7")
    monkeypatch.setenv("DRIFTLOOP_KAFKA__BOOTSTRAP_SERVERS", "a:1,b:2")
    s = load_settings(path)
    assert s.ingest.batch_size == 7
    assert s.kafka.bootstrap_servers == ["a:1", "b:2"]
    # the rest of the YAML sections still apply
    assert s.kafka.topics == ["logs-a", "logs-b"]
    assert s.kafka.dlq_topic == "logs-dlq"
    assert s.database.url.endswith("@db:5432/driftloop")


def test_config_path_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLOOP_CONFIG", str(write(tmp_path, GOOD)))
    assert load_settings().ingest.batch_size == 100


@pytest.mark.parametrize(
    ("var", "value", "problem"),
    [
        ("DRIFTLOOP_INGEST__BATCH_SIZE", "0", "ingest.batch_size: must be > 0"),
        ("DRIFTLOOP_KAFKA__TOPICS", '["x", ', "kafka.topics: looks like a JSON list"),
    ],
)
def test_bad_env_value_reported_with_path(monkeypatch: pytest.MonkeyPatch, var: str, value: str, problem: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as ei:
        load_settings(None)
    assert any(p.startswith(problem) for p in ei.value.problems), ei.value.problems


def test_env_list_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLOOP_KAFKA__TOPICS", '["x", "y"]')
    assert load_settings(None).kafka.topics == ["x", "y"]


def test_unparsable_env_dict_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLOOP_KAFKA__CONSUMER", "{not json")
    with pytest.raises(ConfigError) as ei:
        load_settings(None)
    assert ei.value.problems[0].startswith("<env>:")
    assert "kafka" in ei.value.problems[0]


@pytest.mark.parametrize(("value", "needle"), [("yesterday", "RFC 3339"), ("2000-01-01T00:00:00", "UTC offset")])
def test_min_timestamp_validated(value: str, needle: str) -> None:
    with pytest.raises(ConfigError) as ei:
        load_settings(None, ingest={"min_timestamp": value})
    assert ei.value.problems[0].startswith("ingest.min_timestamp: ")
    assert needle in ei.value.problems[0]


def test_overrides_merge_into_yaml_section(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, GOOD), kafka={"dlq_topic": "other-dlq"})
    assert s.kafka.dlq_topic == "other-dlq"
    assert s.kafka.topics == ["logs-a", "logs-b"]


def test_empty_yaml_is_defaults(tmp_path: Path) -> None:
    assert read_yaml(write(tmp_path, "# nothing\n")) == {}
    assert isinstance(load_settings(write(tmp_path, "")), Settings)


# --- check-config ------------------------------------------------------------------------------


def test_check_config_good_file(tmp_path: Path) -> None:
    code, out = check(write(tmp_path, GOOD))
    assert code == 0, out
    assert "OK" in out
    assert "2 input topic(s)" in out and "logs-dlq" in out


BAD = """\
database:
  url: mysql://x@y/z
kafka:
  topics: [logs-a, logs-b]
  dlq_topic: logs-b
  bootstrap_server: typo:9092
ingest:
  batch_size: 0
  max_message_bytes: -1
  batchsize: 3
pii:
  builtin: [email, ssn]
  custom:
    - {name: broken, pattern: '(unclosed'}
api:
  port: 70000
colour: blue
"""


def test_check_config_lists_every_problem(tmp_path: Path) -> None:
    code, out = check(write(tmp_path, BAD))
    assert code == 2
    expected = [
        r"database\.url: must start with postgresql",
        r"kafka\.bootstrap_server: unknown field",
        r"kafka\.dlq_topic: must not be one of the input topics",
        r"ingest\.batch_size: must be > 0",
        r"ingest\.max_message_bytes: must be > 0",
        r"ingest\.batchsize: unknown field",
        r"pii\.builtin\.1: must be one of",
        r"pii\.custom\.0\.pattern: invalid regular expression",
        r"api\.port: must be < 65536",
        r"colour: unknown field",
    ]
    for pat in expected:
        assert re.search(r"^\s+" + pat, out, re.M), f"{pat!r} not in:\n{out}"
    assert "invalid configuration in" in out and "driftloop.yaml" in out


_POLICY = "{name: p, model_id: m, base_model: /b, trigger: {condition: drift.score > 0.5}, data: %s}"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("ingest:\n  batch_size: 0\n", "ingest.batch_size: must be > 0 (got 0)"),
        ("kafka:\n  topics: [a, b]\n  dlq_topic: a\n", "kafka.dlq_topic: must not be one of the input topics"),
        ("kafka:\n  topics: []\n", "kafka.topics: must have at least 1 item(s)"),
        ("pii:\n  custom:\n    - {name: x, pattern: '[a-'}\n", "pii.custom.0.pattern: invalid regular expression"),
        ("pii:\n  custom:\n    - {pattern: 'x'}\n", "pii.custom.0.name: required field is missing"),
        ("ingest:\n  no_such_knob: 1\n", "ingest.no_such_knob: unknown field"),
        ("ingest: 5\n", "ingest:"),
        (f"api:\n  tokens: [{{name: t, token: {'a' * 24}}}, {{name: t, token: {'b' * 24}}}]\n",
         "api.tokens: duplicate token name(s): ['t']"),
        ("alerts:\n  channels: [{name: c, type: log}, {name: c, type: log}]\n",
         "alerts.channels: duplicate channel name(s): ['c']"),
        ("alerts:\n  rules: [{name: r, condition: 'drift.score >'}]\n", "alerts.rules.0.condition: "),
        ("retrain:\n  policies: [" + _POLICY % "{}" + ", " + _POLICY % "{}" + "]\n",
         "retrain.policies: duplicate policy name(s): ['p']"),
        ("retrain:\n  policies: [" + (_POLICY % "{}").replace("drift.score > 0.5", "drift.score >> 1") + "]\n",
         "retrain.policies.0.trigger.condition: "),
    ],
)
def test_check_config_single_problems(tmp_path: Path, text: str, needle: str) -> None:
    code, out = check(write(tmp_path, text))
    assert code == 2
    assert needle in out


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("monitor:\n  feedback_positive_threshold: 0.7\n", "monitor.feedback_positive_threshold"),
        ("retrain:\n  policies:\n    - " + _POLICY % "{positive_feedback_min: 0.7}\n",
         "retrain.policies.0.data.positive_feedback_min"),
    ],
)  # fmt: skip
def test_old_positive_feedback_keys_name_the_one_setting(tmp_path: Path, text: str, where: str) -> None:
    code, out = check(write(tmp_path, text))
    assert code == 2
    assert f"{where}: this setting moved: set feedback.positive_threshold instead" in out


@pytest.mark.parametrize(("value", "ok"), [(0.0, True), (1.0, True), (0.7, True), (-0.1, False), (1.5, False)])
def test_feedback_positive_threshold_is_one_bounded_setting(value: float, ok: bool) -> None:
    if ok:
        assert load_settings(None, feedback={"positive_threshold": value}).feedback.positive_threshold == value
    else:
        with pytest.raises(ConfigError, match=r"feedback\.positive_threshold: must be"):
            load_settings(None, feedback={"positive_threshold": value})


def test_check_config_invalid_yaml_line_number(tmp_path: Path) -> None:
    code, out = check(write(tmp_path, "database:\n  url: x\nkafka:\n  topics: [a, b\n  dlq_topic: c\n"))
    assert code == 2
    m = re.search(r"<yaml>: line (\d+), column \d+", out)
    assert m, out
    assert int(m.group(1)) >= 4


def test_check_config_tab_indent_yaml(tmp_path: Path) -> None:
    code, out = check(write(tmp_path, "ingest:\n\tbatch_size: 3\n"))
    assert code == 2
    assert "<yaml>: line 2" in out


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "list"), ("just text\n", "str"), ("42\n", "int")])
def test_check_config_non_mapping_root(tmp_path: Path, text: str, kind: str) -> None:
    code, out = check(write(tmp_path, text))
    assert code == 2
    assert f"<root>: must be a mapping of sections, got {kind}" in out


def test_check_config_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    code, out = check(missing)
    assert code == 2
    assert f"file not found: {missing}" in out


def test_check_config_not_utf8(tmp_path: Path) -> None:
    p = tmp_path / "latin1.yaml"
    p.write_bytes("database:\n  url: sqlite:///caf\xe9.db\n".encode("latin-1"))
    code, out = check(p)
    assert code == 2
    assert "<file>: not UTF-8 text" in out


def test_check_config_ignores_env_config_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLOOP_CONFIG", str(write(tmp_path, BAD, "bad.yaml")))
    code, out = check(write(tmp_path, GOOD))
    assert code == 0, out


def test_check_config_help() -> None:
    res = CliRunner().invoke(app, ["check-config", "--help"])
    assert res.exit_code == 0
    assert "Validate a settings file" in res.output


# --- start-up checks: default salt, placeholder tokens, open reads on a public address -------------------
ROOT = Path(__file__).resolve().parents[1]
SALT = "9Kc2-rVw7_QxZp4LmT8n"  # the one in GOOD
TOKEN = "Hq3-vN8_zR2wLk5tY7uB0cXe"


def env_example_values() -> dict[str, str]:
    """The non-empty values of .env.example (whatever they are named: another edit may change them)."""
    out = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        k, eq, v = line.partition("=")
        if eq and not k.lstrip().startswith("#") and v.strip():
            out[k.strip()] = v.strip()
    return out


def test_every_env_example_value_is_a_placeholder() -> None:
    values = env_example_values()
    assert {"DRIFTLOOP_USER_ID_SALT", "DRIFTLOOP_ADMIN_TOKEN", "DRIFTLOOP_READ_TOKEN"} <= set(values)
    for k, v in values.items():
        assert placeholder_reason(v), f"{k}={v} is not recognized as a placeholder"


@pytest.mark.parametrize("value", ["change-me", "Change_Me-0123456789abcdef", "replace-with-a-random-value-123",
                                   "<your-secret-here-0123456789>", "example-token-0123456789",
                                   "placeholder-0123456789", "token-xxxx-xxxx-xxxx", "x" * 40, "0" * 16,
                                   "abababababababababab", "password1234567890", "driftloop-default-salt-change-me"])  # fmt: skip
def test_placeholder_values_are_recognized(value: str) -> None:
    assert placeholder_reason(value)


def test_generated_values_are_not_placeholders() -> None:
    import random
    import string

    rng = random.Random(12)  # fixed: a generated value holds a placeholder word by chance ~1 in 30000
    alphabet = string.ascii_letters + string.digits + "-_"
    for _ in range(1000):
        v = "".join(rng.choice(alphabet) for _ in range(43))  # what secrets.token_urlsafe(32) gives
        assert placeholder_reason(v) is None, v
    assert placeholder_reason(SALT) is None and placeholder_reason(TOKEN) is None


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("127.3.2.1", True), ("::1", True),
                                                ("[::1]", True), ("localhost", True), ("LOCALHOST.", True),
                                                ("0.0.0.0", False), ("::", False), ("", False), ("10.0.0.5", False),
                                                ("192.168.1.10", False), ("api.example.com", False)])  # fmt: skip
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_default_salt_refused_for_ingestion_with_what_to_set() -> None:
    s = load_settings(None)
    [p] = startup_problems(s, ingest=True, api_host=None)
    assert p.startswith("pii.user_id_salt: is the built-in default")
    assert "DRIFTLOOP_PII__USER_ID_SALT" in p and "secrets.token_urlsafe(32)" in p
    assert startup_problems(s, ingest=False, api_host="127.0.0.1") == []  # the salt matters to ingestion only


@pytest.mark.parametrize(("salt", "needle"), [("change-me-to-a-long-random-string", "placeholder (contains 'changeme'"),
                                              ("short-salt", "shorter than 16 characters")])  # fmt: skip
def test_weak_salt_refused(salt: str, needle: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLOOP_PII__USER_ID_SALT", salt)
    [p] = startup_problems(load_settings(None), ingest=True, api_host=None)
    assert p.startswith("pii.user_id_salt: ") and needle in p and "DRIFTLOOP_PII__USER_ID_SALT" in p


def test_own_salt_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    assert startup_problems(load_settings(None, pii={"user_id_salt": SALT}), ingest=True, api_host=None) == []
    monkeypatch.setenv("DRIFTLOOP_PII__USER_ID_SALT", TOKEN)
    assert startup_problems(load_settings(None), ingest=True, api_host=None) == []


def test_placeholder_and_short_tokens_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DL_TEST_ADMIN", "change-me-admin-token-0123456789")
    monkeypatch.setenv("DL_TEST_SHORT", "abc123")
    s = load_settings(None, api={"tokens": [
        {"name": "admin", "token_env": "DL_TEST_ADMIN", "role": "admin"},
        {"name": "inline", "token": "replace-me-with-a-read-token"},
        {"name": "short", "token_env": "DL_TEST_SHORT"},
        {"name": "unset", "token_env": "DL_TEST_UNSET"},  # unusable, not unsafe: `api serve` warns
        {"name": "good", "token": TOKEN}]})  # fmt: skip
    problems = api_problems(s.api)
    assert len(problems) == 3, problems
    assert problems[0].startswith("api.tokens[0] (admin): the value of $DL_TEST_ADMIN looks like a placeholder")
    assert problems[1].startswith("api.tokens[1] (inline): its token looks like a placeholder (contains 'replace'")
    assert problems[2].startswith("api.tokens[2] (short): the value of $DL_TEST_SHORT is shorter than 16")
    assert all("secrets.token_urlsafe(32)" in p for p in problems)
    assert "change-me-admin" not in " ".join(problems)  # a secret is never echoed


def test_open_reads_on_a_public_address_refused_with_what_to_set() -> None:
    s = load_settings(None, api={"host": "0.0.0.0"})
    [p] = api_problems(s.api)
    assert p.startswith("api.host: '0.0.0.0' is not a loopback address and reads are open")
    for setting in ("api.read_requires_token: true", "api.host: 127.0.0.1", "api.public_reads: true"):
        assert setting in p
    assert api_problems(s.api, "10.1.2.3") and api_problems(load_settings(None).api, "0.0.0.0")  # --host too


@pytest.mark.parametrize("api", [{"host": "0.0.0.0", "public_reads": True},
                                 {"host": "0.0.0.0", "read_requires_token": True,
                                  "tokens": [{"name": "r", "token": TOKEN}]},
                                 {"host": "127.0.0.1"}, {"host": "::1"}, {"host": "localhost"}])  # fmt: skip
def test_safe_api_configurations_accepted(api: dict[str, object]) -> None:
    assert api_problems(load_settings(None, api=api).api) == []


def test_check_config_refuses_the_default_salt(tmp_path: Path) -> None:
    code, out = check(write(tmp_path, GOOD.replace(f"  user_id_salt: {SALT}\n", "")))
    assert code == 2
    assert "refusing to start with the configuration in" in out
    assert "pii.user_id_salt: is the built-in default" in out and "DRIFTLOOP_PII__USER_ID_SALT" in out


def test_check_config_refuses_open_reads_on_a_public_address(tmp_path: Path) -> None:
    code, out = check(write(tmp_path, GOOD + "api:\n  host: 0.0.0.0\n"))
    assert code == 2 and "api.public_reads: true" in out
    code, out = check(write(tmp_path, GOOD + "api:\n  host: 0.0.0.0\n  public_reads: true\n"))
    assert code == 0, out
    code, out = check(write(tmp_path, GOOD + "api:\n  host: 0.0.0.0\n  enabled: false\n"))  # not served
    assert code == 0, out


def test_check_config_refuses_env_example_placeholders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy/driftloop.yaml with the values docker-compose.yml passes from .env: the copied example refused,
    generated ones accepted."""
    example = env_example_values()
    monkeypatch.setenv("DRIFTLOOP_PII__USER_ID_SALT", example["DRIFTLOOP_USER_ID_SALT"])
    monkeypatch.setenv("DRIFTLOOP_ADMIN_TOKEN", example["DRIFTLOOP_ADMIN_TOKEN"])
    monkeypatch.setenv("DRIFTLOOP_READ_TOKEN", example["DRIFTLOOP_READ_TOKEN"])
    code, out = check(ROOT / "deploy/driftloop.yaml")
    assert code == 2
    assert "pii.user_id_salt: looks like a placeholder" in out
    assert "api.tokens[0] (admin): the value of $DRIFTLOOP_ADMIN_TOKEN looks like a placeholder" in out
    assert "api.tokens[1] (grafana-links): the value of $DRIFTLOOP_READ_TOKEN looks like a placeholder" in out
    assert "api.host" not in out  # the deploy file binds 0.0.0.0 with read_requires_token
    monkeypatch.setenv("DRIFTLOOP_PII__USER_ID_SALT", SALT)
    monkeypatch.setenv("DRIFTLOOP_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("DRIFTLOOP_READ_TOKEN", TOKEN[::-1])
    code, out = check(ROOT / "deploy/driftloop.yaml")
    assert code == 0, out


@pytest.mark.parametrize("field", ["topics", "dlq_topic"])
@pytest.mark.parametrize("name", ["bad topic!", "", "..", "x" * 250, "logs/2026"])
def test_illegal_kafka_topic_names_are_refused_with_the_rule(field: str, name: str) -> None:
    value: Any = [name] if field == "topics" else name
    with pytest.raises(ConfigError) as e:
        load_settings(None, kafka={field: value})
    assert f"kafka.{field}" in str(e.value)
    if name:
        assert "legal Kafka topic name" in str(e.value)
