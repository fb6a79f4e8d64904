"""The in-process sink: processed records in, ClickHouse rows out (used by the Kafka worker and the local runner).

``Sink.write`` is synchronous and idempotent per ``dedup_key``: each table's insert carries the token
``<dedup_key>:<table>``, so writing the same records with the same key twice lands them once (within the
tables' deduplication window). Without a key, idempotency rests on the ReplacingMergeTree keys and ``FINAL``
reads alone: queries stay correct, raw ``count()`` may see duplicates until a merge.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trackstream.schemas.alerts import Alert
from trackstream.schemas.processed import EntityState, PointBlock, StepAggregate
from trackstream.schemas.settings import StoreSettings
from trackstream.sinks.alert_writes import alerts_table
from trackstream.sinks.backend import Backend
from trackstream.sinks.batch import PointColumns, entities_tables, points_tables
from trackstream.sinks.connect import open_backend
from trackstream.sinks.errors import require
from trackstream.sinks.schema import migrate

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

# Order matters: points before the statistics derived from them (a crash in between, replayed without token,
# leaves statistics of one copy of identical points: still exact), ``series_stats`` before ``series_blocks``
# (a second copy of the blocks implies a second copy of the statistics, which marks the series unclean), and
# ``ingested`` last, since it announces everything as queryable.
_POINT_TABLES = ("points", "series_stats", "series_blocks", "ingested")
_TABLE_ORDER = (*_POINT_TABLES, "entities", "params", "alerts")


def dedup_token(*parts: object) -> str:
    """A short token from the identity of a batch (e.g. topic, partition and offset range)."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class WriteStats:
    """What one write inserted: ``points`` (point rows of the ranks), ``steps`` (cross-rank step aggregates, stored
    as points of rank :data:`~trackstream.sinks.schema.CROSS_RANK`) and ``entity_states`` records."""

    points: int = 0
    steps: int = 0
    entity_states: int = 0


@dataclass(frozen=True, slots=True)
class Prepared:
    """The tables of one write, in insert order, and what they hold."""

    tables: list[tuple[str, pa.Table]]
    stats: WriteStats

    @classmethod
    def merge(cls, parts: Sequence[Prepared]) -> Prepared:
        """One write of several: each table's rows concatenated (the same rows as writing the parts one by one),
        tables in :data:`_TABLE_ORDER`."""
        if len(parts) == 1:
            return parts[0]
        pa = require("pyarrow")
        by_name: dict[str, list[Any]] = {}
        for part in parts:
            for name, table in part.tables:
                by_name.setdefault(name, []).append(table)
        tables = [(name, by_name[name][0] if len(by_name[name]) == 1 else pa.concat_tables(by_name[name]))
                  for name in _TABLE_ORDER if name in by_name]
        stats = WriteStats(points=sum(p.stats.points for p in parts), steps=sum(p.stats.steps for p in parts),
                           entity_states=sum(p.stats.entity_states for p in parts))
        return cls(tables, stats)


class Sink:
    """Writes processed records into one store; creates the tables on construction."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        migrate(backend)

    @classmethod
    def open(cls, store: StoreSettings | None = None, **keywords: Any) -> Sink:
        """A sink on the configured store; ``keywords`` are :class:`StoreSettings` fields (``url``, ``data_dir``, ...).

        Keyword > ``store`` > ``TRACKSTREAM_CLICKHOUSE_*`` / ``TRACKSTREAM_DATA_DIR`` > default. Creates the
        tables. Raises :class:`~trackstream.sinks.errors.StoreUnavailable` when the store cannot be reached.
        """
        return cls(open_backend(store, **keywords))

    def __repr__(self) -> str:
        return f"Sink({self.backend!r})"

    def write(
        self,
        point_blocks: Sequence[PointBlock] = (),
        steps: Sequence[StepAggregate] = (),
        entity_states: Sequence[EntityState] = (),
        *,
        dedup_key: str | None = None,
        alerts: Sequence[Alert] = (),
    ) -> WriteStats:
        """Insert everything given; returns once ClickHouse acknowledged every table's insert."""
        return self.write_prepared(self.prepare(point_blocks, steps, entity_states, alerts=alerts),
                                   dedup_key=dedup_key)

    @staticmethod
    def prepare(
        point_blocks: Sequence[PointBlock] | PointColumns = (),
        steps: Sequence[StepAggregate] = (),
        entity_states: Sequence[EntityState] = (),
        *,
        alerts: Sequence[Alert] = (),
    ) -> Prepared:
        """The columnar batches of a write, without touching the store (so a caller can build the next batch
        while the previous one is being inserted). Empty tables are left out. Points come as blocks or as
        :class:`PointColumns` decoded straight from topic bytes (which ``steps`` are then added to); the step
        aggregates become the cross-rank rows of ``points`` and their rollups."""
        tables: list[tuple[str, pa.Table]] = []
        points = point_blocks.points if isinstance(point_blocks, PointColumns) else sum(
            b.point_count() for b in point_blocks)
        if point_blocks or steps or (isinstance(point_blocks, PointColumns) and point_blocks.steps):
            columns = point_blocks if isinstance(point_blocks, PointColumns) else PointColumns()
            if not isinstance(point_blocks, PointColumns):
                for block in point_blocks:
                    columns.add(block)
            columns.segments.add_steps(steps)
            built = points_tables(columns)
            tables += [(name, built[name]) for name in _POINT_TABLES]
        if entity_states:
            built = entities_tables(entity_states)
            tables += [("entities", built["entities"]), ("params", built["params"])]
        if alerts:
            tables.append(("alerts", alerts_table(alerts)))
        steps_added = len(steps) + (point_blocks.steps if isinstance(point_blocks, PointColumns) else 0)
        stats = WriteStats(points=points, steps=steps_added, entity_states=len(entity_states))
        return Prepared([(name, table) for name, table in tables if table.num_rows], stats)

    def write_prepared(self, prepared: Prepared, *, dedup_key: str | None = None) -> WriteStats:
        """Insert prepared batches in order; returns once ClickHouse acknowledged every one of them."""
        for name, table in prepared.tables:
            self._insert(name, table, dedup_key)
        log.debug("wrote %s (dedup key %s)", prepared.stats, dedup_key)
        return prepared.stats

    def _insert(self, table: str, data: Any, dedup_key: str | None) -> None:
        token = dedup_token(dedup_key, table) if dedup_key is not None else None
        self.backend.insert(table, data, dedup_token=token)

    def close(self) -> None:
        """Close the backend: the ClickHouse client, or this handle on the chDB store."""
        self.backend.close()
