"""``/review``: the review page of the status site — one static HTML page with a little inline JavaScript.

No build step and no external assets (works offline). The page holds no data itself, so it is served without a
token (like a login form); everything it shows comes from ``/api/v1/review`` with the review token the reviewer
pastes once (kept in ``sessionStorage``, gone with the tab). Data is written with ``textContent`` only, and a
Content-Security-Policy allows just this page's own script (by hash), so a response containing markup is shown
as text and cannot run.

Keys: ``1`` good, ``0`` bad, Enter submits, ``s`` skips, ``c`` / ``t`` focus the correction / tags box
(Escape leaves it; Ctrl+Enter submits from the correction box), ``r`` looks again when the queue was empty.
"""

from __future__ import annotations

import base64
import hashlib

from fastapi import APIRouter, Response
from fastapi.responses import HTMLResponse

from driftloop.api.params import HTML
from driftloop.api.status import CSS

PAGE_CSS = """
.item{display:grid;grid-template-columns:1fr 1fr;gap:1rem} .box{background:#fff;border:1px solid #dde1e7;padding:.6rem}
.box pre{font-size:.9rem;max-height:55vh;overflow:auto} textarea{width:100%;min-height:5rem;font:inherit}
input[type=text],input[type=password]{width:100%;font:inherit} .verdict button.on{outline:3px solid #2563eb}
.keys kbd{border:1px solid #bbb;border-radius:3px;padding:0 .3rem;background:#fff} button{font:inherit}
"""

SCRIPT = r"""
(function () {
  const KEY = 'driftloop.review.token';
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  let item = null, verdict = null, busy = false;
  const say = (msg, bad) => { const s = $('status'); s.textContent = msg; s.className = bad ? 'bad' : 'muted'; };
  const token = () => sessionStorage.getItem(KEY);
  const state = (s) => { document.body.dataset.state = s; };
  function showLogin() { $('login').hidden = false; $('review').hidden = true; $('empty').hidden = true;
    state('login'); $('token').focus(); }
  async function api(path, body) {
    const r = await fetch(path, {method: 'POST', body: JSON.stringify(body || {}),
      headers: {'Content-Type': 'application/json', 'Authorization': 'Bearer ' + token()}});
    let data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    if (!r.ok) {
      const d = data && data.detail ? (typeof data.detail === 'string' ? data.detail : JSON.stringify(data.detail))
                                    : r.statusText;
      if (r.status === 401) { sessionStorage.removeItem(KEY); showLogin(); }
      throw new Error(r.status + ': ' + d);
    }
    return data;
  }
  function setVerdict(v) { verdict = v; $('v1').classList.toggle('on', v === 1); $('v0').classList.toggle('on', v === 0);
    document.body.dataset.verdict = v === null ? '' : String(v); }
  function render() {
    $('login').hidden = true;
    if (!item) { $('review').hidden = true; $('empty').hidden = false; document.body.dataset.item = '';
      state('empty'); return; }
    $('empty').hidden = true; $('review').hidden = false;
    $('item-id').textContent = item.id; $('slice').textContent = item.slice; $('model').textContent = item.model_id;
    $('reason').textContent = item.reason || ''; $('prompt').textContent = item.prompt;
    $('response').textContent = item.response === null ? '(no response)' : item.response;
    $('correction').value = ''; $('tags').value = ''; setVerdict(null);
    document.body.dataset.item = String(item.id); state('item');
  }
  async function next() {
    const body = {};
    if (params.get('model')) body.model = params.get('model');
    if (params.getAll('slice').length) body.slices = params.getAll('slice');
    item = (await api('/api/v1/review/next', body)).item;
    render();
  }
  async function run(fn) {
    if (busy) return;
    busy = true; document.body.dataset.busy = '1';
    try { await fn(); } catch (e) { say(e.message, true); } finally { busy = false; document.body.dataset.busy = ''; }
  }
  const submit = () => run(async () => {
    if (!item) return;
    if (verdict === null) { say('choose 1 (good) or 0 (bad) first', true); return; }
    const body = {value: verdict};
    const c = $('correction').value, tags = $('tags').value.split(',').map((t) => t.trim()).filter(Boolean);
    if (c.trim()) body.correction = c;
    if (tags.length) body.tags = tags;
    await api('/api/v1/review/items/' + item.id + '/label', body);
    say('labelled item ' + item.id);
    await next();
  });
  const skip = () => run(async () => {
    if (!item) return;
    await api('/api/v1/review/items/' + item.id + '/skip', {});
    say('skipped item ' + item.id);
    await next();
  });
  document.addEventListener('keydown', (e) => {
    const t = e.target;
    if (!$('login').hidden) return;
    if (t instanceof HTMLTextAreaElement || t instanceof HTMLInputElement) {
      if (e.key === 'Escape') { t.blur(); e.preventDefault(); }
      else if (e.key === 'Enter' && (e.ctrlKey || e.metaKey || t instanceof HTMLInputElement)) { e.preventDefault(); submit(); }
      return;
    }
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const k = e.key;
    if (k === '1') setVerdict(1);
    else if (k === '0') setVerdict(0);
    else if (k === 's') skip();
    else if (k === 'c' || k === 't') { e.preventDefault(); $(k === 'c' ? 'correction' : 'tags').focus(); }
    else if (k === 'Enter') { e.preventDefault(); submit(); }
    else if (k === 'r' && !item) run(next);
  });
  $('v1').addEventListener('click', () => setVerdict(1));
  $('v0').addEventListener('click', () => setVerdict(0));
  $('submit').addEventListener('click', submit);
  $('skip').addEventListener('click', skip);
  $('login').addEventListener('submit', (e) => {
    e.preventDefault();
    const v = $('token').value.trim();
    if (!v) return;
    sessionStorage.setItem(KEY, v); $('token').value = '';
    run(next);
  });
  $('logout').addEventListener('click', () => { sessionStorage.removeItem(KEY); item = null; showLogin(); });
  if (token()) run(next); else showLogin();
})();
"""

_SCRIPT_HASH = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
CSP = (f"default-src 'none'; script-src 'sha256-{_SCRIPT_HASH}'; style-src 'unsafe-inline'; connect-src 'self'; "
       "img-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'")  # fmt: skip

PAGE = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>driftloop review</title><style>{CSS}{PAGE_CSS}</style></head>
<body data-state="loading"><h1>driftloop review</h1>
<p class="muted"><a href="/">status</a> &middot; <a href="/docs#/review">API</a> &middot;
<button id="logout" type="button">forget token</button></p>
<p class="keys muted"><kbd>1</kbd> good &middot; <kbd>0</kbd> bad &middot; <kbd>Enter</kbd> submit &middot;
<kbd>s</kbd> skip &middot; <kbd>c</kbd> correction &middot; <kbd>t</kbd> tags &middot; <kbd>Esc</kbd> leave a box</p>
<p id="status" class="muted" role="status" aria-live="polite"></p>
<form id="login" hidden><label>Review token (kept in this tab only)
<input id="token" type="password" autocomplete="off"></label> <button type="submit">start</button></form>
<p id="empty" hidden>Nothing left to review. Press <kbd>r</kbd> to look again.</p>
<section id="review" hidden>
<p>item <b id="item-id"></b> &middot; slice <b id="slice"></b> &middot; model <b id="model"></b>
<span id="reason" class="muted"></span></p>
<div class="item"><div class="box"><h3>Prompt</h3><pre id="prompt"></pre></div>
<div class="box"><h3>Response</h3><pre id="response"></pre></div></div>
<p class="verdict"><button id="v1" type="button">1 &middot; good</button> <button id="v0" type="button">0 &middot; bad</button>
<button id="submit" type="button">submit (Enter)</button> <button id="skip" type="button">skip (s)</button></p>
<label>Correction (a better response; optional)<textarea id="correction"></textarea></label>
<label>Tags (comma separated; optional)<input id="tags" type="text"></label>
</section>
<script>{SCRIPT}</script>
</body></html>
"""


def render_review_page() -> str:
    """The page (static: it holds no data)."""
    return PAGE


def router() -> APIRouter:
    routes = APIRouter()

    @routes.get("/review", response_class=Response, tags=["review"], responses=HTML,
                summary="Review page (HTML): work through the review queue with the keyboard")  # fmt: skip
    def review_page() -> Response:
        return HTMLResponse(PAGE, headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store"})

    return routes
