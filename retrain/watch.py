"""Post-promotion watch: roll back a promoted version whose live quality is worse than before.

After a promotion, the watch waits for ``N`` checked windows of the family's traffic that start after
the promotion and compares the mean of ``metric`` with the ``N`` windows that ended before it. Worse by
more than ``tolerance`` -> roll back to ``previous`` (every target, then the registry), fire a
``retrain.rollback`` alert to the watch's channels and record why. Otherwise the watch records
``watch_passed`` and leaves the version alone.

Workloads: one model can serve several workloads (``interactions.workload``), each with windows of its own
and its own quality level. The promoted version serves all of them, so the watch compares each workload
with itself (mixing them would compare different blends of workloads before and after, which can hide a
drop in one workload or invent one) and acts on the worst: any workload worse by more than ``tolerance``
rolls back. It passes once every workload with windows both before and after the promotion has ``N``
windows after it; a workload without windows before it (new) has nothing to compare with, and one without
traffic since (idle) nothing to judge, so neither holds the verdict up.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, insert, select

from driftloop.connectors.abc import PromotionTarget
from driftloop.retrain.registry import ModelRegistry, RegistryError
from driftloop.retrain.tables import model_events
from driftloop.store.timestamps import utc

log = logging.getLogger("driftloop.retrain.watch")

ROLLBACK_RULE = "retrain.rollback"
_DONE = ("watch_passed", "watch_failed")


@dataclass
class WatchResult:
    """The watch's verdict for one family."""

    family: str
    version: str
    status: str  # pending | passed | rolled_back | failed | no_baseline
    before: float | None = None
    after: float | None = None
    message: str = ""


def window_values(engine: Engine, family: str, metric: str) -> dict[str, list[tuple[datetime, datetime, float]]]:
    """Per workload ("" the unnamed one): (window_start, window_end, value) of checked, whole-workload windows
    of ``family`` (segment ""), oldest first."""
    from driftloop.monitor.tables import monitor_windows as mw
    from driftloop.monitor.tables import window_metrics as wm

    q = (select(mw.c.workload, mw.c.window_start, mw.c.window_end, wm.c.value)
         .join(wm, wm.c.window_id == mw.c.id)
         .where(mw.c.model_id == family, mw.c.segment == "", mw.c.status == "ok", wm.c.name == metric,
                wm.c.value.is_not(None))
         .order_by(mw.c.window_end, mw.c.id))  # fmt: skip
    out: dict[str, list[tuple[datetime, datetime, float]]] = {}
    with engine.connect() as c:
        for wl, start, end, v in c.execute(q):
            out.setdefault(wl or "", []).append((utc(start), utc(end), float(v)))
    return out


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def _named(family: str, workload: str) -> str:
    return f"{family}[{workload}]" if workload else family


class PromotionWatchJob:
    """Scheduled: watch every family's newest promotion until it passes or is rolled back."""

    def __init__(self, settings: Any, engine: Engine, *, targets: Mapping[str, PromotionTarget] | None = None,
                 sinks: Mapping[str, Any] | None = None) -> None:  # fmt: skip
        self.settings = settings
        self.engine = engine
        self.registry = ModelRegistry(engine)
        self._targets = targets
        self._sinks = sinks

    def _targets_for(self, family: str) -> Sequence[PromotionTarget]:
        if self._targets is not None:
            names = sorted({t for p in self.settings.retrain.policies if p.model_id == family for t in p.targets})
            return [self._targets[n] for n in (names or list(self._targets)) if n in self._targets]
        from driftloop.retrain.runner import targets_for_family

        return targets_for_family(self.settings, family)

    def run_once(self, now: datetime | None = None) -> list[WatchResult]:
        w = self.settings.retrain.watch
        if not (self.settings.retrain.enabled and w.enabled):
            return []
        out = []
        for family in self.registry.families():
            try:
                r = self.check(family)
            except Exception as e:  # one family failing never stops the others
                log.exception("post-promotion watch of %s failed", family)
                r = WatchResult(family, "?", "failed", message=str(e))
            if r is not None:
                out.append(r)
        return out

    def check(self, family: str) -> WatchResult | None:
        w = self.settings.retrain.watch
        champ = self.registry.champion(family)
        if champ is None or (champ.adapter_path is None and champ.parent_id is None):
            return None  # the base model: nothing was promoted
        evs = self.registry.events(family, champ.id)
        promoted = [e for e in evs if e["action"] in ("promoted", "approved_promoted")]
        if not promoted or any(e["action"] in _DONE or e["action"] == "restored" for e in evs):
            return None
        at = utc(promoted[-1]["at"])
        # each workload against itself (see the module docstring): before/after windows per workload
        split = {wl: ([v for s, e, v in vals if e <= at][-w.windows :], [v for s, e, v in vals if s >= at][: w.windows])
                 for wl, vals in window_values(self.engine, family, w.metric).items()}  # fmt: skip
        decided = {wl: ba for wl, ba in split.items() if len(ba[1]) >= w.windows}
        if not decided:
            most = max((len(ba[1]) for ba in split.values()), default=0)
            return WatchResult(family, champ.version, "pending",
                               message=f"{most}/{w.windows} window(s) after the promotion so far")  # fmt: skip
        compared = {wl: (_mean(b), _mean(a)) for wl, (b, a) in decided.items() if b}

        def margin(wl: str) -> float:  # how much worse than before (positive: worse)
            b, a = compared[wl]
            return b - a if w.higher_is_better else a - b

        worst = max(sorted(compared), key=margin) if compared else None
        if worst is None or margin(worst) <= w.tolerance:  # nothing worse (yet): wait for the rest to report
            waiting = sorted(wl for wl, (b, a) in split.items() if b and 0 < len(a) < w.windows)
            if waiting:
                return WatchResult(family, champ.version, "pending", message=(
                    f"waiting for {w.windows} window(s) after the promotion of workload(s) "
                    + ", ".join(repr(x) for x in waiting)))  # fmt: skip
        if worst is None:
            a = _mean(next(iter(decided.values()))[1])
            self._record(family, champ.id, "watch_passed", "no windows before the promotion to compare with",
                         {"after": a})  # fmt: skip
            return WatchResult(family, champ.version, "no_baseline", None, a)
        before, after = decided[worst]
        b, a = compared[worst]
        worse = margin(worst) > w.tolerance
        detail = {"metric": w.metric, "before": b, "after": a, "tolerance": w.tolerance, "windows": w.windows,
                  "before_values": before, "after_values": after, "workload": worst,
                  "workloads": {wl: {"before": bb, "after": aa} for wl, (bb, aa) in compared.items()}}  # fmt: skip
        desc = (f"{w.metric} of {_named(family, worst)} {b:.4f} over {len(before)} window(s) before the promotion "
                f"of {champ.version}, {a:.4f} over {len(after)} after (tolerance {w.tolerance}"
                + (f"; worst of {len(compared)} workloads" if len(compared) > 1 else "") + ")")  # fmt: skip
        if not worse:
            self._record(family, champ.id, "watch_passed", desc, detail)
            return WatchResult(family, champ.version, "passed", b, a, desc)
        reason = f"post-promotion watch: live quality dropped: {desc}"
        self._record(family, champ.id, "watch_failed", reason, detail)
        try:
            restored = self.registry.rollback(family, self._targets_for(family), actor="watch", reason=reason)
        except RegistryError as e:
            log.error("%s: rollback of %s failed: %s", family, champ.version, e)
            self._alert(family, f"{reason}; ROLLBACK FAILED: {e}", a)
            return WatchResult(family, champ.version, "failed", b, a, f"rollback failed: {e}")
        msg = f"{family}: rolled back {champ.version} -> {restored.version}: {reason}"
        log.warning("%s", msg)
        self._alert(family, msg, a)
        return WatchResult(family, champ.version, "rolled_back", b, a, msg)

    def _record(self, family: str, version_id: int, action: str, reason: str, details: dict[str, Any]) -> None:
        with self.engine.begin() as c:
            c.execute(insert(model_events), {"family": family, "version_id": version_id, "action": action,
                                             "actor": "watch", "reason": reason, "details": details,
                                             "at": datetime.now(UTC)})  # fmt: skip

    def _alert(self, family: str, message: str, value: float | None) -> None:
        """Raise a ``retrain.rollback`` alert through the alert engine, to the watch's channels."""
        from driftloop.monitor.alerts.engine import fire_alert
        from driftloop.monitor.alerts.sinks import build_sinks

        now = datetime.now(UTC)
        sinks = self._sinks if self._sinks is not None else build_sinks(self.settings.alerts.channels)
        fire_alert(self.engine, sinks, self.settings.retrain.watch.channels, rule=ROLLBACK_RULE, model_id=family,
                   group_key=f"{family}|{now.isoformat()}", severity="critical", condition="post-promotion watch",
                   message=message, value=value, now=now)  # fmt: skip
