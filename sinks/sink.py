"""The in-process sink: processed records in, ClickHouse rows out (used by the Kafka worker and the local runner).

``Sink.write`` is synchronous and idempotent per ``dedup_key``: each table's insert carries the token
``<dedup_key>:<table>``, so writing the same records with the same key twice lands them once (within the
tables' deduplication window). Without a key, idempotency rests on the ReplacingMergeTree keys and ``FINAL``
reads alone: queries stay correct, raw ``count()`` may see duplicates until a merge.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from schemas.processed import EntityState, MetricSummary, PointBlock, StepAggregate
from sinks.backend import Backend, open_backend
from sinks.batch import entities_tables, points_tables, steps_table, summaries_table
from sinks.schema import migrate

log = logging.getLogger(__name__)

# Order matters: points before the statistics derived from them (a crash in between, replayed without token,
# leaves statistics of one copy of identical points: still exact), ``series_stats`` before ``series_blocks``
# (a second copy of the blocks implies a second copy of the statistics, which marks the series unclean), and
# ``ingested`` last, since it announces everything as queryable.
_POINT_TABLES = ("points", "series_stats", "series_blocks", "ingested")


def dedup_token(*parts: object) -> str:
    """A short token from the identity of a batch (e.g. topic, partition and offset range)."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class WriteStats:
    points: int = 0
    steps: int = 0
    summaries: int = 0
    entity_states: int = 0


class Sink:
    """Writes processed records into one store; creates the tables on construction."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        migrate(backend)

    @classmethod
    def open(
        cls,
        *,
        clickhouse_url: str | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        database: str | None = None,
    ) -> Sink:
        """The configured store (keyword > TRACKSTREAM_CLICKHOUSE_URL / TRACKSTREAM_DATA_DIR > default)."""
        return cls(open_backend(clickhouse_url, data_dir, database=database))

    def __repr__(self) -> str:
        return f"Sink({self.backend!r})"

    def write(
        self,
        point_blocks: Sequence[PointBlock] = (),
        steps: Sequence[StepAggregate] = (),
        summaries: Sequence[MetricSummary] = (),
        entity_states: Sequence[EntityState] = (),
        *,
        dedup_key: str | None = None,
    ) -> WriteStats:
        """Insert everything given; returns once ClickHouse acknowledged every table's insert."""
        if point_blocks:
            tables = points_tables(point_blocks)
            for name in _POINT_TABLES:
                self._insert(name, tables[name], dedup_key)
        if steps:
            self._insert("steps", steps_table(steps), dedup_key)
        if summaries:
            self._insert("summaries", summaries_table(summaries), dedup_key)
        if entity_states:
            tables = entities_tables(entity_states)
            self._insert("entities", tables["entities"], dedup_key)
            self._insert("params", tables["params"], dedup_key)
        stats = WriteStats(
            points=sum(b.point_count() for b in point_blocks), steps=len(steps), summaries=len(summaries),
            entity_states=len(entity_states),
        )
        log.debug("wrote %s (dedup key %s)", stats, dedup_key)
        return stats

    def _insert(self, table: str, data: Any, dedup_key: str | None) -> None:
        token = dedup_token(dedup_key, table) if dedup_key is not None else None
        self.backend.insert(table, data, dedup_token=token)

    def close(self) -> None:
        self.backend.close()
