"""The review page (``/review``) worked through with the keyboard in headless Chromium, over the real API and
PostgreSQL: paste the token, take an item, label it with ``0``/``c``/Enter, see the next, ``1``/Enter, ``s``,
until the queue is empty; the scores are in the database. One response carries markup: it must show as text.

Chromium is driven through the DevTools protocol over ``--remote-debugging-pipe`` (file descriptors 3 and 4),
with the standard library only (no DevTools client library is a dependency). Waits are on DOM mutations
inside the page, never sleeps. A screenshot goes to ``$DRIFTLOOP_SCREENSHOT_DIR`` (default: the test's tmp
directory).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from driftloop.api.server import ApiServer
from driftloop.monitor.review import review_items, sample_once
from driftloop.store.db import create_engine_from_url
from driftloop.store.scores import scores
from tests.helpers import make_settings
from tests.monitor_helpers import T0, insert_rows, interaction

pytestmark = pytest.mark.browser

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")) if p
                 and Path(p).exists()), None)  # fmt: skip
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--remote-debugging-pipe"]
REVIEW = "review-token-" + "v" * 20
HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> & done'
KEYS = {"Enter": ("Enter", 13, "\r"), "Escape": ("Escape", 27, ""), "0": ("Digit0", 48, "0"),
        "1": ("Digit1", 49, "1"), "s": ("KeyS", 83, "s"), "c": ("KeyC", 67, "c")}  # fmt: skip


class Cdp:
    """A Chromium child speaking the DevTools protocol on a pipe: JSON messages ended by NUL."""

    def __init__(self, profile: Path) -> None:
        assert CHROMIUM is not None
        to_child, self._w = os.pipe()  # we write, Chromium reads fd 3
        self._r, from_child = os.pipe()  # Chromium writes fd 4, we read
        # Numbered >= 10 so moving them onto 3 and 4 in the child cannot clobber one with the other; moved by a
        # tiny exec wrapper rather than a preexec_fn (this process runs the API server's threads).
        a, b = fcntl.fcntl(to_child, fcntl.F_DUPFD, 10), fcntl.fcntl(from_child, fcntl.F_DUPFD, 10)
        os.close(to_child)
        os.close(from_child)
        move = f"import os, sys; os.dup2({a}, 3); os.dup2({b}, 4); os.execv(sys.argv[1], sys.argv[1:])"
        argv = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"]
        self.proc = subprocess.Popen([sys.executable, "-c", move, *argv], pass_fds=(a, b),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        os.close(a)  # the child's copies now
        os.close(b)
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None

    def _read(self) -> dict[str, Any]:
        while b"\0" not in self._buf:
            chunk = os.read(self._r, 1 << 16)
            if not chunk:
                raise RuntimeError(f"chromium closed the pipe (exit {self.proc.poll()})")
            self._buf += chunk
        msg, _, self._buf = self._buf.partition(b"\0")
        return dict(json.loads(msg))

    def send(self, method: str, browser: bool = False, **params: Any) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if self.session and not browser:
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        while True:
            m = self._read()
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return dict(m.get("result", {}))
            self.events.append(m)

    def wait_event(self, method: str) -> dict[str, Any]:
        for i, e in enumerate(self.events):
            if e.get("method") == method:
                return self.events.pop(i)
        while True:
            m = self._read()
            if m.get("method") == method:
                return m
            self.events.append(m)

    def js(self, expr: str) -> Any:
        r = self.send("Runtime.evaluate", expression=expr, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in r:
            raise AssertionError(r["exceptionDetails"].get("exception", {}).get("description") or r["exceptionDetails"])
        return r["result"].get("value")

    def until(self, cond: str) -> None:
        """Resolve when the JS expression ``cond`` holds, re-checked on every DOM mutation (30 s safety bound)."""
        self.js(f"""new Promise((resolve, reject) => {{
          const ok = () => {{ try {{ return !!({cond}); }} catch (e) {{ return false; }} }};
          if (ok()) return resolve(true);
          const obs = new MutationObserver(() => {{ if (ok()) {{ obs.disconnect(); resolve(true); }} }});
          obs.observe(document, {{subtree: true, childList: true, attributes: true, characterData: true}});
          setTimeout(() => {{ obs.disconnect(); reject(new Error('page never reached: ' + {json.dumps(cond)}
            + ' (state ' + document.body.dataset.state + ', status ' + document.getElementById('status').textContent
            + ')')); }}, 30000);
        }})""")

    def key(self, name: str) -> None:
        code, vk, text = KEYS[name]
        down: dict[str, Any] = {"type": "keyDown", "key": name, "code": code, "windowsVirtualKeyCode": vk}
        self.send("Input.dispatchKeyEvent", **(down | ({"text": text} if text else {})))
        self.send("Input.dispatchKeyEvent", **{**down, "type": "keyUp"})

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, OSError):  # it may be gone already
            self.send("Browser.close", browser=True)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._r)
        os.close(self._w)


@pytest.fixture
def served(pg_url: str) -> Iterator[tuple[str, Engine]]:
    if CHROMIUM is None:
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    s = make_settings(pg_url, api={"tokens": [{"name": "alice", "token": REVIEW, "role": "review"}]},
                      quality={"review": {"enabled": True, "uniform_rate": 1.0}})  # fmt: skip
    eng = create_engine_from_url(pg_url)
    insert_rows(eng, [interaction(0, prompt="What is 2 + 2?", response=HOSTILE),
                      interaction(1, prompt="Capital of France?", response="Paris."),
                      interaction(2, prompt="Say hi", response="hi")])  # fmt: skip
    sample_once(eng, s.quality.review, 0.5, T0 + timedelta(hours=1))
    srv = ApiServer(s, eng, host="127.0.0.1", port=0)
    base = srv.start()
    yield base, eng
    srv.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Cdp]:
    cdp = Cdp(tmp_path / "chromium-profile")
    try:
        target = cdp.send("Target.createTarget", url="about:blank")["targetId"]
        cdp.session = cdp.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        cdp.send("Page.enable")
        yield cdp
    finally:
        cdp.close()


def item_id(cdp: Cdp) -> int:
    return int(cdp.js("document.body.dataset.item"))


def test_work_through_the_queue_with_the_keyboard(served: tuple[str, Engine], browser: Cdp, tmp_path: Path) -> None:
    base, eng = served
    cdp = browser
    cdp.send("Page.navigate", url=f"{base}/review")
    cdp.wait_event("Page.loadEventFired")
    cdp.until("document.body.dataset.state === 'login'")
    cdp.js("document.getElementById('token').focus()")
    cdp.send("Input.insertText", text=REVIEW)
    cdp.key("Enter")  # submits the token form
    cdp.until("document.body.dataset.state === 'item'")
    first = item_id(cdp)
    assert cdp.js("sessionStorage.getItem('driftloop.review.token')") == REVIEW
    # the hostile response is shown as text, nothing of it ran or became an element
    assert cdp.js("document.getElementById('response').textContent") == HOSTILE
    assert cdp.js("document.getElementById('prompt').textContent") == "What is 2 + 2?"
    assert cdp.js("[document.scripts.length, document.images.length, typeof window.__pwned]") == [1, 0, "undefined"]
    shot = Path(os.environ.get("DRIFTLOOP_SCREENSHOT_DIR") or tmp_path) / "driftloop-review.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    shot.write_bytes(base64.b64decode(cdp.send("Page.captureScreenshot", format="png")["data"]))
    print(f"\nreview page screenshot: {shot}")

    cdp.key("0")
    cdp.until("document.body.dataset.verdict === '0'")
    cdp.key("c")
    assert cdp.js("document.activeElement.id") == "correction"
    cdp.send("Input.insertText", text="2 + 2 = 4")
    cdp.key("Escape")
    cdp.key("Enter")
    cdp.until(f"document.body.dataset.state === 'item' && document.body.dataset.item !== '{first}'")
    second = item_id(cdp)
    assert cdp.js("document.getElementById('response').textContent") == "Paris."
    assert cdp.js("document.body.dataset.verdict") == "", "a new item starts without a verdict"
    assert f"labelled item {first}" in cdp.js("document.getElementById('status').textContent")

    cdp.key("1")
    cdp.key("Enter")
    cdp.until(f"document.body.dataset.state === 'item' && document.body.dataset.item !== '{second}'")
    third = item_id(cdp)
    cdp.key("s")
    cdp.until("document.body.dataset.state === 'empty'")

    with eng.connect() as c:
        got = {r.request_id: (r.source, r.value, r.correction) for r in c.execute(select(scores))}
        status = dict(c.execute(select(review_items.c.id, review_items.c.status)).all())
        by_id = dict(c.execute(select(review_items.c.id, review_items.c.request_id)).all())
    assert got == {by_id[first]: ("human_review", 0.0, "2 + 2 = 4"), by_id[second]: ("human_review", 1.0, None)}
    assert status == {first: "labelled", second: "labelled", third: "skipped"}
