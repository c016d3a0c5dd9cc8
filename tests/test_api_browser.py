"""The status page and an Evidently report rendered by headless Chromium (Debian ``chromium``), served by the
real API (uvicorn on a free port) over real data; a screenshot of the status page is saved.

Screenshots go to ``$DRIFTLOOP_SCREENSHOT_DIR`` (default: the test's tmp directory); the path is printed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from driftloop.api.server import ApiServer
from driftloop.retrain.registry import ModelRegistry
from tests.test_api import MODEL, seeded_database

pytestmark = pytest.mark.browser

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")) if p
                 and Path(p).exists()), None)  # fmt: skip
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture(scope="module")
def served(pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    """The API over real traffic (quality drops after 2 windows; the alert fires) and a registry, on a free port."""
    if CHROMIUM is None:
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    with seeded_database(pg_admin_url, tmp_path_factory.mktemp("browser"), seed=5) as sd:
        srv = ApiServer(sd.settings, sd.engine, host="127.0.0.1", port=0)
        base = srv.start()
        yield base, sd.engine
        srv.stop()


def chromium(tmp: Path, *args: str) -> str:
    assert CHROMIUM is not None
    out = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp / 'chromium-profile'}", *args],
                         capture_output=True, text=True, timeout=180)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def screenshot_dir(tmp_path: Path) -> Path:
    d = Path(os.environ.get("DRIFTLOOP_SCREENSHOT_DIR") or tmp_path)
    d.mkdir(parents=True, exist_ok=True)
    return d


def test_status_page_renders_champion_and_open_alerts(served: tuple[str, object], tmp_path: Path) -> None:
    base, eng = served
    champ = ModelRegistry(eng).champion(MODEL)  # type: ignore[arg-type]
    assert champ is not None and champ.version == "v1"
    dom = chromium(tmp_path, "--dump-dom", f"{base}/")
    assert "<title>driftloop status</title>" in dom
    assert f'<b class="champion">{champ.version}</b>' in dom
    assert '<b class="alert-rule">quality-drop</b>' in dom and "critical" in dom
    assert "v2" in dom  # waiting for approval
    with eng.connect() as c:  # type: ignore[attr-defined]
        wid = c.execute(text("select max(id) from monitor_windows where report_path is not null")).scalar()
    assert f'href="/reports/{wid}"' in dom
    shot = screenshot_dir(tmp_path) / "driftloop-status.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,900", "--hide-scrollbars", f"{base}/")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    print(f"\nstatus page screenshot: {shot}")


def test_an_evidently_report_renders(served: tuple[str, object], tmp_path: Path) -> None:
    base, eng = served
    with eng.connect() as c:  # type: ignore[attr-defined]
        wid, path = c.execute(text("select id, report_path from monitor_windows where report_path is not null "
                                   "order by id desc limit 1")).one()  # fmt: skip
    raw = Path(path).read_text()
    # The report is a React app inlined in the HTML: its root div is empty until the scripts ran.
    dom = chromium(tmp_path, "--virtual-time-budget=20000", "--dump-dom", f"{base}/reports/{wid}")
    assert 'id="root_metric_' in dom
    assert "Drift" in dom and "latency_ms" in dom  # the rendered widgets name the drift and the columns
    rendered_elements = dom.count("<div") + dom.count("<svg")
    assert rendered_elements > raw.count("<div") + 50, "the report's scripts did not render its widgets"
    shot = screenshot_dir(tmp_path) / "driftloop-report.png"
    chromium(tmp_path, "--virtual-time-budget=20000", f"--screenshot={shot}", "--window-size=1280,900",
             f"{base}/reports/{wid}")  # fmt: skip
    assert shot.stat().st_size > 10_000
    print(f"\nreport screenshot: {shot}")
