"""Start-up refusals of the long-running commands (`driftloop ingest`, `run`, `api serve`) and of ApiServer:
the default user-id salt, placeholder tokens, open reads on a public address; and the demo, exempt on purpose."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from driftloop.api.server import ApiServer
from driftloop.cli import app
from driftloop.clikit import prepare
from driftloop.settings import load_settings
from driftloop.store.db import create_engine_from_url

SALT = "9Kc2-rVw7_QxZp4LmT8n"
TOKEN = "Hq3-vN8_zR2wLk5tY7uB0cXe"


@pytest.fixture(autouse=True)
def no_test_salt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the salt tests/conftest.py sets for every other test: the built-in default applies."""
    monkeypatch.delenv("DRIFTLOOP_PII__USER_ID_SALT", raising=False)


def config(tmp_path: Path, **sections: Any) -> Path:
    """A settings file on an SQLite database that does not exist yet (a refusal must come before migrating)."""
    p = tmp_path / "driftloop.yaml"
    p.write_text(yaml.safe_dump({"database": {"url": f"sqlite:///{tmp_path}/db/driftloop.db"}, **sections}))
    return p


def invoke(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(app, list(args))
    return r.exit_code, r.output


def test_ingest_refuses_the_default_salt_before_migrating(tmp_path: Path) -> None:
    code, out = invoke("ingest", "--config", str(config(tmp_path)))
    assert code == 2, out
    assert "refusing to start" in out and "pii.user_id_salt: is the built-in default" in out
    assert "DRIFTLOOP_PII__USER_ID_SALT" in out and "secrets.token_urlsafe(32)" in out
    assert not (tmp_path / "db").exists()  # nothing was started or created


def test_run_refuses_the_default_salt_and_public_open_reads(tmp_path: Path) -> None:
    code, out = invoke("run", "--config", str(config(tmp_path, api={"host": "0.0.0.0"})))
    assert code == 2, out
    assert "pii.user_id_salt: is the built-in default" in out
    assert "api.host: '0.0.0.0' is not a loopback address" in out and "api.public_reads: true" in out
    assert not (tmp_path / "db").exists()


def test_run_refuses_placeholder_tokens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLOOP_ADMIN_TOKEN", "change-me-admin-token-0123456789")
    cfg = config(tmp_path, pii={"user_id_salt": SALT},
                 api={"tokens": [{"name": "admin", "token_env": "DRIFTLOOP_ADMIN_TOKEN", "role": "admin"}]})  # fmt: skip
    code, out = invoke("run", "--config", str(cfg))
    assert code == 2, out
    assert "api.tokens[0] (admin): the value of $DRIFTLOOP_ADMIN_TOKEN looks like a placeholder" in out
    assert "user_id_salt" not in out


def test_api_serve_refuses_open_reads_on_a_public_host(tmp_path: Path) -> None:
    code, out = invoke("api", "serve", "--config", str(config(tmp_path)), "--host", "0.0.0.0")
    assert code == 2, out
    assert "api.host: '0.0.0.0' is not a loopback address" in out
    assert "user_id_salt" not in out  # the API alone does not hash user ids
    assert not (tmp_path / "db").exists()


@pytest.mark.parametrize(("ingest", "api", "sections", "refused"), [
    (None, None, {"scheduler": {"ingest": False}, "api": {"enabled": False, "host": "0.0.0.0"}}, []),
    (False, False, {"api": {"host": "0.0.0.0"}}, []),  # run --no-ingest --no-api
    (None, None, {"scheduler": {"ingest": False}, "api": {"host": "0.0.0.0"}}, ["api.host"]),
    (None, None, {"api": {"host": "0.0.0.0", "public_reads": True}}, ["pii.user_id_salt"]),
    (None, None, {"pii": {"user_id_salt": SALT}, "api": {"host": "0.0.0.0", "public_reads": True}}, []),
    (None, None, {"pii": {"user_id_salt": SALT}, "api": {"host": "0.0.0.0", "read_requires_token": True,
                                                         "tokens": [{"name": "r", "token": TOKEN}]}}, []),
])  # fmt: skip
def test_prepare_checks_only_what_the_command_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  ingest: bool | None, api: bool | None, sections: dict[str, Any],
                                                  refused: list[str]) -> None:  # fmt: skip
    """`driftloop run` passes None (as scheduler.ingest / api.enabled say) or False (--no-ingest / --no-api)."""
    cfg = config(tmp_path, **sections)
    if not refused:
        assert prepare(cfg, "WARNING", False, ingest=ingest, api=api).database.url.startswith("sqlite")
        return
    with pytest.raises(typer.Exit) as ei:
        prepare(cfg, "WARNING", False, ingest=ingest, api=api)
    assert ei.value.exit_code == 2
    err = capsys.readouterr().err
    assert [line.split(":")[0].strip() for line in err.splitlines()[1:]] == refused


def test_api_server_refuses_what_the_cli_would(tmp_path: Path) -> None:
    """ApiServer checks too (an embedding that skipped the CLI); it does not care about the salt."""
    eng = create_engine_from_url(f"sqlite:///{tmp_path}/x.db")
    open_reads = load_settings(None, api={"host": "0.0.0.0"})
    with pytest.raises(ValueError, match=r"refusing to serve the API: api\.host: '0\.0\.0\.0' is not a loopback"):
        ApiServer(open_reads, eng)
    with pytest.raises(ValueError, match=r"api\.public_reads: true"):
        ApiServer(load_settings(None), eng, host="0.0.0.0")
    with pytest.raises(ValueError, match=r"api\.tokens\[0\] \(admin\): its token looks like a placeholder"):
        ApiServer(load_settings(None, api={"tokens": [{"name": "admin", "token": "changeme-0123456789abc"}]}), eng)
    ApiServer(load_settings(None, api={"host": "0.0.0.0", "public_reads": True}), eng)  # on purpose: accepted
    ApiServer(load_settings(None), eng)  # loopback, the default salt: accepted (the demo's case)
    eng.dispose()


def test_the_demo_runs_on_the_default_salt(tmp_path: Path) -> None:
    """The demo builds its settings in-process and never calls the start-up checks: its exemption."""
    from driftloop.demo import run_demo

    assert load_settings(None).pii.user_id_salt == "driftloop-default-salt-change-me"  # no salt in this test
    counts = run_demo(records=200, data_dir=tmp_path / "demo")
    assert counts["interactions"] == 200 and counts["rejected"] > 0
