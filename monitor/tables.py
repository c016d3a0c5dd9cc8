"""Monitoring tables (on driftloop's shared metadata); created by migrations 0002_monitor, 0010 and 0014.

A stream is (model_id, workload, segment): ``workload`` is the interactions' workload ("" for NULL, the
unnamed stream; migration 0014), ``segment`` the ``monitor.segment_keys`` split inside it.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from driftloop.store.models import BigId, metadata

monitor_windows = Table(
    "monitor_windows",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("model_id", String(256), nullable=False),
    Column("segment", String(256), nullable=False, default=""),
    Column("window_kind", String(8), nullable=False),  # count | time
    Column("window_index", BigInteger, nullable=False),
    Column("workload", String(256), nullable=False, default="", server_default=text("''")),
    Column("window_start", DateTime(timezone=True), nullable=False),
    Column("window_end", DateTime(timezone=True), nullable=False),
    Column("first_id", BigInteger, nullable=True),
    Column("last_id", BigInteger, nullable=True),
    Column("n_records", Integer, nullable=False),
    Column("ref_kind", String(32), nullable=False),
    Column("ref_start", DateTime(timezone=True), nullable=True),
    Column("ref_end", DateTime(timezone=True), nullable=True),
    Column("ref_n", Integer, nullable=False),
    Column("status", String(24), nullable=False),  # ok | insufficient_data | error
    Column("drift_score", Float, nullable=True),
    Column("drifted", Boolean, nullable=True),
    Column("n_features", Integer, nullable=True),
    Column("n_drifted", Integer, nullable=True),
    Column("report_path", Text, nullable=True),
    Column("error", Text, nullable=True),
    Column("duration_s", Float, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # the verdict over feature groups (migration 0010): counts, the threshold used, and whether the
    # window may serve as a ``last_healthy`` reference
    Column("n_groups", Integer, nullable=True),
    Column("n_groups_drifted", Integer, nullable=True),
    Column("drift_share", Float, nullable=True),
    Column("healthy", Boolean, nullable=True),
    UniqueConstraint("model_id", "workload", "segment", "window_kind", "window_index", name="uq_monitor_windows_window"),
    Index("ix_monitor_windows_model_end", "model_id", "window_end"),
)

drift_results = Table(
    "drift_results",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("window_id", BigInteger, ForeignKey("monitor_windows.id", ondelete="CASCADE"), nullable=False),
    Column("feature", String(128), nullable=False),
    Column("feature_type", String(16), nullable=False),  # numerical | categorical | text | embedding
    Column("method", String(64), nullable=False),
    Column("statistic", Float, nullable=True),
    Column("threshold", Float, nullable=True),
    Column("p_value", Float, nullable=True),
    Column("p_adjusted", Float, nullable=True),
    Column("drifted", Boolean, nullable=False),
    Column("feature_group", String(64), nullable=True),
    Index("ix_drift_results_window", "window_id"),
)

# A user re-pinned a model's baseline (``driftloop monitor repin``): a ``last_healthy`` reference
# is taken from windows at or after ``from_window_index`` only (migration 0010).
monitor_baselines = Table(
    "monitor_baselines",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("model_id", String(256), nullable=False),
    Column("segment", String(256), nullable=False),
    Column("window_kind", String(8), nullable=False),
    Column("from_window_index", BigInteger, nullable=False),
    Column("pinned_at", DateTime(timezone=True), nullable=False),
    Column("pinned_by", String(128), nullable=False),
    Column("note", Text, nullable=True),
    Column("workload", String(256), nullable=False, default="", server_default=text("''")),
    Index("ix_monitor_baselines_model", "model_id", "segment", "window_kind"),
)

window_metrics = Table(
    "window_metrics",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("window_id", BigInteger, ForeignKey("monitor_windows.id", ondelete="CASCADE"), nullable=False),
    Column("model_id", String(256), nullable=False),
    Column("segment", String(256), nullable=False),
    Column("window_end", DateTime(timezone=True), nullable=False),
    Column("name", String(128), nullable=False),
    Column("value", Float, nullable=True),
    Column("workload", String(256), nullable=False, default="", server_default=text("''")),
    Index("ix_window_metrics_model_name_end", "model_id", "name", "window_end"),
    Index("ix_window_metrics_window", "window_id"),
)
