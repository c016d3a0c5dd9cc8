"""Settings: YAML + DRIFTLOOP_* environment, and `driftloop check-config` error reporting."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from driftloop.cli import app
from driftloop.settings import ConfigError, Settings, load_settings, read_yaml


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


def test_bad_env_value_reported_with_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLOOP_INGEST__BATCH_SIZE", "0")
    with pytest.raises(ConfigError) as ei:
        load_settings(None)
    assert any(p.startswith("ingest.batch_size: must be > 0") for p in ei.value.problems)


def test_env_list_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLOOP_KAFKA__TOPICS", '["x", "y"]')
    assert load_settings(None).kafka.topics == ["x", "y"]
    monkeypatch.setenv("DRIFTLOOP_KAFKA__TOPICS", '["x", ')
    with pytest.raises(ConfigError) as ei:
        load_settings(None)
    assert any(p.startswith("kafka.topics: looks like a JSON list") for p in ei.value.problems)


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
    ],
)
def test_check_config_single_problems(tmp_path: Path, text: str, needle: str) -> None:
    code, out = check(write(tmp_path, text))
    assert code == 2
    assert needle in out


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
