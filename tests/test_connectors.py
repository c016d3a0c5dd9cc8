"""Promotion targets: one contract suite for every target type, plus what is specific to each."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from driftloop.broker import free_port
from driftloop.connectors import Promotion, PromotionError, PromotionTarget, TargetSettings, build_target, build_targets
from driftloop.connectors.filesystem import FilesystemPromotionTarget
from driftloop.connectors.kafka_event import KafkaPromotionTarget
from driftloop.connectors.vllm import LOAD, UNLOAD, VllmPromotionTarget
from tests.vllm_stub import VllmStub

FAMILY = "support-bot"


def make_adapter(root: Path, label: str, size: int = 4096) -> str:
    """A LoRA-like adapter directory whose files all name ``label`` (so a reader can check it is complete)."""
    d = root / "adapters" / label
    d.mkdir(parents=True)
    (d / "adapter_config.json").write_text(json.dumps({"r": 8, "label": label}))
    (d / "adapter_model.safetensors").write_bytes(label.encode().ljust(16, b".") * (size // 16))
    (d / "tokenizer").mkdir()
    (d / "tokenizer" / "vocab.txt").write_text(label)
    return str(d)


def promo(version: str, adapter: str | None, prev: str | None = None, prev_adapter: str | None = None) -> Promotion:
    return Promotion(family=FAMILY, version=version, adapter_path=adapter, base_model="/models/base",
                     previous_version=prev, previous_adapter_path=prev_adapter, reason="gate passed: test",
                     at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC))  # fmt: skip


def read_topic(bootstrap: str, topic: str, count: int) -> list[Any]:
    """The first ``count`` records of ``topic`` (Tansu: count what was produced, never trust end_offsets)."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                      auto_offset_reset="earliest", consumer_timeout_ms=1000)  # fmt: skip
    try:
        parts = c.partitions_for_topic(topic) or set()
        c.assign([TopicPartition(topic, p) for p in sorted(parts)])
        out: list[Any] = []
        deadline = time.monotonic() + 60  # a guard against hanging, not a timing assertion
        while len(out) < count and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=500).values():
                out.extend(recs)
        assert len(out) >= count, f"only {len(out)} of {count} records arrived on {topic}"
        return sorted(out, key=lambda r: (r.partition, r.offset))
    finally:
        c.close()


# -- the contract suite --------------------------------------------------------------------------------------


class Env:
    """A target plus a way to ask what it serves (lora name, or None for the base model alone)."""

    def __init__(self, target: PromotionTarget, tmp: Path) -> None:
        self.target = target
        self.tmp = tmp
        self.sent = 0

    def apply(self, p: Promotion) -> None:
        self.target.apply(p)
        self.sent += 1

    def revert(self, p: Promotion) -> None:
        self.target.revert(p)
        self.sent += 1

    def serving(self) -> str | None:
        raise NotImplementedError


class FsEnv(Env):
    def serving(self) -> str | None:
        assert isinstance(self.target, FilesystemPromotionTarget)
        cur = self.target.current()
        assert cur is not None
        pointer = json.loads((self.target.root / "current.json").read_text())
        assert pointer["serving"]["dir"] == cur
        name = Path(cur).name
        return None if name == "_base" else name


class VllmEnv(Env):
    def __init__(self, target: PromotionTarget, tmp: Path, stub: VllmStub) -> None:
        super().__init__(target, tmp)
        self.stub = stub

    def serving(self) -> str | None:
        assert isinstance(self.target, VllmPromotionTarget)
        loaded = self.target.loaded_adapters()
        assert loaded == self.stub.loaded
        assert len(loaded) <= 1, f"more than one adapter loaded: {loaded}"
        return next(iter(loaded), None)


class KafkaEnv(Env):
    def __init__(self, target: PromotionTarget, tmp: Path, bootstrap: str, topic: str) -> None:
        super().__init__(target, tmp)
        self.bootstrap, self.topic = bootstrap, topic

    def serving(self) -> str | None:
        last = json.loads(read_topic(self.bootstrap, self.topic, self.sent)[-1].value)
        return last["lora_name"] if last["event"] == "ModelPromoted" else last["previous_lora_name"]


@pytest.fixture(params=["filesystem", "vllm", pytest.param("kafka", marks=pytest.mark.kafka)])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    if request.param == "filesystem":
        ts = TargetSettings(name="fs", type="filesystem", path=str(tmp_path / "serve"))
        yield FsEnv(build_target(ts), tmp_path)
    elif request.param == "vllm":
        with VllmStub() as stub:
            ts = TargetSettings(name="vllm", type="vllm", url=stub.url, backoff_s=0)
            yield VllmEnv(build_target(ts), tmp_path, stub)
    else:
        bootstrap = request.getfixturevalue("kafka_bootstrap")
        topic = f"promotions-{uuid.uuid4().hex[:8]}"
        ts = TargetSettings(name="events", type="kafka", topic=topic, timeout_s=30)
        t = build_target(ts, default_bootstrap=[bootstrap])
        yield KafkaEnv(t, tmp_path, bootstrap, topic)
        t.close()


def test_contract_apply_serves_the_new_version(env: Env) -> None:
    a1, a2 = make_adapter(env.tmp, "a1"), make_adapter(env.tmp, "a2")
    env.target.check()
    env.apply(promo("v1", a1))
    assert env.serving() == f"{FAMILY}-v1"
    env.apply(promo("v2", a2, "v1", a1))
    assert env.serving() == f"{FAMILY}-v2"


def _serve_v1_then_v2(env: Env) -> Promotion:
    """Apply v1, then v2 over it (the promotion returned, to apply or revert again)."""
    a1, a2 = make_adapter(env.tmp, "a1"), make_adapter(env.tmp, "a2")
    env.apply(promo("v1", a1))
    p = promo("v2", a2, "v1", a1)
    env.apply(p)
    return p


def test_contract_apply_twice_is_idempotent(env: Env) -> None:
    env.apply(_serve_v1_then_v2(env))
    assert env.serving() == f"{FAMILY}-v2"


def test_contract_revert_returns_to_previous(env: Env) -> None:
    p = _serve_v1_then_v2(env)
    env.revert(p)
    assert env.serving() == f"{FAMILY}-v1"
    env.revert(p)  # idempotent
    assert env.serving() == f"{FAMILY}-v1"


def test_contract_base_model_versions(env: Env) -> None:
    """The base model alone (no adapter) on either side of a promotion."""
    a1 = make_adapter(env.tmp, "a1")
    p = promo("v1", a1, "v0", None)
    env.apply(p)
    assert env.serving() == f"{FAMILY}-v1"
    env.revert(p)
    assert env.serving() is None
    env.apply(p)
    back = promo("v0", None, "v1", a1)  # a rollback is a promotion of the base version
    env.apply(back)
    assert env.serving() is None


def test_contract_revert_of_an_unapplied_first_promotion_is_harmless(env: Env) -> None:
    p = promo("v1", make_adapter(env.tmp, "a1"))
    env.revert(p)
    assert env.serving() is None


# -- filesystem ------------------------------------------------------------------------------------------------


def fs_target(tmp_path: Path) -> FilesystemPromotionTarget:
    return FilesystemPromotionTarget(TargetSettings(name="fs", type="filesystem", path=str(tmp_path / "serve")))


def test_filesystem_layout_and_pointer_file(tmp_path: Path) -> None:
    t = fs_target(tmp_path)
    a1 = make_adapter(tmp_path, "a1")
    t.apply(promo("v1", a1, "v0", None))
    root = tmp_path / "serve"
    assert os.readlink(root / "current") == "versions/support-bot-v1"  # relative: the directory can move
    assert (root / "current" / "adapter_model.safetensors").read_bytes() == Path(
        a1, "adapter_model.safetensors"
    ).read_bytes()
    assert (root / "current" / "tokenizer" / "vocab.txt").read_text() == "a1"
    pointer = json.loads((root / "current.json").read_text())
    assert pointer["event"] == "ModelPromoted" and pointer["version"] == "v1" and pointer["previous_version"] == "v0"
    assert pointer["serving"] == {
        "version": "v1",
        "dir": "versions/support-bot-v1",
        "adapter": "versions/support-bot-v1",
    }
    t.revert(promo("v1", a1, "v0", None))
    assert os.readlink(root / "current") == "versions/_base"
    assert json.loads((root / "versions" / "_base" / "base_model.json").read_text())["base_model"] == "/models/base"
    pointer = json.loads((root / "current.json").read_text())
    assert pointer["event"] == "ModelPromotionReverted" and pointer["serving"]["version"] == "v0"
    assert not [p.name for p in root.iterdir() if ".tmp-" in p.name]
    assert not [p.name for p in (root / "versions").iterdir() if p.name.startswith(".tmp-")]


def test_filesystem_copy_is_skipped_when_present_and_conflicts_are_refused(tmp_path: Path) -> None:
    t = fs_target(tmp_path)
    a1 = make_adapter(tmp_path, "a1")
    p = promo("v1", a1)
    t.apply(p)
    copied = tmp_path / "serve" / "versions" / "support-bot-v1"
    marker = copied / "kept"
    marker.write_text("")  # the copy is reused, not redone ...
    (Path(a1) / "kept").write_text("")  # ... as long as the manifests agree
    t.apply(p)
    assert marker.exists()
    Path(a1, "adapter_model.safetensors").write_bytes(b"retrained under the same label")
    with pytest.raises(PromotionError, match="version labels must not be reused"):
        t.apply(p)


def test_filesystem_missing_adapter_and_foreign_current(tmp_path: Path) -> None:
    t = fs_target(tmp_path)
    with pytest.raises(PromotionError, match=r"adapter directory .*nope of version v1 does not exist"):
        t.apply(promo("v1", str(tmp_path / "nope")))
    assert t.current() is None
    a1, a2, a3 = (make_adapter(tmp_path, n) for n in ("a1", "a2", "a3"))
    t.apply(promo("v1", a1))
    t.apply(promo("v3", a3, "v1", a1))
    with pytest.raises(PromotionError, match="refusing to revert over a later promotion"):
        t.revert(promo("v2", a2, "v1", a1))
    assert t.current() == "versions/support-bot-v3"


def test_filesystem_revert_recopies_a_previous_version_it_never_saw(tmp_path: Path) -> None:
    t = fs_target(tmp_path)
    a1, a2 = make_adapter(tmp_path, "a1"), make_adapter(tmp_path, "a2")
    p = promo("v2", a2, "v1", a1)  # v1 was served before this target was configured
    t.apply(p)
    t.revert(p)
    assert t.current() == "versions/support-bot-v1"
    assert (tmp_path / "serve" / "current" / "tokenizer" / "vocab.txt").read_text() == "a1"


def test_filesystem_pointer_switch_is_atomic(tmp_path: Path) -> None:
    """A reader resolving ``current`` during 50 promotions always finds a complete version directory."""
    t = fs_target(tmp_path)
    labels = [f"a{i}" for i in range(50)]
    adapters = [make_adapter(tmp_path, lb, size=64 * 1024) for lb in labels]
    t.apply(promo("v0", adapters[0]))
    current = tmp_path / "serve" / "current"
    problems: list[str] = []
    seen: set[str] = set()
    reads = 0
    started, stop = threading.Event(), threading.Event()

    def reader() -> None:
        nonlocal reads
        started.set()
        while True:
            last_round = stop.is_set()
            try:
                target = os.readlink(current)
                d = current.parent / target
                label = json.loads((d / "adapter_config.json").read_text())["label"]
                body = (d / "adapter_model.safetensors").read_bytes()
                vocab = (d / "tokenizer" / "vocab.txt").read_text()
                if body != label.encode().ljust(16, b".") * (64 * 1024 // 16) or vocab != label:
                    problems.append(f"{target}: incomplete or mixed files")
                seen.add(label)
            except (OSError, ValueError, KeyError) as e:
                problems.append(f"{type(e).__name__}: {e}")
            reads += 1
            if last_round:
                return

    th = threading.Thread(target=reader)
    th.start()
    started.wait()
    for i in range(1, 50):
        t.apply(promo(f"v{i}", adapters[i], f"v{i - 1}", adapters[i - 1]))
    stop.set()
    th.join()
    assert problems == []
    assert reads > 0 and "a49" in seen  # the last read happened after the last switch
    assert len(list((tmp_path / "serve" / "versions").iterdir())) == 50


def test_filesystem_check(tmp_path: Path) -> None:
    fs_target(tmp_path).check()
    blocker = tmp_path / "file"
    blocker.write_text("")
    bad = FilesystemPromotionTarget(TargetSettings(name="fs", type="filesystem", path=str(blocker / "serve")))
    with pytest.raises(PromotionError, match="is not writable"):
        bad.check()


# -- vLLM ------------------------------------------------------------------------------------------------------


def vllm_target(stub: VllmStub, **kw: Any) -> VllmPromotionTarget:
    settings: dict[str, Any] = {"name": "vllm", "type": "vllm", "url": stub.url + "/v1/", "backoff_s": 0, **kw}
    return VllmPromotionTarget(TargetSettings(**settings))


def test_vllm_loads_new_then_unloads_previous(tmp_path: Path) -> None:
    a1, a2 = make_adapter(tmp_path, "a1"), make_adapter(tmp_path, "a2")
    with VllmStub() as stub:
        t = vllm_target(stub)
        t.apply(promo("v1", a1))
        t.apply(promo("v2", a2, "v1", a1))
        assert stub.loaded == {"support-bot-v2": a2}
        posts = [(r.path, r.json) for r in stub.requests if r.method == "POST"]
        assert posts == [
            (LOAD, {"lora_name": "support-bot-v1", "lora_path": a1}),
            (LOAD, {"lora_name": "support-bot-v2", "lora_path": a2}),
            (UNLOAD, {"lora_name": "support-bot-v1"}),
        ]
        assert all("authorization" not in r.headers for r in stub.requests)
        keep = vllm_target(stub, unload_previous=False)
        keep.apply(promo("v3", a1, "v2", a2))
        assert set(stub.loaded) == {"support-bot-v2", "support-bot-v3"}


def test_vllm_already_loaded_counts_as_success(tmp_path: Path) -> None:
    a1 = make_adapter(tmp_path, "a1")
    with VllmStub() as stub:
        t = vllm_target(stub)
        t.apply(promo("v1", a1))
        t.apply(promo("v1", a1))
        answers = stub.calls(LOAD)
        assert len(answers) == 2 and stub.loaded == {"support-bot-v1": a1}


def test_vllm_retries_5xx_and_dropped_connections(tmp_path: Path) -> None:
    a1 = make_adapter(tmp_path, "a1")
    with VllmStub() as stub:
        stub.fail_next(2, status=500)
        stub.fail_next(1, status=None)  # then the connection drops once
        vllm_target(stub, retries=3).apply(promo("v1", a1))
        assert len(stub.calls(LOAD)) == 4 and stub.loaded == {"support-bot-v1": a1}


def test_vllm_gives_up_after_its_retries(tmp_path: Path) -> None:
    a1 = make_adapter(tmp_path, "a1")
    with VllmStub() as stub:
        stub.fail_next(10, status=503)
        with pytest.raises(PromotionError, match=r"failed after 3 attempt\(s\): HTTP 503: injected failure"):
            vllm_target(stub, retries=2).apply(promo("v1", a1))
        assert len(stub.calls(LOAD)) == 3 and stub.loaded == {}
        stub.down()
        with pytest.raises(PromotionError, match=r"failed after 2 attempt\(s\): ConnectionError.*server is up"):
            vllm_target(stub, retries=1).apply(promo("v1", a1))
        with pytest.raises(PromotionError, match="ConnectionError"):
            vllm_target(stub, retries=0).check()


def test_vllm_client_error_fails_at_once_with_the_server_message(tmp_path: Path) -> None:
    with VllmStub() as stub:
        missing = str(tmp_path / "not-there")
        with pytest.raises(PromotionError) as ei:
            vllm_target(stub, retries=5).apply(promo("v1", missing))
        msg = str(ei.value)
        assert f"HTTP 404: Loading lora support-bot-v1 failed: No adapter found for {missing}" in msg
        assert "must exist on the server's machine" in msg and ei.value.target == "vllm"
        assert len(stub.calls(LOAD)) == 1  # a 4xx is not retried


def test_vllm_adapter_api_disabled_is_explained(tmp_path: Path) -> None:
    with VllmStub(runtime_lora=False) as stub, pytest.raises(PromotionError, match="VLLM_ALLOW_RUNTIME_LORA_UPDATING"):
        vllm_target(stub).apply(promo("v1", make_adapter(tmp_path, "a1")))


def test_vllm_bearer_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a1 = make_adapter(tmp_path, "a1")
    with VllmStub(api_key="s3cret") as stub:
        monkeypatch.setenv("VLLM_KEY_FOR_TEST", "s3cret")
        t = vllm_target(stub, api_key_env="VLLM_KEY_FOR_TEST")
        t.check()
        t.apply(promo("v1", a1))
        assert stub.loaded == {"support-bot-v1": a1}
        assert {r.headers["authorization"] for r in stub.requests} == {"Bearer s3cret"}
        with pytest.raises(PromotionError, match=r"HTTP 401: Unauthorized \(set api_key or api_key_env"):
            vllm_target(stub, api_key="wrong").apply(promo("v2", a1, "v1", a1))
        monkeypatch.delenv("VLLM_KEY_FOR_TEST")
        with pytest.raises(PromotionError, match="environment variable VLLM_KEY_FOR_TEST"):
            t.apply(promo("v1", a1))


def test_vllm_failed_unload_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    a1, a2 = make_adapter(tmp_path, "a1"), make_adapter(tmp_path, "a2")
    with VllmStub() as stub:
        t = vllm_target(stub, retries=1)
        t.apply(promo("v1", a1))
        stub.fail_next(5, status=500, path=UNLOAD)
        with caplog.at_level(logging.WARNING, logger="driftloop.connectors"):
            t.apply(promo("v2", a2, "v1", a1))  # no exception: v2 serves
        assert set(stub.loaded) == {"support-bot-v1", "support-bot-v2"}
        assert "previous adapter support-bot-v1 is still loaded" in caplog.text


def test_vllm_revert_loads_previous_and_unloads_new(tmp_path: Path) -> None:
    a1, a2 = make_adapter(tmp_path, "a1"), make_adapter(tmp_path, "a2")
    with VllmStub() as stub:
        t = vllm_target(stub)
        t.apply(promo("v1", a1))
        p = promo("v2", a2, "v1", a1)
        t.apply(p)
        stub.requests.clear()
        t.revert(p)
        assert [(r.path, r.json["lora_name"]) for r in stub.requests] == [
            (LOAD, "support-bot-v1"),
            (UNLOAD, "support-bot-v2"),
        ]
        assert stub.loaded == {"support-bot-v1": a1}


def test_vllm_models_listing_like_vllm(tmp_path: Path) -> None:
    import requests

    with VllmStub(base_model="base") as stub:
        vllm_target(stub).apply(promo("v1", make_adapter(tmp_path, "a1")))
        data = requests.get(stub.url + "/v1/models", timeout=10).json()["data"]
        assert [(m["id"], m["parent"]) for m in data] == [("base", None), ("support-bot-v1", "base")]


# -- Kafka -----------------------------------------------------------------------------------------------------


def test_kafka_events_on_the_topic(kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = f"promotions-{uuid.uuid4().hex[:8]}"
    t = KafkaPromotionTarget(
        TargetSettings(name="events", type="kafka", topic=topic, bootstrap_servers=kafka_bootstrap)
    )
    try:
        t.check()
        a1, a2 = make_adapter(tmp_path, "a1"), make_adapter(tmp_path, "a2")
        p = promo("v2", a2, "v1", a1)
        t.apply(p)
        t.revert(p)
    finally:
        t.close()
    recs = read_topic(kafka_bootstrap, topic, 2)
    assert [r.key for r in recs] == [b"support-bot", b"support-bot"]
    assert [dict(r.headers)["event"] for r in recs] == [b"ModelPromoted", b"ModelPromotionReverted"]
    first, second = (json.loads(r.value) for r in recs)
    assert first == {
        "event": "ModelPromoted",
        "family": "support-bot",
        "version": "v2",
        "lora_name": "support-bot-v2",
        "adapter_path": a2,
        "base_model": "/models/base",
        "previous_version": "v1",
        "previous_lora_name": "support-bot-v1",
        "previous_adapter_path": a1,
        "reason": "gate passed: test",
        "at": "2025-01-02T03:04:05+00:00",
    }
    assert second == {**first, "event": "ModelPromotionReverted"}


def test_kafka_unreachable_broker_is_a_promotion_error() -> None:
    port = free_port()  # nothing listens there
    ts = TargetSettings(name="events", type="kafka", topic="t", timeout_s=2, retries=0, backoff_s=0)
    t = build_target(ts, default_bootstrap=[f"127.0.0.1:{port}"])
    with pytest.raises(
        PromotionError, match=rf"events: no Kafka bootstrap server accepts connections \(127\.0\.0\.1:{port}"
    ):
        t.apply(promo("v1", None))
    with pytest.raises(PromotionError, match="check that the broker is reachable"):
        t.check()


# -- Promotion and settings ------------------------------------------------------------------------------------


def test_promotion_names_and_payload() -> None:
    p = Promotion(family="support bot/EU", version="v3 (rc)", adapter_path="/a", base_model="/b",
                  previous_version="v2", previous_adapter_path=None, reason="manual")  # fmt: skip
    assert p.lora_name() == "support-bot-EU-v3-rc-"
    assert p.previous_lora_name() is None  # v2 was the base model alone: nothing to load by name
    assert promo("v2", "/a", "v1", "/p").previous_lora_name() == "support-bot-v1"
    assert promo("v1", "/a").previous_lora_name() is None
    body = json.loads(json.dumps(p.payload()))
    assert body["event"] == "ModelPromoted" and body["at"].endswith("+00:00")
    assert p.payload("ModelPromotionReverted")["event"] == "ModelPromotionReverted"
    with pytest.raises(ValueError, match="non-empty family and version"):
        promo("", None)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"type": "filesystem"}, "a filesystem target needs path"),
        ({"type": "vllm"}, "a vllm target needs url"),
        ({"type": "kafka"}, "a kafka target needs topic"),
        ({"type": "vllm", "url": "vllm:8000"}, "url must start with http:// or https://"),
        ({"type": "vllm", "url": "http://v", "api_key": "a", "api_key_env": "B"}, "not both"),
        ({"type": "filesystem", "path": "/s", "url": "http://v"}, "url applies to vllm targets only"),
        ({"type": "vllm", "url": "http://v", "topic": "t"}, "topic applies to kafka targets only"),
        ({"type": "kafka", "topic": "t", "bootstrap_servers": []}, "bootstrap_servers is empty"),
        ({"type": "kafka", "topic": "t", "retries": 11}, "less than or equal to 10"),
        ({"type": "kafka", "topic": "t", "colour": "red"}, "Extra inputs are not permitted"),
        ({"type": "s3", "path": "/s"}, "'filesystem', 'vllm' or 'kafka'"),
        ({"type": "filesystem", "path": "/s", "name": ""}, "at least 1 character"),
    ],
)
def test_settings_say_what_is_wrong(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TargetSettings(**{"name": "t", **fields})


def test_settings_normalise_and_build() -> None:
    v = TargetSettings(name="v", type="vllm", url="https://vllm.internal:8000/v1/")
    assert v.url == "https://vllm.internal:8000" and v.retries == 3 and v.unload_previous is True
    k = TargetSettings(name="k", type="kafka", topic="t", bootstrap_servers="a:9092, b:9092")
    assert k.bootstrap_servers == ["a:9092", "b:9092"]
    targets = build_targets([TargetSettings(name="fs", type="filesystem", path="/srv"), v, k])
    assert list(targets) == ["fs", "v", "k"]
    assert isinstance(targets["fs"], FilesystemPromotionTarget) and isinstance(targets["v"], VllmPromotionTarget)
    kt = targets["k"]
    assert isinstance(kt, KafkaPromotionTarget) and kt.bootstrap == ["a:9092", "b:9092"]
    kd = build_target(TargetSettings(name="k2", type="kafka", topic="t"), default_bootstrap=["c:9092"])
    assert isinstance(kd, KafkaPromotionTarget) and kd.bootstrap == ["c:9092"]
    with pytest.raises(ValueError, match="no bootstrap_servers and no default"):
        build_target(TargetSettings(name="k3", type="kafka", topic="t"))
    with pytest.raises(ValueError, match="duplicate promotion target name 'v'"):
        build_targets([v, v])
