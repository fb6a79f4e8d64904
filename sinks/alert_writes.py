"""The rows of the ``alerts`` table (sinks/schema.py) from alert transitions: one row per transition."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from trackstream.schemas.alerts import Alert
from trackstream.sinks.errors import require

if TYPE_CHECKING:
    import pyarrow as pa


def alerts_table(alerts: Sequence[Alert]) -> pa.Table:
    """A pyarrow table of ``alerts`` in the ``alerts`` table's columns (``condition`` is the rule's ``when``; times
    in nanoseconds; a missing step, value, rank or threshold is NULL)."""
    pa = require("pyarrow")
    return pa.table({
        "project": pa.array([a.project for a in alerts], pa.string()),
        "entity_type": pa.array([a.entity_type for a in alerts], pa.string()),
        "entity_id": pa.array([a.entity_id for a in alerts], pa.string()),
        "rule_id": pa.array([a.rule_id for a in alerts], pa.string()),
        "condition": pa.array([a.when for a in alerts], pa.string()),
        "metric": pa.array([a.metric for a in alerts], pa.string()),
        "state": pa.array([a.state for a in alerts], pa.string()),
        "step": pa.array([a.step for a in alerts], pa.int64()),
        "value": pa.array([a.value for a in alerts], pa.float64()),
        "rank": pa.array([a.rank for a in alerts], pa.uint32()),
        "threshold": pa.array([a.threshold for a in alerts], pa.float64()),
        "time": pa.array([a.time_ns for a in alerts], pa.timestamp("ns", tz="UTC")),
        "message": pa.array([a.message for a in alerts], pa.string()),
    })
