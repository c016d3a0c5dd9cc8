"""``driftloop serve``: OpenAI shapes, vLLM adapter endpoints, hot swap under load, Kafka outages.

CPU only, on the tiny local GPT-2 of :mod:`retrain.toy` and two small LoRA adapters trained here.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from driftloop.broker import LocalTansu, free_port
from driftloop.client import RecordLogger
from driftloop.records import to_wire
from driftloop.serve import ModelRuntime, create_serve_app
from driftloop.settings import Settings, load_settings
from tests.vllm_stub import VllmStub

MODEL = "support-bot"


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory, toy_base_model: Path) -> dict[str, str]:
    """A base model (domain A) and two different LoRA adapters (domain B, different seeds and steps)."""
    import shutil

    from driftloop.retrain.toy import sample_pairs
    from driftloop.retrain.trainer import train_lora
    from driftloop.settings.retrain import TrainingSettings

    root = tmp_path_factory.mktemp("serve-toy")
    base = shutil.copytree(toy_base_model, root / "base")  # the session's toy model, inside the adapter root
    rows = [{"prompt": p, "response": r} for p, r in sample_pairs("B", 60)]
    out = {"base": str(base), "root": str(root)}
    for name, seed, steps in (("a1", 1, 20), ("a2", 2, 30)):
        cfg = TrainingSettings(max_steps=steps, learning_rate=3e-3, batch_size=8, max_length=64, seed=seed)
        train_lora(str(base), rows, str(root / name), cfg)
        out[name] = str(root / name)
    return out


class CapturingLogger(RecordLogger):
    """A RecordLogger that keeps what it is given instead of sending it."""

    def __init__(self) -> None:
        super().__init__("127.0.0.1:1", "unused", buffer_size=10)
        self.records: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def submit(self, record: Any) -> bool:
        with self._lock:
            self.records.append(json.loads(json.dumps(to_wire(record))))  # what the logger would send
        return True


def settings_for(toy: dict[str, str], **serve: Any) -> Settings:
    """Serve settings for the toy model; adapters may load from the toy directory unless ``adapter_roots`` says."""
    return load_settings(None, serve={"base_model": toy["base"], "model_id": MODEL, "max_new_tokens": 16,
                                      "adapter_roots": [toy["root"]], **serve})  # fmt: skip


def decode(rec: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Run a record through driftloop's ingestion decoder (raises InvalidMessage if it is not a valid v1 record)."""
    from driftloop.ingest.decode import DecodePolicy, Decoder, Source
    from driftloop.ingest.redact import Redactor

    kind, row, _ = Decoder(DecodePolicy(), Redactor()).decode(json.dumps(rec).encode(), Source("t", 0, 0, None))
    return kind, row


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def wait_for(cond: Callable[[], bool], what: str, limit_s: float = 60.0) -> None:
    """Poll ``cond``; fail naming ``what`` if it never holds (a guard against hanging, not a timing assertion)."""
    deadline = time.monotonic() + limit_s
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"never happened: {what}")
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------ shapes and usage


def test_completions_chat_and_models_have_openai_shapes_and_log_v1_records(toy: dict[str, str]) -> None:
    from driftloop.retrain.trainer import format_prompt

    cap = CapturingLogger()
    app = create_serve_app(settings_for(toy), record_logger=cap)
    rt: ModelRuntime = app.state.serve.runtime
    with TestClient(app) as c:
        r = c.post("/v1/completions", json={"model": MODEL, "prompt": "What is 3 plus 4?", "max_tokens": 12,
                                            "user": "u-1", "metadata": {"tenant": "t1"}})  # fmt: skip
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["id"].startswith("cmpl-") and body["object"] == "text_completion" and body["model"] == MODEL
        ch = body["choices"][0]
        assert ch["index"] == 0 and isinstance(ch["text"], str) and ch["finish_reason"] in ("stop", "length")
        u = body["usage"]
        assert u["prompt_tokens"] == rt.count_tokens(format_prompt(rt.tokenizer, "What is 3 plus 4?"))
        assert 1 <= u["completion_tokens"] <= 12 and u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
        assert body["system_fingerprint"] == "base" and r.headers["x-driftloop-model-version"] == "base"

        # greedy by default: the same prompt gives the same answer
        again = c.post("/v1/completions", json={"model": MODEL, "prompt": "What is 3 plus 4?", "max_tokens": 12})
        assert again.json()["choices"][0]["text"] == ch["text"]
        short = c.post("/v1/completions", json={"model": MODEL, "prompt": ["What is 3 plus 4?"], "max_tokens": 2})
        assert (
            short.json()["usage"]["completion_tokens"] <= 2 and short.json()["choices"][0]["finish_reason"] == "length"
        )
        sampled = c.post("/v1/completions", json={"model": MODEL, "prompt": "Is 4 an even number?", "max_tokens": 8,
                                                  "temperature": 0.9, "top_p": 0.9, "seed": 7})  # fmt: skip
        assert sampled.status_code == 200
        # a seed torch cannot take is the caller's error (it was a 500)
        for seed in (2**64, -(2**63) - 1):
            bad = c.post("/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2, "seed": seed})
            assert bad.status_code == 400 and "seed" in bad.text, bad.text

        r = c.post("/v1/chat/completions", json={"model": MODEL, "max_tokens": 12, "messages": [
            {"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 10 minus 4?"}]})  # fmt: skip
        assert r.status_code == 200, r.text
        chat = r.json()
        assert chat["id"].startswith("chatcmpl-") and chat["object"] == "chat.completion"
        msg = chat["choices"][0]["message"]
        assert msg["role"] == "assistant" and isinstance(msg["content"], str)
        assert chat["usage"]["total_tokens"] == chat["usage"]["prompt_tokens"] + chat["usage"]["completion_tokens"]

        # streaming: the complete answer as server-sent events, then [DONE]
        r = c.post("/v1/chat/completions", json={"model": MODEL, "stream": True, "max_tokens": 6,
                                                 "stream_options": {"include_usage": True},
                                                 "messages": [{"role": "user", "content": "What is 2 plus 2?"}]})  # fmt: skip
        events = [ln[len("data: ") :] for ln in r.text.splitlines() if ln.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert (
            chunks[0]["object"] == "chat.completion.chunk" and chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        )
        assert chunks[-1]["usage"]["completion_tokens"] >= 1

        models = c.get("/v1/models").json()
        assert models["object"] == "list"
        assert [(m["id"], m["parent"], m["object"]) for m in models["data"]] == [(MODEL, None, "model")]
        assert models["data"][0]["root"] == toy["base"]

        # errors in vLLM's shape
        for req, status, text in (
            ({"model": MODEL, "prompt": "x", "n": 2}, 400, "n=2"),
            ({"model": "nope", "prompt": "x"}, 404, "does not exist"),
            ({"model": MODEL}, 400, "prompt"),
            ({"model": MODEL, "prompt": "x", "max_tokens": 10_000}, 400, "maximum context length"),
            ({"model": MODEL, "prompt": ["a", "b"]}, 400, "one prompt"),
        ):
            r = c.post("/v1/completions", json=req)
            assert r.status_code == status, (req, r.text)
            assert text in r.json()["error"]["message"] and r.json()["error"]["code"] == status
        fb = c.post("/v1/feedback", json={"request_id": body["id"], "score": 1, "correction": "3 plus 4 is 7."})
        assert fb.status_code == 202 and fb.json()["queued"] is True
        assert c.post("/v1/feedback", json={"request_id": body["id"]}).status_code == 400
        m = c.get("/metrics").text
        assert metric(m, "driftloop_serve_requests_total", endpoint="/v1/completions", status="200") == 4
        assert metric(m, "driftloop_serve_requests_total", endpoint="/v1/completions", status="400") == 4 + 2  # + 2 bad seeds
        assert metric(m, "driftloop_serve_tokens_total", kind="completion") >= 4

    recs = cap.records
    assert len(recs) == 7  # 4 completions, 2 chats, 1 feedback event
    first = recs[0]
    assert first["request_id"] == body["id"] and first["model_id"] == MODEL and first["model_version"] == "base"
    assert first["prompt"] == "What is 3 plus 4?" and first["response"] == ch["text"]
    assert first["tokens_in"] == u["prompt_tokens"] and first["tokens_out"] == u["completion_tokens"]
    assert first["user_id"] == "u-1" and first["metadata"]["tenant"] == "t1" and first["metadata"]["adapter"] is None
    chat_rec = recs[4]
    assert chat_rec["request_id"] == chat["id"] and chat_rec["prompt"] == "Answer briefly.\n\nWhat is 10 minus 4?"
    assert [m["role"] for m in chat_rec["messages"]] == ["system", "user"]
    kinds = [decode(r)[0] for r in recs]
    assert kinds == ["interaction"] * 6 + ["feedback"]
    _kind, row = decode(first)
    assert row["latency_ms"] > 0 and row["model_version"] == "base"
    assert decode(recs[-1])[1]["correction"] == "3 plus 4 is 7."


def test_api_key_protects_v1_routes_like_vllm(toy: dict[str, str]) -> None:
    app = create_serve_app(settings_for(toy, api_key="s3cret-key", log_records=False))
    ok = {"Authorization": "Bearer s3cret-key"}
    load = {"lora_name": "fam-v1", "lora_path": toy["a1"]}
    with TestClient(app) as c:
        r = c.get("/v1/models")
        assert r.status_code == 401 and r.json() == {"error": "Unauthorized"}
        assert c.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/v1/models", headers=ok).status_code == 200
        assert c.get("/health").status_code == 200 and c.get("/metrics").status_code == 200
        # the adapter endpoints: refused without the token (nothing loaded), accepted with it
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-key"}):
            assert c.post("/v1/load_lora_adapter", json=load, headers=headers).status_code == 401
        assert app.state.serve.runtime.adapters() == []
        assert c.post("/v1/load_lora_adapter", json=load, headers=ok).status_code == 200
        assert c.post("/v1/unload_lora_adapter", json={"lora_name": "fam-v1"}).status_code == 401
        assert app.state.serve.runtime.active == "fam-v1"
        assert c.post("/v1/unload_lora_adapter", json={"lora_name": "fam-v1"}, headers=ok).status_code == 200
        assert app.state.serve.runtime.active is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "serve.example.com"])
def test_a_server_reachable_from_other_machines_refuses_to_start_without_an_api_key(
    toy: dict[str, str], host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match=r"serve\.api_key_env .*or serve\.api_key, or bind to 127\.0\.0\.1"):
        create_serve_app(settings_for(toy, host=host, log_records=False))
    for weak, why in (("short-key", "is shorter than 16 characters"),
                      ("change-me-serve-api-key-0123456789", "looks like")):  # fmt: skip
        monkeypatch.setenv("TEST_SERVE_KEY", weak)  # e.g. .env.example's placeholder, copied as is
        with pytest.raises(ValueError, match=rf"the API key \(\$TEST_SERVE_KEY\) {why}"):
            create_serve_app(settings_for(toy, host=host, api_key_env="TEST_SERVE_KEY", log_records=False))
    monkeypatch.setenv("TEST_SERVE_KEY", "Vq3-h8ZkR2pLw9tN4sJd")
    app = create_serve_app(settings_for(toy, host=host, api_key_env="TEST_SERVE_KEY", log_records=False))
    with TestClient(app) as c:
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/models", headers={"Authorization": "Bearer Vq3-h8ZkR2pLw9tN4sJd"}).status_code == 200


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_loopback_hosts_may_run_without_an_api_key(toy: dict[str, str], host: str) -> None:
    app = create_serve_app(settings_for(toy, host=host, log_records=False))
    assert app.state.serve.api_key is None


def test_serve_command_refuses_a_public_host_without_an_api_key(toy: dict[str, str]) -> None:
    from typer.testing import CliRunner

    from driftloop.cli import app

    r = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--base-model", toy["base"]])
    assert r.exit_code == 2, r.output
    assert "serve.host is 0.0.0.0" in r.output and "set serve.api_key_env" in r.output


def test_the_compose_model_server_is_not_open(monkeypatch: pytest.MonkeyPatch) -> None:
    """docker-compose.yml: serve binds 0.0.0.0, so its key is required there and .env.example's placeholder fails."""
    import re

    import yaml

    from driftloop.serve import check_exposure

    root = Path(__file__).resolve().parents[1]
    compose = yaml.safe_load((root / "docker-compose.yml").read_text())
    svc = compose["services"]["serve"]
    env = {k: str(v) for k, v in svc["environment"].items()}
    key_var = env["DRIFTLOOP_SERVE__API_KEY_ENV"]
    assert re.fullmatch(rf"\$\{{{key_var}:\?.+\}}", env[key_var])  # compose refuses to start without it
    assert "/v1/" not in " ".join(svc["healthcheck"]["test"])  # the health check needs no key
    example = dict(ln.split("=", 1) for ln in (root / ".env.example").read_text().splitlines()
                   if ln and not ln.startswith("#"))  # fmt: skip
    monkeypatch.setenv("DRIFTLOOP_ADMIN_TOKEN", "x" * 24)
    for k, v in env.items():
        if k.startswith("DRIFTLOOP_SERVE__"):
            monkeypatch.setenv(k, v)
    s = load_settings(root / "deploy/driftloop.yaml")
    assert s.serve.host == "0.0.0.0" and s.serve.api_key_env == key_var
    with pytest.raises(ValueError, match="no API key is set"):
        check_exposure(s, None)
    with pytest.raises(ValueError, match="looks like a placeholder"):
        check_exposure(s, example[key_var])
    check_exposure(s, "Vq3-h8ZkR2pLw9tN4sJd")


# ------------------------------------------------------------------------------------------ adapter roots


def test_adapters_load_only_from_the_adapter_roots(toy: dict[str, str], tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "adapters"
    root.mkdir()
    shutil.copytree(toy["a1"], root / "fam-v1")
    outside = tmp_path / "outside"
    shutil.copytree(toy["a2"], outside)
    (root / "escape").symlink_to(outside, target_is_directory=True)  # a symlink in the root leading out
    sneaky = root / "sneaky"  # a real directory whose weights are a symlink to a file outside
    sneaky.mkdir()
    for f in Path(toy["a2"]).iterdir():
        if f.name.startswith("adapter_model"):
            (sneaky / f.name).symlink_to(f)
        else:
            shutil.copy(f, sneaky / f.name)
    inner = root / "inner-link"  # a symlink that stays inside the root is fine
    inner.symlink_to(root / "fam-v1", target_is_directory=True)

    app = create_serve_app(settings_for(toy, log_records=False, adapter_roots=[str(root)]))

    with TestClient(app) as c:

        def load(name: str, path: str) -> tuple[int, str]:
            r = c.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path})
            return r.status_code, r.text if r.status_code == 200 else r.json()["error"]["message"]

        for path in (
            toy["a2"],  # an absolute path outside the roots (a real adapter)
            str(outside),
            f"{root}/../outside",  # traversal
            f"{root}/fam-v1/../../outside",
            f"/proc/self/root{outside}",  # an alias of a path outside
            f"/proc/self/root{root}/fam-v1",  # an alias, even of a path inside
            str(root / "escape"),  # resolves outside
            str(root / "sneaky"),  # a file in it resolves outside
            "/etc",
            "../../../../etc",
            f"{root}/fam-v1\0",
        ):
            status, msg = load("x", path)
            assert status == 400, (path, status, msg)
            assert msg == (f"Loading lora x failed: {path} is outside the directories this server loads adapters "
                           "from (serve.adapter_roots)")  # fmt: skip
            assert str(root) not in msg.replace(path, "")  # no server path beyond what was sent
        assert app.state.serve.runtime.adapters() == []
        # inside the roots: as vLLM answers (a missing directory is 404), and loads
        assert load("x", str(root / "missing"))[0] == 404
        assert load("fam-v1", f"{root}/./fam-v1")[0] == 200
        assert load("inner", str(inner))[0] == 200
        assert [a.name for a in app.state.serve.runtime.adapters()] == ["fam-v1", "inner"]
        m = c.get("/metrics").text
        assert metric(m, "driftloop_serve_adapter_operations_total", operation="load", result="400") == 11
        assert metric(m, "driftloop_serve_adapter_operations_total", operation="load", result="ok") == 2


def test_a_vllm_promotion_of_a_retrained_adapter_loads_with_the_default_roots(
    toy: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The retrain flow: the job's adapter under <data_dir>/retrain/jobs/ is what a vllm target sends (relative
    when data_dir is, as in the demo); it loads without configuring serve.adapter_roots, elsewhere it does not."""
    import shutil

    from driftloop.connectors import Promotion, PromotionError, TargetSettings
    from driftloop.connectors.vllm import VllmPromotionTarget
    from driftloop.retrain.runner import artifacts_dir

    monkeypatch.chdir(tmp_path)
    s = settings_for(toy, adapter_roots=None, log_records=False)
    s = s.model_copy(update={"data_dir": "data"})  # relative, like the demo's driftloop-data/demo
    job_adapter = artifacts_dir(s) / "jobs" / "job-1" / "adapter"
    shutil.copytree(toy["a1"], job_adapter)
    app = create_serve_app(s)

    def promotion(version: str, adapter: str) -> Promotion:
        return Promotion(family="fam", version=version, adapter_path=adapter, base_model=toy["base"],
                         previous_version=None, previous_adapter_path=None, reason="test")  # fmt: skip

    with UvicornThread(app) as srv:
        target = VllmPromotionTarget(TargetSettings(name="serve", type="vllm", url=f"{srv.url}/v1", retries=0))
        try:
            target.apply(promotion("v1", str(job_adapter)))
            assert target.loaded_adapters() == {"fam-v1": "data/retrain/jobs/job-1/adapter"}
            with pytest.raises(PromotionError, match=r"is outside the directories this server loads adapters from"):
                target.apply(promotion("v2", toy["a2"]))  # not under the artifacts or serving directory
        finally:
            target.close()
    assert app.state.serve.runtime.active == "fam-v1"


def test_default_adapter_roots_follow_the_promotion_flow(tmp_path: Path) -> None:
    from driftloop.serve import adapter_roots

    s = load_settings(None, data_dir=str(tmp_path / "data"), serve={"serving_dir": str(tmp_path / "serving")})
    assert adapter_roots(s) == [str(tmp_path / "data" / "retrain"), str(tmp_path / "serving")]
    s = load_settings(None, retrain={"artifacts_dir": str(tmp_path / "art")})
    assert adapter_roots(s) == [str(tmp_path / "art")]
    s = load_settings(None, serve={"adapter_roots": ["rel/dir"], "serving_dir": "/srv"})
    assert adapter_roots(s) == [os.path.abspath("rel/dir")]


# ------------------------------------------------------------------------------------ vLLM adapter endpoints


def adapter_calls(post: Callable[[str, dict[str, Any]], tuple[int, str]], a1: str, missing: str) -> list[Any]:
    """The same sequence of adapter calls, answered as (status, error message or body text)."""
    return [
        post("/v1/load_lora_adapter", {"lora_name": "fam-v1", "lora_path": a1}),
        post("/v1/load_lora_adapter", {"lora_name": "fam-v1", "lora_path": a1}),
        post("/v1/load_lora_adapter", {"lora_name": "fam-v9", "lora_path": missing}),
        post("/v1/load_lora_adapter", {"lora_name": "fam-v9"}),
        post("/v1/unload_lora_adapter", {"lora_name": "nobody"}),
        post("/v1/unload_lora_adapter", {}),
        post("/v1/unload_lora_adapter", {"lora_name": "fam-v1"}),
        post("/v1/unload_lora_adapter", {"lora_name": "fam-v1"}),
    ]


def _answer(r: Any) -> tuple[int, str]:
    try:
        body = r.json()
    except ValueError:
        return r.status_code, r.text
    return r.status_code, (body["error"]["message"], body["error"]["type"])


def test_adapter_endpoints_answer_exactly_like_vllm(toy: dict[str, str], tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-adapter")
    with VllmStub() as stub, httpx.Client(base_url=stub.url) as hc:
        expected = adapter_calls(lambda p, b: _answer(hc.post(p, json=b)), toy["a1"], missing)
    app = create_serve_app(settings_for(toy, log_records=False, adapter_roots=[toy["root"], str(tmp_path)]))
    with TestClient(app) as c:
        got = adapter_calls(lambda p, b: _answer(c.post(p, json=b)), toy["a1"], missing)
    assert got == expected
    assert [s for s, _ in got] == [200, 400, 404, 400, 404, 400, 200, 404]


def test_active_adapter_follows_loads_and_unloads(toy: dict[str, str], tmp_path: Path) -> None:
    import shutil

    alien = tmp_path / "alien"  # an adapter for another architecture: its target modules do not exist here
    shutil.copytree(toy["a1"], alien)
    cfg = json.loads((alien / "adapter_config.json").read_text())
    (alien / "adapter_config.json").write_text(json.dumps({**cfg, "target_modules": ["q_proj", "v_proj"]}))
    app = create_serve_app(settings_for(toy, log_records=False, adapter_roots=[toy["root"], str(tmp_path)]))
    prompt = {"prompt": "Where is my order 1234?", "max_tokens": 12}

    with TestClient(app) as c:

        def served(model: str = MODEL) -> tuple[str, str]:
            r = c.post("/v1/completions", json={"model": model, **prompt})
            assert r.status_code == 200, r.text
            return r.json()["system_fingerprint"], r.json()["choices"][0]["text"]

        base_v, base_text = served()
        assert base_v == "base"
        assert c.post("/v1/load_lora_adapter", json={"lora_name": "fam-v1", "lora_path": toy["a1"]}).status_code == 200
        v1_v, v1_text = served()
        assert v1_v == "fam-v1" and v1_text != base_text  # the adapter changes what the model says
        assert c.post("/v1/load_lora_adapter", json={"lora_name": "fam-v2", "lora_path": toy["a2"]}).status_code == 200
        assert served()[0] == "fam-v2"
        assert served("fam-v1") == (v1_v, v1_text)  # a loaded adapter by name, as vLLM does
        assert served("base") == (base_v, base_text)  # the base model alone, adapters still loaded
        cards = c.get("/v1/models").json()["data"]
        assert [(m["id"], m["parent"], m["root"]) for m in cards] == [
            (MODEL, None, toy["base"]),
            ("fam-v1", MODEL, toy["a1"]),
            ("fam-v2", MODEL, toy["a2"]),
        ]
        assert cards[0]["active_adapter"] == "fam-v2"
        assert c.post("/v1/unload_lora_adapter", json={"lora_name": "fam-v2"}).status_code == 200
        assert served() == (v1_v, v1_text)  # falls back to the newest remaining adapter
        assert c.post("/v1/completions", json={"model": "fam-v2", **prompt}).status_code == 404
        assert c.post("/v1/unload_lora_adapter", json={"lora_name": "fam-v1"}).status_code == 200
        assert served() == (base_v, base_text)  # and to the base model, exactly as before
        # a directory that is not an adapter, and an adapter for another model, are refused (nothing changes)
        assert c.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": toy["base"]}).status_code == 404
        r = c.post("/v1/load_lora_adapter", json={"lora_name": "alien", "lora_path": str(alien)})
        assert r.status_code == 400 and "Loading lora alien failed" in r.json()["error"]["message"]
        assert served() == (base_v, base_text) and [m["id"] for m in c.get("/v1/models").json()["data"]] == [MODEL]
        assert c.post("/v1/load_lora_adapter", json={"lora_name": "fam-v2", "lora_path": toy["a2"]}).status_code == 200
        assert c.post("/v1/load_lora_adapter", json={"lora_name": "alien", "lora_path": str(alien)}).status_code == 400
        assert served()[0] == "fam-v2" and served("base") == (base_v, base_text)
        assert c.post("/v1/unload_lora_adapter", json={"lora_name": "fam-v2"}).status_code == 200
        m = c.get("/metrics").text
        assert metric(m, "driftloop_serve_adapter_operations_total", operation="load", result="ok") == 3
        assert metric(m, "driftloop_serve_adapter_operations_total", operation="load", result="400") == 2
        assert metric(m, "driftloop_serve_adapter_operations_total", operation="unload", result="ok") == 3
        assert metric(m, "driftloop_serve_active_adapter_info", adapter="base") == 1


def test_start_up_adapter_from_the_serving_directory(toy: dict[str, str], tmp_path: Path) -> None:
    from driftloop.connectors import Promotion, TargetSettings
    from driftloop.connectors.filesystem import FilesystemPromotionTarget

    serving = tmp_path / "serving"
    fs = FilesystemPromotionTarget(TargetSettings(name="fs", type="filesystem", path=str(serving)))
    fs.apply(Promotion(family="fam", version="v1", adapter_path=toy["a1"], base_model=toy["base"],
                       previous_version=None, previous_adapter_path=None, reason="test"))  # fmt: skip
    app = create_serve_app(settings_for(toy, serving_dir=str(serving), log_records=False))
    assert app.state.serve.runtime.active == "fam-v1"
    with TestClient(app) as c:
        # the vllm target promoting the same version later finds it loaded (400 "already loaded" = done)
        r = c.post("/v1/load_lora_adapter", json={"lora_name": "fam-v1", "lora_path": toy["a1"]})
        assert r.status_code == 400 and "already been loaded" in r.json()["error"]["message"]
    # `current` at the base marker: no adapter
    fs.revert(Promotion(family="fam", version="v1", adapter_path=toy["a1"], base_model=toy["base"],
                        previous_version=None, previous_adapter_path=None, reason="test"))  # fmt: skip
    assert (
        create_serve_app(settings_for(toy, serving_dir=str(serving), log_records=False)).state.serve.runtime.active
        is None
    )


# ----------------------------------------------------------------------------------------- hot swap under load


class UvicornThread:
    """A real uvicorn server for ``app`` in a thread, on a free port."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="test-serve", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> UvicornThread:
        self.thread.start()
        wait_for(lambda: self.server.started, "uvicorn started")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def test_promotion_hot_swaps_adapters_under_load_without_failing_a_request(toy: dict[str, str]) -> None:
    from driftloop.connectors import Promotion, TargetSettings
    from driftloop.connectors.vllm import VllmPromotionTarget

    cap = CapturingLogger()
    app = create_serve_app(settings_for(toy, max_new_tokens=8), record_logger=cap)
    results: list[tuple[int, str]] = []
    spans: list[tuple[float, float]] = []
    windows: list[tuple[float, float]] = []
    errors: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def client(i: int, url: str) -> None:
        with httpx.Client(base_url=url, timeout=60) as hc:
            n = 0
            while not stop.is_set():
                n += 1
                t0 = time.monotonic()
                try:
                    r = hc.post("/v1/chat/completions", json={"model": MODEL, "max_tokens": 8, "messages": [
                        {"role": "user", "content": f"Where is my order {1000 + i * 100 + n % 100}?"}]})  # fmt: skip
                    with lock:
                        results.append((r.status_code, r.headers.get("x-driftloop-model-version", "")))
                        spans.append((t0, time.monotonic()))
                except httpx.HTTPError as e:
                    with lock:
                        errors.append(f"{type(e).__name__}: {e}")

    def overlapping(a: float, b: float) -> int:
        """Requests in flight at some point while [a, b] (a promotion) ran."""
        with lock:
            return sum(1 for s0, s1 in spans if s0 < b and s1 > a)

    def seen(version: str) -> Callable[[], bool]:
        def check() -> bool:
            with lock:
                return any(v == version for _, v in results[-20:])

        return check

    def promotion(version: str, adapter: str, prev: str | None, prev_adapter: str | None) -> Promotion:
        return Promotion(family="fam", version=version, adapter_path=adapter, base_model=toy["base"],
                         previous_version=prev, previous_adapter_path=prev_adapter, reason="test")  # fmt: skip

    with UvicornThread(app) as srv:
        health0 = httpx.get(f"{srv.url}/health").json()
        threads = [threading.Thread(target=client, args=(i, srv.url), daemon=True) for i in range(3)]
        for t in threads:
            t.start()
        target = VllmPromotionTarget(TargetSettings(name="serve", type="vllm", url=f"{srv.url}/v1"))
        try:
            target.check()
            wait_for(seen("base"), "requests served by the base model")
            p1 = promotion("v1", toy["a1"], "v0", None)
            t = time.monotonic()
            target.apply(p1)
            windows.append((t, time.monotonic()))
            wait_for(seen("fam-v1"), "requests served by fam-v1 after promoting v1")
            p2 = promotion("v2", toy["a2"], "v1", toy["a1"])
            t = time.monotonic()
            target.apply(p2)  # loads fam-v2, then unloads fam-v1
            windows.append((t, time.monotonic()))
            wait_for(seen("fam-v2"), "requests served by fam-v2 after promoting v2")
            assert target.loaded_adapters() == {"fam-v2": toy["a2"]}
            target.revert(p2)  # rollback: fam-v1 again, fam-v2 unloaded
            n_before = len(results)
            wait_for(lambda: len(results) > n_before + 5 and seen("fam-v1")(), "fam-v1 serving after the revert")
            assert target.loaded_adapters() == {"fam-v1": toy["a1"]}
        finally:
            stop.set()
            for t in threads:
                t.join(60)
            target.close()
        health1 = httpx.get(f"{srv.url}/health").json()
        m = httpx.get(f"{srv.url}/metrics").text

    assert errors == []
    statuses = [s for s, _ in results]
    assert statuses and set(statuses) == {200}, (
        f"{len(statuses)} requests, failures: {[s for s in statuses if s != 200]}"
    )
    assert all(overlapping(a, b) >= 1 for a, b in windows)  # the swaps happened under load
    versions = {v for _, v in results}
    assert {"base", "fam-v1", "fam-v2"} <= versions
    # one server process and app instance throughout: hot-loaded, never restarted
    assert (health1["instance"], health1["pid"], health1["started_at"]) == (
        health0["instance"],
        health0["pid"],
        health0["started_at"],
    )
    assert metric(m, "driftloop_serve_adapter_operations_total", operation="load", result="ok") == 3
    assert metric(m, "driftloop_serve_adapter_operations_total", operation="unload", result="ok") == 2
    assert metric(m, "driftloop_serve_active_adapter_info", adapter="fam-v1") == 1
    logged = {r["model_version"] for r in cap.records}
    assert {"base", "fam-v1", "fam-v2"} <= logged and len(cap.records) == len(results)


# -------------------------------------------------------------------------------------------------- Kafka down


def consume(bootstrap: str, topic: str, want: set[str]) -> dict[str, dict[str, Any]]:
    """Records of ``topic`` by request_id, read from the beginning until every id in ``want`` arrived."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                      auto_offset_reset="earliest")  # fmt: skip
    out: dict[str, dict[str, Any]] = {}
    try:
        wait_for(lambda: bool(c.partitions_for_topic(topic)), f"topic {topic} exists")
        c.assign([TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or ())])
        deadline = time.monotonic() + 60  # a guard against hanging, not a timing assertion
        while not want <= out.keys() and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=500).values():
                for r in recs:
                    rec = json.loads(r.value)
                    key = rec["request_id"] + (":feedback" if rec.get("type") == "feedback" else "")
                    out[key] = rec
    finally:
        c.close()
    return out


@pytest.fixture
def broker() -> Iterator[LocalTansu]:
    b = LocalTansu().start()
    try:
        yield b
    finally:
        b.stop()


@pytest.mark.kafka  # its own Tansu (stopped and restarted)
def test_kafka_outage_never_fails_requests_and_logging_resumes(toy: dict[str, str], broker: LocalTansu) -> None:
    from driftloop.broker import ensure_topics

    topic = f"serve-logs-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker.bootstrap, [topic], partitions=1)
    s = load_settings(None, kafka={"bootstrap_servers": [broker.bootstrap], "topics": [topic], "topic_partitions": 1,
                                   "producer": {"request_timeout_ms": 1500, "delivery_timeout_ms": 3000,
                                                "max_block_ms": 1000, "bootstrap_timeout_ms": 1000}},
                      serve={"base_model": toy["base"], "model_id": MODEL, "max_new_tokens": 6, "buffer_size": 4})  # fmt: skip
    app = create_serve_app(s)
    logger: RecordLogger = app.state.serve.logger

    def ask(c: TestClient, i: int) -> str:
        r = c.post("/v1/completions", json={"model": MODEL, "prompt": f"What is {i} plus 2?"})
        assert r.status_code == 200, r.text
        return str(r.json()["id"])

    with TestClient(app) as c:
        up = [ask(c, i) for i in range(3)]
        wait_for(lambda: logger.stats().sent == 3, "the first records delivered")

        broker.stop()
        down = [ask(c, i) for i in range(10, 20)]  # every request succeeds while the broker is down
        st = logger.stats()
        assert st.buffered == 4 and st.dropped == 6 and st.sent == 3
        m = c.get("/metrics").text
        assert metric(m, "driftloop_serve_log_records_dropped_total") == 6
        assert metric(m, "driftloop_serve_log_records_buffered") == 4
        assert metric(m, "driftloop_serve_requests_total", endpoint="/v1/completions", status="200") == 13
        health = c.get("/health").json()["log_records"]
        assert {k: health[k] for k in ("sent", "dropped", "buffered", "truncated", "rejected")} == {
            "sent": 3, "dropped": 6, "buffered": 4, "truncated": 0, "rejected": {}}  # fmt: skip
        wait_for(lambda: logger.stats().last_error is not None, "the failed delivery noted")
        assert str(c.get("/health").json()["log_records"]["last_error"]).startswith("broker unreachable: ")

        broker.start()  # same port, memory storage: the topic is gone, the logger creates it again
        wait_for(lambda: logger.stats().buffered == 0, "the buffered records delivered after the broker returned")
        after = [ask(c, i) for i in range(30, 32)]
        fb = c.post("/v1/feedback", json={"request_id": after[0], "score": 0, "correction": "32 plus 2 is 34."})
        assert fb.status_code == 202 and fb.json()["queued"] is True
        wait_for(lambda: logger.stats().buffered == 0 and logger.stats().sent == 10, "the new records delivered")
        m = c.get("/metrics").text
        assert metric(m, "driftloop_serve_log_records_sent_total") == 10
        assert metric(m, "driftloop_serve_log_records_send_errors_total") >= 1

    want = set(down[:4]) | set(after) | {after[0] + ":feedback"}
    got = consume(broker.bootstrap, topic, want)
    assert want <= got.keys()
    assert not set(down[4:]) & got.keys()  # the overflow was dropped (and counted), not sent
    assert not set(up) & got.keys()  # delivered before the outage, lost with the broker's memory
    for key in want:
        kind, row = decode(got[key])
        if key.endswith(":feedback"):
            assert kind == "feedback" and row["score"] == 0
        else:
            assert kind == "interaction" and row["model_id"] == MODEL and row["model_version"] == "base"
            assert row["tokens_out"] >= 1 and row["ts"] <= datetime.now(UTC)


# ----------------------------------------------------------------------------- request size and log record cap


def completion_body(blob_chars: int, prompt: str = "What is 2 plus 2?") -> bytes:
    return json.dumps({"model": MODEL, "prompt": prompt, "max_tokens": 4,
                       "metadata": {"blob": "x" * blob_chars, "tenant": "t1"}}).encode()  # fmt: skip


def too_large(limit: int) -> dict[str, Any]:
    return {"error": {"message": f"Request body too large: this server accepts at most {limit} bytes "
                                 "(serve.max_body_bytes)", "type": "RequestTooLargeError", "param": None,
                      "code": 413}}  # fmt: skip


def test_a_huge_request_is_413_and_an_oversized_log_record_is_truncated_then_logging_continues(
    toy: dict[str, str], kafka_bootstrap: str
) -> None:
    """Issue 12 (d): one request with 17 MB of metadata used to stall the server's Kafka logging for good."""
    from driftloop.broker import ensure_topics
    from driftloop.client import TRUNCATED_KEY
    from tests.test_client import topic_records

    topic = f"serve-big-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_bootstrap, [topic], partitions=1)
    s = load_settings(None, kafka={"bootstrap_servers": [kafka_bootstrap], "topics": [topic], "topic_partitions": 1},
                      serve={"base_model": toy["base"], "model_id": MODEL, "max_new_tokens": 4})  # fmt: skip
    limit = s.serve.max_body_bytes
    assert limit == 8 * 1024 * 1024 and s.serve.max_log_record_bytes == 1_000_000
    app = create_serve_app(s)
    logger: RecordLogger = app.state.serve.logger
    json_ct = {"content-type": "application/json"}

    with TestClient(app) as c:
        huge = completion_body(17_000_000)
        r = c.post("/v1/completions", content=huge, headers=json_ct)
        assert r.status_code == 413 and r.json() == too_large(limit)
        r = c.post("/v1/completions", content=iter([huge[: 1 << 20], huge[1 << 20 :]]), headers=json_ct)
        assert "content-length" not in r.request.headers  # chunked: counted as it arrives
        assert r.status_code == 413 and r.json() == too_large(limit)

        near = completion_body(limit - 200)  # just under the body limit, far over the log record cap
        assert limit - 100 < len(near) <= limit
        r = c.post("/v1/completions", content=near, headers=json_ct)
        assert r.status_code == 200, r.text
        big_id = r.json()["id"]
        small = completion_body(10, "What is 3 plus 4?")
        r = c.post("/v1/completions", content=iter([small[:20], small[20:]]), headers=json_ct)
        assert r.status_code == 200, r.text
        ids = [big_id, r.json()["id"]]
        for i in range(3):  # normal traffic afterwards
            r = c.post("/v1/completions", json={"model": MODEL, "prompt": f"What is {i} plus 1?", "max_tokens": 4})
            assert r.status_code == 200, r.text
            ids.append(r.json()["id"])

        assert logger.flush(60), logger.stats()
        st = logger.stats()
        assert (st.sent, st.truncated, st.rejected, st.dropped, st.buffered, st.invalid) == (5, 1, 0, 0, 0, 0)
        assert st.send_errors == 0 and st.last_error is None and st.last_rejected is None
        m = c.get("/metrics").text
        assert metric(m, "driftloop_serve_requests_total", endpoint="/v1/completions", status="413") == 2
        assert metric(m, "driftloop_serve_requests_total", endpoint="/v1/completions", status="200") == 5
        assert metric(m, "driftloop_serve_log_records_truncated_total") == 1
        assert metric(m, "driftloop_serve_log_records_rejected_total", reason="record too large") == 0
        health = c.get("/health").json()["log_records"]
        assert (health["sent"], health["truncated"], health["rejected"]) == (5, 1, {})

    records = topic_records(kafka_bootstrap, topic)
    assert [r["request_id"] for r in records] == ids  # every answered request logged, exactly once, in order
    big = records[0]
    assert len(json.dumps(big, ensure_ascii=False, separators=(",", ":")).encode()) <= 1_000_000
    assert big["metadata"][TRUNCATED_KEY] == {"metadata.blob": limit - 200 + 2}
    assert big["metadata"]["tenant"] == "t1" and big["metadata"]["endpoint"] == "completions"
    assert big["prompt"] == "What is 2 plus 2?" and big["tokens_out"] >= 1
    for rec in records:
        kind, row = decode(rec)
        assert kind == "interaction" and row["model_id"] == MODEL


def test_body_limit_over_real_http_content_length_and_chunked(toy: dict[str, str]) -> None:
    """A real client gets the 413 (not a reset connection) while it is still sending, with or without a length."""
    app = create_serve_app(settings_for(toy, log_records=False, max_body_bytes=1024 * 1024))
    huge = completion_body(17_000_000)

    def chunked(data: bytes) -> Iterator[bytes]:
        for i in range(0, len(data), 256 * 1024):
            yield data[i : i + 256 * 1024]

    with UvicornThread(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as hc:
        r = hc.post("/v1/completions", content=huge, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json() == too_large(1024 * 1024)
        r = hc.post("/v1/completions", content=chunked(huge), headers={"content-type": "application/json"})
        assert "content-length" not in r.request.headers
        assert r.status_code == 413 and r.json() == too_large(1024 * 1024)
        ok = completion_body(900 * 1024)
        r = hc.post("/v1/completions", content=chunked(ok), headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        assert hc.get("/health").status_code == 200  # the connection and the server are fine


def test_serve_command_is_registered() -> None:
    from typer.testing import CliRunner

    from driftloop.cli import app

    r = CliRunner().invoke(app, ["serve", "--help"])
    assert r.exit_code == 0, r.output
    assert "--base-model" in r.output and "--adapter" in r.output
