"""The review queue over HTTP (``/api/v1/review``) on PostgreSQL: roles, claims, labels, skips, errors, the page."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from driftloop.api import create_app
from driftloop.monitor.review import sample_once
from driftloop.store.db import create_engine_from_url
from driftloop.store.scores import scores
from tests.helpers import make_settings
from tests.monitor_helpers import T0, insert_rows, interaction

ADMIN, REVIEW, READ = "admin-token-" + "a" * 20, "review-token-" + "v" * 20, "read-token-" + "r" * 20
TOKENS = [{"name": "admin", "token": ADMIN, "role": "admin"}, {"name": "alice", "token": REVIEW, "role": "review"},
          {"name": "viewer", "token": READ, "role": "read"}]  # fmt: skip


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def api(pg_url: str) -> Iterator[tuple[TestClient, Engine]]:
    s = make_settings(pg_url, api={"tokens": TOKENS}, quality={"review": {"enabled": True, "uniform_rate": 1.0}})
    eng = create_engine_from_url(pg_url)
    insert_rows(eng, [interaction(i, prompt=f"question {i}", response=f"answer {i}") for i in range(3)])
    sample_once(eng, s.quality.review, 0.5, T0 + timedelta(hours=1))
    with TestClient(create_app(s, eng)) as client:
        yield client, eng


def take(client: TestClient, token: str = REVIEW, **body: Any) -> Any:
    r = client.post("/api/v1/review/next", json=body or None, headers=auth(token))
    assert r.status_code == 200, r.text
    return r.json()["item"]


def test_roles(api: tuple[TestClient, Engine]) -> None:
    client, _ = api
    r = client.post("/api/v1/review/next")
    assert r.status_code == 401 and "needs a review token" in r.json()["detail"]
    r = client.post("/api/v1/review/next", headers=auth(READ))
    assert r.status_code == 403 and "role read" in r.json()["detail"] and "needs role review" in r.json()["detail"]
    r = client.post("/api/v1/review/next", headers=auth("x" * 30))
    assert r.status_code == 401 and "invalid token" in r.json()["detail"]
    assert take(client)["claimed_by"] == "alice"
    assert take(client, ADMIN)["claimed_by"] == "admin", "admin may review too"
    # a review token is not an admin token
    assert client.post("/api/v1/checks/run", headers=auth(REVIEW)).status_code == 403
    assert client.post("/api/v1/review/items/1/label", json={"value": 1}, headers=auth(READ)).status_code == 403
    assert client.get("/api/v1/review/stats").status_code == 200, "counts are a read"


def test_take_label_skip_and_errors(api: tuple[TestClient, Engine]) -> None:
    client, eng = api
    it = take(client)
    assert (it["prompt"], it["response"], it["slice"]) == ("question 0", "answer 0", "uniform")
    assert take(client)["id"] == it["id"], "the caller's open claim comes back"
    bad = [({"value": 1.5}, 422), ({"value": 1, "correction": "a\x00b"}, 422), ({"value": 1, "tags": [""]}, 422),
           ({"value": 1, "extra": 1}, 422), ({}, 422)]  # fmt: skip
    for body, code in bad:
        assert (
            client.post(f"/api/v1/review/items/{it['id']}/label", json=body, headers=auth(REVIEW)).status_code == code
        )
    other = take(client, ADMIN)
    r = client.post(f"/api/v1/review/items/{other['id']}/label", json={"value": 1}, headers=auth(REVIEW))
    assert r.status_code == 409 and "not claimed by you" in r.json()["detail"]
    r = client.post("/api/v1/review/items/999999/label", json={"value": 1}, headers=auth(REVIEW))
    assert r.status_code == 404 and "no review item 999999" in r.json()["detail"]
    body = {"value": 0.0, "correction": "better: answer zero", "tags": ["wrong"], "comment": "off by one"}
    r = client.post(f"/api/v1/review/items/{it['id']}/label", json=body, headers=auth(REVIEW))
    assert r.status_code == 200 and r.json() == {"id": it["id"], "status": "labelled", "request_id": it["request_id"],
                                                 "source": "human_review", "value": 0.0}  # fmt: skip
    with eng.connect() as c:
        row = c.execute(select(scores).where(scores.c.request_id == it["request_id"])).one()
    assert (row.source, row.value, row.correction, row.tags, row.comment) == (
        "human_review", 0.0, "better: answer zero", ["wrong"], "off by one")  # fmt: skip
    r = client.post(f"/api/v1/review/items/{it['id']}/label", json={"value": 1}, headers=auth(REVIEW))
    assert r.status_code == 409 and "already labelled" in r.json()["detail"]
    nxt = take(client)
    assert nxt["id"] not in (it["id"], other["id"])
    r = client.post(f"/api/v1/review/items/{nxt['id']}/skip", json={"reason": "not my language"}, headers=auth(REVIEW))
    assert r.status_code == 200 and r.json() == {"id": nxt["id"], "status": "skipped"}
    r = client.post(f"/api/v1/review/items/{nxt['id']}/skip", headers=auth(REVIEW))
    assert r.status_code == 409
    assert take(client) is None, "the only item left is the admin's claim"
    st = client.get("/api/v1/review/stats").json()
    assert st["by_slice"]["uniform"] == {"pending": 0, "claimed": 1, "labelled": 1, "skipped": 1}
    assert client.get("/api/v1/review/stats", params={"model": "nope"}).json()["rows"] == []


def test_filters(api: tuple[TestClient, Engine]) -> None:
    client, _ = api
    assert take(client, model="other") is None
    assert take(client, slices=["drift", "negative_feedback"]) is None
    assert take(client, model="m", slices=["uniform"])["model_id"] == "m"
    r = client.post("/api/v1/review/next", json={"slices": ["bogus"]}, headers=auth(REVIEW))
    assert r.status_code == 422


def test_the_page_is_static_and_only_runs_its_own_script(api: tuple[TestClient, Engine]) -> None:
    client, _ = api
    r = client.get("/review")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    script = re.search(r"<script>(.*)</script>", html, re.S)
    assert script is not None and html.count("<script") == 1
    digest = base64.b64encode(hashlib.sha256(script.group(1).encode()).digest()).decode()
    csp = r.headers["content-security-policy"]
    assert f"script-src 'sha256-{digest}'" in csp and "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert "innerHTML" not in script.group(1), "item text is written with textContent only"
    assert "http://" not in html and "https://" not in html, "no external assets: works offline"
