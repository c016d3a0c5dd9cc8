"""Build a versioned training snapshot from production traffic.

Eligible records are interactions of the policy's model whose latest scored feedback is positive (the view
``feedback_latest``, the definition the monitor and the dashboards share) or that have a correction (the
correction replaces the response; corrections come from user feedback and from reviewers' ``human_review``
scores alike, the newest one wins). Refusals, empties and exact or near duplicates are dropped, the newest
``eval_fraction`` is held out for evaluation (split by time, and an evaluation prompt that also occurs in
training is dropped from evaluation), and the result is written as JSONL plus a manifest with the row counts,
time range, filters and a content hash. The directory name carries the hash, so the same data gives the same
snapshot. ``data.workload`` restricts everything to one workload's records.

Distillation (``retrain.distill``) selects other records (the teacher's answers to production prompts) and
writes them with :func:`write_snapshot`, through the same filters (:func:`filter_records`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, literal, null, or_, select, union_all

from driftloop.settings.retrain import DataSettings
from driftloop.store.feedback import feedback_latest, store_feedback_threshold
from driftloop.store.models import feedback, interactions
from driftloop.store.scores import scores
from driftloop.store.timestamps import utc

_REFUSAL_RE: re.Pattern[str] | None = None
_NEAR_RE = re.compile(r"[\W_]+", re.UNICODE)


class DatasetError(Exception):
    """No usable snapshot (too few eligible records, ...): the message says what was found."""


def _refusal_re() -> re.Pattern[str]:
    global _REFUSAL_RE
    if _REFUSAL_RE is None:
        from driftloop.monitor.features import REFUSAL_RE

        _REFUSAL_RE = REFUSAL_RE
    return _REFUSAL_RE


def near_key(text: str) -> str:
    """Case-, whitespace- and punctuation-insensitive key (near-duplicate detection)."""
    return _NEAR_RE.sub(" ", text.casefold()).strip()


@dataclass
class Snapshot:
    """A dataset snapshot on disk."""

    path: Path
    manifest: dict[str, Any]
    train: list[dict[str, Any]] = field(default_factory=list, repr=False)
    eval: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def content_hash(self) -> str:
        return str(self.manifest["content_hash"])


REVIEW_SOURCE = "human_review"


def _corrections() -> Any:
    """Every non-empty correction: user feedback's and reviewers' (``human_review`` scores), one subquery."""
    f, s = feedback.c, scores.c
    return union_all(
        select(f.request_id, f.ts, literal(0).label("origin"), f.id, f.correction)
        .where(f.correction.is_not(None), f.correction != ""),
        select(s.request_id, s.ts, literal(1).label("origin"), s.id, s.correction)
        .where(s.source == REVIEW_SOURCE, s.correction.is_not(None), s.correction != ""),
    ).subquery("corr")  # fmt: skip


def _eligible_query(model_id: str, since: datetime, until: datetime, use_corrections: bool,
                    workload: str | None = None) -> Any:  # fmt: skip
    """Interactions of ``model_id`` (of ``workload``, if given) in [since, until) whose feedback is positive
    (the view ``feedback_latest``, the one definition shared with the monitor and the dashboards) or, with
    ``use_corrections``, that have a correction (user feedback or a reviewer's): one row per correction,
    oldest first."""
    i, fl = interactions.c, feedback_latest.c
    j = interactions.outerjoin(feedback_latest, fl.request_id == i.request_id)
    cond: Any = fl.positive
    corr_cols: list[Any] = [null().label("correction")]
    order: list[Any] = [i.ts, i.request_id]
    if use_corrections:
        corr = _corrections()
        j = j.outerjoin(corr, corr.c.request_id == i.request_id)
        cond = or_(cond, corr.c.id.is_not(None))
        corr_cols = [corr.c.correction]
        order += [corr.c.ts, corr.c.origin, corr.c.id]
    q = (
        select(i.request_id, i.ts, i.prompt, i.response, *corr_cols)
        .select_from(j)
        .where(i.model_id == model_id, i.ts >= since, i.ts < until, cond)
        .order_by(*order)
    )
    return q if workload is None else q.where(i.workload == workload)


def count_eligible(engine: Engine, model_id: str, since: datetime, until: datetime, data: DataSettings, *,
                   positive_threshold: float) -> int:  # fmt: skip
    """Records of ``model_id`` in [since, until) with positive feedback or a correction (before filtering).

    ``positive_threshold``: ``feedback.positive_threshold``, stored for the view first
    (driftloop.store.feedback.store_feedback_threshold).
    """
    store_feedback_threshold(engine, positive_threshold)
    q = _eligible_query(model_id, since, until, data.use_corrections, data.workload).order_by(None).subquery()
    with engine.connect() as c:
        return int(c.execute(select(func.count(func.distinct(q.c.request_id)))).scalar_one())


def select_records(engine: Engine, model_id: str, data: DataSettings, now: datetime | None = None,
                   since: datetime | None = None, *,
                   positive_threshold: float) -> tuple[list[dict[str, Any]], dict[str, int]]:  # fmt: skip
    """Eligible, filtered, de-duplicated records in time order, and counts of what was dropped and why.

    Eligible: the request's latest scored feedback is positive (``positive_threshold``, stored for the
    view first), or it has a correction (the newest one replaces the response).
    """
    return filter_records(sft_candidates(engine, model_id, data, now, since, positive_threshold=positive_threshold),
                          data)


def sft_candidates(engine: Engine, model_id: str, data: DataSettings, now: datetime | None = None,
                   since: datetime | None = None, *, positive_threshold: float) -> list[dict[str, Any]]:  # fmt: skip
    """Eligible records before filtering (one per request; a correction replaces the response)."""
    now = now or datetime.now(UTC)
    since = since or now - timedelta(hours=data.lookback_hours)
    store_feedback_threshold(engine, positive_threshold)
    q = _eligible_query(model_id, since, now, data.use_corrections, data.workload)
    by_req: dict[str, dict[str, Any]] = {}
    with engine.connect() as c:
        for row in c.execute(q).mappings():
            rec = by_req.setdefault(row["request_id"], {
                "request_id": row["request_id"], "ts": utc(row["ts"]), "prompt": row["prompt"],
                "response": row["response"] or "", "source": "feedback"})  # fmt: skip
            if row["correction"]:
                rec["response"] = row["correction"]  # the latest correction wins (rows are in feedback time order)
                rec["source"] = "correction"
    return list(by_req.values())


def filter_records(records: list[dict[str, Any]], data: DataSettings) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Drop empties, refusals (never a correction) and duplicates, keep the newest ``max_samples``; time order."""
    dropped = {"refusal": 0, "empty": 0, "duplicate": 0, "cap": 0}
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    for rec in sorted(records, key=lambda r: (r["ts"], r["request_id"])):
        resp = rec["response"].strip()
        if data.drop_empty and (len(resp) < max(1, data.min_response_chars) or not rec["prompt"].strip()):
            dropped["empty"] += 1
            continue
        if data.drop_refusals and rec["source"] != "correction" and _refusal_re().search(resp[:600]):
            dropped["refusal"] += 1
            continue
        if data.dedupe != "none":
            k = (near_key(rec["prompt"]) + "\x00" + near_key(resp)) if data.dedupe == "near" else (
                rec["prompt"] + "\x00" + resp)  # fmt: skip
            if k in seen:
                dropped["duplicate"] += 1
                continue
            seen.add(k)
        out.append(rec)
    if len(out) > data.max_samples:  # keep the newest
        dropped["cap"] = len(out) - data.max_samples
        out = out[-data.max_samples :]
    return out, dropped


def split_by_time(records: list[dict[str, Any]], eval_fraction: float) -> tuple[list[dict[str, Any]],
                                                                               list[dict[str, Any]]]:  # fmt: skip
    """Oldest share for training, newest for evaluation; eval prompts seen in training are removed from eval."""
    n_eval = max(1, round(len(records) * eval_fraction)) if records else 0
    train, ev = records[: len(records) - n_eval], records[len(records) - n_eval :]
    train_prompts = {near_key(r["prompt"]) for r in train}
    return train, [r for r in ev if near_key(r["prompt"]) not in train_prompts]


def _row(r: dict[str, Any]) -> dict[str, Any]:
    return {"request_id": r["request_id"], "ts": r["ts"].isoformat(), "prompt": r["prompt"],
            "response": r["response"], "source": r["source"]}  # fmt: skip


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(_row(r), ensure_ascii=False, sort_keys=True).encode() + b"\n" for r in rows)


def build_snapshot(engine: Engine, model_id: str, data: DataSettings, out_root: str | Path, *,
                   positive_threshold: float, policy: str = "manual", now: datetime | None = None) -> Snapshot:  # fmt: skip
    """Select, filter and split the records; write ``train.jsonl``, ``eval.jsonl`` and ``manifest.json``.

    Raises DatasetError when there is too little data to train and evaluate.
    """
    now = now or datetime.now(UTC)
    records, dropped = select_records(engine, model_id, data, now, positive_threshold=positive_threshold)
    return write_snapshot(records, dropped, model_id, data, out_root, positive_threshold=positive_threshold,
                          policy=policy, now=now)


SOURCES = ("feedback", "correction", "teacher_log", "teacher_endpoint")


def write_snapshot(records: list[dict[str, Any]], dropped: dict[str, int], model_id: str, data: DataSettings,
                   out_root: str | Path, *, positive_threshold: float, policy: str = "manual",
                   now: datetime | None = None, extra: dict[str, Any] | None = None,
                   hint: str = "wait for more feedback") -> Snapshot:  # fmt: skip
    """Split filtered ``records`` by time and write the snapshot; ``extra`` joins the manifest (e.g. teacher counts).

    Raises DatasetError when there is too little data to train and evaluate.
    """
    now = now or datetime.now(UTC)
    train, ev = split_by_time(records, data.eval_fraction)
    if len(ev) < data.min_eval_samples or not train:
        scope = f"model {model_id!r}" + (f", workload {data.workload!r}" if data.workload else "")
        raise DatasetError(
            f"{len(records)} eligible record(s) for {scope} in the last {data.lookback_hours:g} h "
            f"({len(train)} train, {len(ev)} eval; need >= {data.min_eval_samples} eval) after dropping {dropped}; "
            f"{hint} or lower retrain.policies[].data.min_eval_samples")  # fmt: skip
    train_b, eval_b = _jsonl(train), _jsonl(ev)
    digest = hashlib.sha256(b"train\n" + train_b + b"eval\n" + eval_b).hexdigest()
    manifest = {
        "policy": policy, "model_id": model_id, "content_hash": digest, "created_at": now.isoformat(),
        "rows": len(train) + len(ev), "train_rows": len(train), "eval_rows": len(ev),
        "time_range": {"from": records[0]["ts"].isoformat(), "to": records[-1]["ts"].isoformat(),
                       "train_until": train[-1]["ts"].isoformat(), "eval_from": ev[0]["ts"].isoformat()},
        "filters": {**data.model_dump(), "positive_threshold": positive_threshold}, "dropped": dropped,
        "sources": {s: sum(1 for r in records if r["source"] == s) for s in SOURCES
                    if s in ("feedback", "correction") or any(r["source"] == s for r in records)},
        **(extra or {}),
    }  # fmt: skip
    final = Path(out_root) / f"{policy}-{digest[:12]}"
    if not (final / "manifest.json").exists():
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent))
        (tmp / "train.jsonl").write_bytes(train_b)
        (tmp / "eval.jsonl").write_bytes(eval_b)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
        try:
            os.replace(tmp, final)  # the snapshot appears whole or not at all
        except OSError:  # another builder won the race with identical content
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return Snapshot(final, manifest, [_row(r) for r in train], [_row(r) for r in ev])


def load_snapshot(path: str | Path) -> Snapshot:
    """Read a snapshot written by :func:`build_snapshot`."""
    p = Path(path)
    manifest = json.loads((p / "manifest.json").read_text(encoding="utf-8"))

    def rows(name: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in (p / name).read_text(encoding="utf-8").splitlines() if line.strip()]

    return Snapshot(p, manifest, rows("train.jsonl"), rows("eval.jsonl"))
