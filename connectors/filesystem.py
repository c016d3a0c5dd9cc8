"""Filesystem promotion target: a serving directory with an atomically switched ``current`` symlink.

Layout of ``path`` (one serving directory per model family)::

    versions/<family>-<version>/   a copy of the version's adapter directory (complete or absent, never half)
    versions/_base/                marker for "the base model alone": base_model.json only
    current -> versions/...        relative symlink, switched with rename(2): readers see the old or the new target
    current.json                   the last promotion event and what is served (informative; ``current`` rules)

A server reads ``current`` (e.g. ``--lora-modules served=<path>/current``) and ``current.json`` to know the base
model. A version without an adapter, and ``revert`` of a promotion whose previous version had none, point
``current`` at ``versions/_base`` instead of removing it, so ``current`` never disappears once created.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from driftloop.connectors.abc import PROMOTED, REVERTED, Promotion, PromotionError, PromotionTarget
from driftloop.settings.connectors import TargetSettings

log = logging.getLogger("driftloop.connectors")

BASE_DIR = "_base"
CURRENT = "current"
CURRENT_JSON = "current.json"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def manifest(root: Path) -> dict[str, tuple[int, str]]:
    """``relative path -> (size, sha256)`` of every regular file under ``root`` (symlinks followed)."""
    out: dict[str, tuple[int, str]] = {}
    for dirpath, _dirs, files in os.walk(root, followlinks=True):
        for f in files:
            full = Path(dirpath, f)
            with open(full, "rb") as fh:
                digest = hashlib.file_digest(fh, "sha256").hexdigest()
            out[full.relative_to(root).as_posix()] = (full.stat().st_size, digest)
    return out


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``path`` via a temporary file in the same directory, fsync, rename, fsync the directory."""
    tmp = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _fsync_dir(path.parent)


class FilesystemPromotionTarget(PromotionTarget):
    """Copies adapters into ``<path>/versions/`` and points ``<path>/current`` at the served one."""

    def __init__(self, cfg: TargetSettings) -> None:
        if not cfg.path:
            raise ValueError(f"target {cfg.name!r}: a filesystem target needs path")
        self.name = cfg.name
        self.cfg = cfg
        self.root = Path(cfg.path).expanduser()

    # -- public ----------------------------------------------------------------------------------------------

    def apply(self, p: Promotion) -> None:
        """Copy the adapter in (once), switch ``current`` to it, write ``current.json``."""
        rel = self._ensure_version(p.lora_name(), p.adapter_path, p.base_model, p.version)
        self._switch(rel)
        self._write_pointer(p, PROMOTED, p.version, rel)
        log.info("%s: %s now serves %s", self.name, self.root / CURRENT, rel)

    def revert(self, p: Promotion) -> None:
        """Point ``current`` back at the previous version (``versions/_base`` if it had no adapter).

        Refuses (PromotionError) when ``current`` serves neither ``p``'s version nor its previous one: a later
        promotion happened and reverting would undo that one instead.
        """
        new_rel = self._rel(p.lora_name(), p.adapter_path)
        prev_name = p.previous_lora_name()
        prev_rel = self._rel(prev_name, p.previous_adapter_path) if prev_name else self._rel(None, None)
        cur = self.current()
        if cur not in (None, new_rel, prev_rel):
            raise PromotionError(
                f"{self.name}: {self.root / CURRENT} serves {cur}, not {new_rel}; refusing to revert over a later "
                "promotion (promote the wanted version instead)",
                target=self.name,
            )
        if cur != prev_rel:
            prev_label = p.previous_version or "base"
            self._ensure_version(prev_name, p.previous_adapter_path if prev_name else None, p.base_model, prev_label)
            self._switch(prev_rel)
        self._write_pointer(p, REVERTED, p.previous_version, prev_rel)
        log.info("%s: reverted %s to %s", self.name, self.root / CURRENT, prev_rel)

    def check(self) -> None:
        """The serving directory exists (or can be created) and is writable."""
        try:
            (self.root / "versions").mkdir(parents=True, exist_ok=True)
            probe = self.root / f".probe-{uuid.uuid4().hex}"
            write_atomic(probe, b"ok")
            probe.unlink()
        except OSError as e:
            raise PromotionError(
                f"{self.name}: serving directory {self.root} is not writable ({e}); create it or fix its permissions",
                target=self.name,
            ) from e

    def current(self) -> str | None:
        """Where ``current`` points (``versions/<name>``), or None if nothing was promoted here yet."""
        try:
            return os.readlink(self.root / CURRENT)
        except FileNotFoundError:
            return None
        except OSError as e:  # EINVAL: not a symlink
            raise PromotionError(
                f"{self.name}: {self.root / CURRENT} exists but is not a symlink; move it away and promote again",
                target=self.name,
            ) from e

    # -- internals -------------------------------------------------------------------------------------------

    @staticmethod
    def _rel(lora_name: str | None, adapter_path: str | None) -> str:
        return f"versions/{lora_name}" if (lora_name and adapter_path) else f"versions/{BASE_DIR}"

    def _ensure_version(self, lora_name: str | None, adapter_path: str | None, base_model: str, label: str) -> str:
        """Make ``versions/<lora_name>`` (or the base marker) exist, complete; return its relative path."""
        versions = self.root / "versions"
        try:
            versions.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise PromotionError(f"{self.name}: cannot create {versions}: {e}; fix the path or its permissions",
                                 target=self.name) from e  # fmt: skip
        rel = self._rel(lora_name, adapter_path)
        dest = self.root / rel
        if adapter_path is None or lora_name is None:
            if not dest.is_dir():
                self._publish_dir(dest, lambda tmp: self._fill_base(tmp, base_model), None)
            return rel
        src = Path(adapter_path)
        if not src.is_dir():
            raise PromotionError(
                f"{self.name}: adapter directory {src} of version {label} does not exist; "
                "restore it or promote another version",
                target=self.name,
            )
        want = manifest(src)
        if dest.is_dir():
            self._same_or_raise(dest, want, label)
            return rel
        self._publish_dir(dest, lambda tmp: shutil.copytree(src, tmp), want)
        return rel

    @staticmethod
    def _fill_base(tmp: Path, base_model: str) -> None:
        tmp.mkdir()
        (tmp / "base_model.json").write_text(json.dumps({"base_model": base_model, "adapter": None}) + "\n")

    def _publish_dir(self, dest: Path, fill: Any, want: dict[str, tuple[int, str]] | None) -> None:
        """Build the directory under a temporary name, fsync it, rename it to ``dest`` (never half visible)."""
        tmp = dest.with_name(f".tmp-{dest.name}-{uuid.uuid4().hex}")
        try:
            fill(tmp)
            _fsync_tree(tmp)
            try:
                os.rename(tmp, dest)
            except OSError:
                if not dest.is_dir():  # not a concurrent publisher of the same version: a real error
                    raise
                if want is not None:
                    self._same_or_raise(dest, want, dest.name)
                return
            _fsync_dir(dest.parent)
        except OSError as e:
            raise PromotionError(f"{self.name}: could not copy into {dest}: {e}; check free space and permissions",
                                 target=self.name) from e  # fmt: skip
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _same_or_raise(self, dest: Path, want: dict[str, tuple[int, str]], label: str) -> None:
        if manifest(dest) != want:
            raise PromotionError(
                f"{self.name}: {dest} already holds different files than the adapter of version {label}; "
                "version labels must not be reused: remove that directory or register a new version",
                target=self.name,
            )

    def _switch(self, rel: str) -> None:
        """Point ``current`` at ``rel``: a new symlink under a temporary name renamed over it (atomic)."""
        link = self.root / CURRENT
        if self.current() == rel:
            return
        tmp = self.root / f"{CURRENT}.tmp-{uuid.uuid4().hex}"
        try:
            os.symlink(rel, tmp)
            os.replace(tmp, link)
            _fsync_dir(self.root)
        except OSError as e:
            raise PromotionError(f"{self.name}: could not switch {link} to {rel}: {e}", target=self.name) from e
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def _write_pointer(self, p: Promotion, event: str, serving_version: str | None, rel: str) -> None:
        body = {
            **p.payload(event),
            "serving": {"version": serving_version, "dir": rel, "adapter": None if rel.endswith(BASE_DIR) else rel},
        }
        try:
            write_atomic(self.root / CURRENT_JSON, (json.dumps(body, indent=2, sort_keys=True) + "\n").encode())
        except OSError as e:
            raise PromotionError(f"{self.name}: could not write {self.root / CURRENT_JSON}: {e}",
                                 target=self.name) from e  # fmt: skip
