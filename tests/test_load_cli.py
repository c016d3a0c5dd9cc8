"""``driftloop load``: JSONL files into the database without a broker, through the ingestion decoder,
redaction and writer; idempotent; bad lines rejected with their line number, never stopping the load."""

from __future__ import annotations

import gzip
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
from sqlalchemy import create_engine, func, select
from typer.testing import CliRunner

from driftloop.ingest.cli import register
from driftloop.ingest.load import source_name
from driftloop.store.models import feedback, interactions, rejected_messages
from tests.alpaca import load, now_minus, to_log_records
from tests.helpers import write_config


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def _records(n: int) -> list[dict[str, Any]]:
    recs = to_log_records(load("gpt4_1106_preview")[:n], start=now_minus(2), step=timedelta(seconds=5))
    recs[0]["prompt"] = "mail me at jane.doe@example.com " + recs[0]["prompt"]
    return recs


def _write_gz(path: Path, recs: list[dict[str, Any]]) -> Path:
    """The records, with three bad lines and a blank one among them (lines 3, 5 and 8 are bad)."""
    lines = [json.dumps(r) for r in recs]
    lines[2:2] = ["{not json"]
    lines[4:4] = ["", json.dumps({"model_id": "m", "prompt": "no request id"})]
    lines[7:7] = ["[1, 2]"]
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def _counts(url: str) -> tuple[int, int, int]:
    eng = create_engine(url)
    try:
        with eng.connect() as c:
            return tuple(c.execute(select(func.count()).select_from(t)).scalar_one()  # type: ignore[return-value]
                         for t in (interactions, feedback, rejected_messages))  # fmt: skip
    finally:
        eng.dispose()


def _load_twice(cli: typer.Typer, url: str, tmp_path: Path) -> None:
    recs = _records(40)
    data = _write_gz(tmp_path / "traffic.jsonl.gz", recs)
    cfg = write_config(tmp_path / "c.yaml", "sqlite:////nonexistent/overridden.db")
    run = CliRunner()
    res = run.invoke(cli, ["load", str(data), "--config", str(cfg), "--db-url", url])
    assert res.exit_code == 1, res.output  # some lines were rejected
    assert "read 43 line(s): stored 40, duplicates 0, feedback 40, rejected 3" in res.output
    assert f"rejected {source_name(str(data))}:3: invalid_json" in res.output
    assert ":8: not_an_object" in res.output and ":6: missing_field" in res.output
    assert _counts(url) == (40, 40, 3)
    eng = create_engine(url)
    try:
        with eng.connect() as c:
            prompt = c.execute(select(interactions.c.prompt).where(
                interactions.c.request_id == recs[0]["request_id"])).scalar_one()  # fmt: skip
            rej = c.execute(select(rejected_messages.c.source_offset, rejected_messages.c.source_topic,
                                   rejected_messages.c.dlq_topic).order_by(rejected_messages.c.source_offset)).all()  # fmt: skip
    finally:
        eng.dispose()
    assert "jane.doe@example.com" not in prompt and "[email]" in prompt  # redacted as ingest redacts
    assert [r[0] for r in rej] == [3, 6, 8] and {r[1] for r in rej} == {source_name(str(data))}
    assert {r[2] for r in rej} == {None}  # no dead-letter topic for a file

    res = run.invoke(cli, ["load", str(data), "--config", str(cfg), "--db-url", url])
    assert "stored 0, duplicates 40, feedback 0, rejected 3" in res.output
    assert _counts(url) == (40, 40, 3)  # nothing twice, rejects included


def test_load_sqlite_is_idempotent_and_reports_bad_lines(cli: typer.Typer, sqlite_url: str, tmp_path: Path) -> None:
    _load_twice(cli, sqlite_url, tmp_path)


def test_load_postgres_is_idempotent_and_reports_bad_lines(cli: typer.Typer, pg_url: str, tmp_path: Path) -> None:
    _load_twice(cli, pg_url, tmp_path)


def test_load_stdin_and_several_files_exit_0_when_all_stored(cli: typer.Typer, sqlite_url: str,
                                                             tmp_path: Path) -> None:  # fmt: skip
    recs = _records(12)
    plain = tmp_path / "a.jsonl"
    plain.write_text("\n".join(json.dumps(r) for r in recs[:6]) + "\n")
    gz = tmp_path / "b.jsonl.gz"
    gz.write_bytes(gzip.compress("\n".join(json.dumps(r) for r in recs[6:9]).encode()))
    cfg = write_config(tmp_path / "c.yaml", sqlite_url)
    stdin = "\r\n".join(json.dumps(r) for r in recs[9:]).encode()
    res = CliRunner().invoke(cli, ["load", str(plain), str(gz), "-", "-c", str(cfg)], input=stdin)
    assert res.exit_code == 0, res.output
    assert "read 12 line(s): stored 12, duplicates 0, feedback 12, rejected 0" in res.output
    assert _counts(sqlite_url) == (12, 12, 0)
    # a gzip stream on stdin is recognised by its first bytes
    res = CliRunner().invoke(cli, ["load", "-", "-c", str(cfg)], input=gz.read_bytes())
    assert res.exit_code == 0 and "stored 0, duplicates 3" in res.output


def test_load_refuses_missing_files(cli: typer.Typer, tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["load", str(tmp_path / "nope.jsonl")])
    assert res.exit_code == 2 and "no such file" in res.output and "nope.jsonl" in res.output
