"""docker-compose.yml: valid against the Compose Specification, pinned images, health checks, named volumes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from driftloop.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_file_matches_the_compose_specification() -> None:
    schema = json.loads((ROOT / "tests/data/compose-spec.schema.json").read_text())
    jsonschema.validate(_compose(), schema)  # raises with the offending path


def test_images_are_pinned_and_services_have_health_checks() -> None:
    c = _compose()
    for name, svc in c["services"].items():
        img = svc.get("image")
        assert img, f"service {name} has no image"
        assert re.fullmatch(r"[\w./-]+:\d[\w.-]*", img), f"{name}: image {img!r} is not pinned to a version"
        assert "latest" not in img
        assert "healthcheck" in svc, f"service {name} has no health check"
    assert {"kafka", "postgres", "grafana", "driftloop", "serve"} <= set(c["services"])
    assert c["services"]["kafka"]["image"].startswith("apache/kafka:")
    assert c["services"]["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    # named volumes only for state
    for name, svc in c["services"].items():
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if not src.startswith("."):
                assert src in c["volumes"], f"{name}: volume {src} is not a declared named volume"


def test_env_example_covers_every_required_variable() -> None:
    text = COMPOSE.read_text()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    example = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))  # fmt: skip
    assert required <= set(example), f"missing in .env.example: {required - set(example)}"


def test_mounted_settings_and_provisioning_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLOOP_ADMIN_TOKEN", "x" * 24)
    s = load_settings(ROOT / "deploy/driftloop.yaml")
    assert s.api.host == "0.0.0.0" and {t.role for t in s.api.tokens} == {"admin", "read"}
    assert {t.type for t in s.retrain.targets} == {"filesystem", "vllm", "kafka"}
    c = _compose()
    mounts = [v.split(":")[0] for v in c["services"]["grafana"]["volumes"]]
    for m in mounts:
        if m.startswith("."):
            assert (ROOT / m).exists(), m


@pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not installed")
def test_docker_compose_config_validates(tmp_path: Path) -> None:
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"the docker CLI has no compose plugin ({probe.stderr.strip()[:100]})")
    env = {**os.environ, **{k: "test-value-0123456789" for k in
                            re.findall(r"\$\{(\w+):\?", COMPOSE.read_text())}}  # fmt: skip
    r = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"], capture_output=True,
                       text=True, env=env, cwd=ROOT)  # fmt: skip
    assert r.returncode == 0, r.stderr
