"""ClickHouse layout (docs/storage.md): the same DDL on a ClickHouse server and on chDB, applied idempotently.

Choices, measured with ``bench/sinks.py`` on noisy float32 training curves:

- ``points`` is ordered by (project, entity_type, entity_id, metric, generation, rank, step). ``generation`` sits
  before rank and step so the newest generation of a series is one contiguous key range, and an overwrite never
  collides with the points it supersedes. The table is a ReplacingMergeTree versioned by ``version``, the write
  order (:func:`trackstream.schemas.processed.point_version`: the producer's incarnation, then its ``seq``): a
  replayed point replaces itself, and the same step logged twice keeps the later write whatever the clocks of
  the hosts that wrote it. Readers use ``FINAL`` where a series may hold duplicates.
- Rank :data:`CROSS_RANK` (2**32 - 1) holds, for a series logged by several ranks, the stream's per-step mean over
  the ranks (``<prefix>.steps``), with its rollups: a distributed run reads as fast as a single-rank one.
- ``value`` is stored as ``value32`` (Float32, FPC + ZSTD) plus ``value_exact`` (Nullable(Float64), NULL
  whenever the float64 is exactly the float32 widened), read through the ``value`` ALIAS. Frameworks compute in
  float32, so ``value_exact`` is almost all NULL and the value costs ~2.9 bytes instead of ~3.4 (Gorilla + ZSTD on
  Float64); every float64 still round-trips bit for bit.
- ``time`` is kept in milliseconds (DateTime64(3), Delta + ZSTD(3)): ~0.6 bytes per point against ~3.6 for
  nanoseconds, whose low digits are clock noise. Step uses DoubleDelta + ZSTD (~0.01 bytes).
- ``series_stats`` (per series and rank: count, NaN-free sum and count, first, last, min, max with their steps,
  the latest single value, and the step ranges each write covered) and ``series_blocks`` (min/max/sum/count/last
  per aligned block of 64 and 512 steps) are written with every batch of points (computed with numpy in
  sinks/rollup.py, not by materialized views: a view cost ~60% of the insert rate and its tuple states were slow
  to merge). compare reads ~1 row per run instead of ~10,000 points, a 1M-step curve ~2,000 rows instead of 1M.
  They hold every row written, duplicates included, so readers use them only for series proven free of
  duplicates (sinks/sql.py).
- Every table that receives batches has ``non_replicated_deduplication_window`` so an INSERT repeated with the
  same ``insert_deduplication_token`` (derived from topic, partition and offset range) lands once.
"""

from __future__ import annotations

from typing import Any, Final, Protocol

from trackstream.sinks.errors import QueryError

# The rank of the cross-rank rows: the per-step mean over the ranks of a multi-rank series (above any real rank,
# which is below 2**24).
CROSS_RANK: Final = 2**32 - 1
# ``series_stats.nan_step`` / ``inf_step``: no such value (the largest step, so ``min`` keeps any real one), and
# not known (the smallest: rows written before the columns existed; ``min`` keeps it, and readers then scan points).
NO_STEP: Final = 2**63 - 1
UNKNOWN_STEP: Final = -(2**63)
DEDUP_WINDOW: Final = 10_000
_DEDUP: Final = f"non_replicated_deduplication_window = {DEDUP_WINDOW}"

POINTS: Final = f"""
CREATE TABLE IF NOT EXISTS points (
    project LowCardinality(String),
    entity_type LowCardinality(String),
    entity_id String,
    metric LowCardinality(String),
    generation UInt32 CODEC(ZSTD(1)),
    rank UInt32 CODEC(ZSTD(1)),
    step Int64 CODEC(DoubleDelta, ZSTD(1)),
    time DateTime64(3, 'UTC') CODEC(Delta, ZSTD(3)),
    kind LowCardinality(String),
    value32 Float32 CODEC(FPC, ZSTD(3)),
    value_exact Nullable(Float64) CODEC(ZSTD(1)),
    value Float64 ALIAS ifNull(value_exact, toFloat64(value32)),
    version UInt64 CODEC(Delta, ZSTD(1))
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(time)
ORDER BY (project, entity_type, entity_id, metric, generation, rank, step)
SETTINGS {_DEDUP}
"""

# Per-series statistics, one row per series and write until merges combine them (sinks/rollup.py computes
# them). Tuples order what min/max pick: ``first`` (step, value), ``last`` (step, value), ``low`` (value, step),
# ``high`` (value, -step), ``latest`` (time in ms, step, value) for single values. ``covers``: the rank points
# the rows stand for (``rows`` for a rank's own series; the sum of the step counts for the CROSS_RANK series).
SERIES_STATS: Final = f"""
CREATE TABLE IF NOT EXISTS series_stats (
    project LowCardinality(String),
    entity_type LowCardinality(String),
    entity_id String,
    metric LowCardinality(String),
    generation UInt32,
    rank UInt32,
    kind SimpleAggregateFunction(anyLast, LowCardinality(String)),
    rows SimpleAggregateFunction(sum, UInt64),
    covers SimpleAggregateFunction(sum, UInt64),
    segments SimpleAggregateFunction(groupArrayArray, Array(Tuple(Int64, Int64))),
    min_step SimpleAggregateFunction(min, Int64),
    max_step SimpleAggregateFunction(max, Int64),
    last_time SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    finite SimpleAggregateFunction(sum, UInt64),
    total SimpleAggregateFunction(sum, Float64),
    first SimpleAggregateFunction(min, Tuple(Int64, Float64)),
    last SimpleAggregateFunction(max, Tuple(Int64, Float64)),
    low SimpleAggregateFunction(min, Tuple(Float64, Int64)),
    high SimpleAggregateFunction(max, Tuple(Float64, Int64)),
    latest SimpleAggregateFunction(max, Tuple(Int64, Int64, Float64)),
    infinite SimpleAggregateFunction(sum, UInt64),
    nan_step SimpleAggregateFunction(min, Int64),
    inf_step SimpleAggregateFunction(min, Int64)
) ENGINE = AggregatingMergeTree
ORDER BY (project, entity_type, entity_id, metric, generation, rank)
SETTINGS {_DEDUP}
"""

# Rollups of aligned blocks of steps per series and rank (series values only), at two levels: ``level`` 1 blocks
# span ``BLOCK_STEPS[1]`` steps, level 2 ``BLOCK_STEPS[2]``. Long curves read these instead of points. ``low`` /
# ``high`` are +-inf where a row has no non-NaN value (``finite`` = 0). ``nans`` / ``infinite`` count NaN / ±Inf.
BLOCK_STEPS: Final = {1: 64, 2: 512}
SERIES_BLOCKS: Final = f"""
CREATE TABLE IF NOT EXISTS series_blocks (
    project LowCardinality(String),
    entity_type LowCardinality(String),
    entity_id String,
    metric LowCardinality(String),
    generation UInt32,
    rank UInt32,
    level UInt8,
    block Int64,
    min_step SimpleAggregateFunction(min, Int64),
    max_step SimpleAggregateFunction(max, Int64),
    finite SimpleAggregateFunction(sum, UInt64),
    total SimpleAggregateFunction(sum, Float64),
    low SimpleAggregateFunction(min, Float64),
    high SimpleAggregateFunction(max, Float64),
    last SimpleAggregateFunction(max, Tuple(Int64, Float64)),
    nans SimpleAggregateFunction(sum, UInt64),
    infinite SimpleAggregateFunction(sum, UInt64)
) ENGINE = AggregatingMergeTree
ORDER BY (project, entity_type, entity_id, metric, generation, rank, level, block)
SETTINGS {_DEDUP}
"""

ENTITIES: Final = f"""
CREATE TABLE IF NOT EXISTS entities (
    project LowCardinality(String),
    entity_type LowCardinality(String),
    entity_id String,
    name String,
    status LowCardinality(String),
    tags Map(String, String),
    started_ns Int64,
    ended_ns Int64,
    producers String,
    lost_points UInt64,
    version UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY (project, entity_type, entity_id)
SETTINGS {_DEDUP}
"""

# Params typed where possible: ``type`` is the JSON type they were logged with; numbers also land in ``number``
# so SQL can filter and sort on them; ``json`` holds the exact JSON text that reads back.
PARAMS: Final = f"""
CREATE TABLE IF NOT EXISTS params (
    project LowCardinality(String),
    entity_type LowCardinality(String),
    entity_id String,
    key String,
    type LowCardinality(String),
    number Nullable(Float64),
    text String,
    json String,
    version UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY (project, entity_type, entity_id, key)
SETTINGS {_DEDUP}
"""

# Written with every PointBlock: ``wait_ingested`` polls it to learn that a producer's seq is queryable.
INGESTED: Final = f"""
CREATE TABLE IF NOT EXISTS ingested (
    project LowCardinality(String),
    entity_type LowCardinality(String),
    entity_id String,
    producer_id String,
    seq UInt64,
    rank UInt32,
    points UInt64,
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree
ORDER BY (project, entity_type, entity_id, producer_id, seq)
SETTINGS {_DEDUP}
"""

# Alerts fired and resolved by the rules evaluated in the stream (trackstream.streams.alerts): one row per
# transition. A replayed transition has the same key and lands once. ``value`` may be NaN or ±inf.
ALERTS: Final = f"""
CREATE TABLE IF NOT EXISTS alerts (
    project LowCardinality(String),
    entity_type LowCardinality(String),
    entity_id String,
    rule_id String,
    condition LowCardinality(String),
    metric String,
    state LowCardinality(String),
    step Nullable(Int64),
    value Nullable(Float64),
    rank Nullable(UInt32),
    threshold Nullable(Float64),
    time DateTime64(9, 'UTC'),
    message String
) ENGINE = ReplacingMergeTree
ORDER BY (project, entity_type, entity_id, rule_id, time, state)
SETTINGS {_DEDUP}
"""

# The sink worker's write-ahead log of chunk boundaries: before a write it records, per topic partition in it,
# [first_offset, last_offset] and the write's key; after a crash it cuts the replay at the same offsets and
# regroups the chunks by key, so the replayed inserts carry the same deduplication tokens and land once.
SINK_CHUNKS: Final = """
CREATE TABLE IF NOT EXISTS sink_chunks (
    group_id String,
    topic String,
    partition UInt32,
    first_offset Int64,
    last_offset Int64,
    created DateTime DEFAULT now(),
    write_key String DEFAULT ''
) ENGINE = ReplacingMergeTree
ORDER BY (group_id, topic, partition, first_offset)
TTL created + INTERVAL 30 DAY
"""

# Columns added since a table was first made, with defaults: a store that lacks one gets it in place (the only
# time the writer needs ALTER ... ADD COLUMN on that table).
ADDED: Final = {
    ("sink_chunks", "write_key"): "ALTER TABLE sink_chunks ADD COLUMN IF NOT EXISTS write_key String DEFAULT ''",
    **{("series_stats", name): f"ALTER TABLE series_stats ADD COLUMN IF NOT EXISTS {name} {kind}"
       for name, kind in (("infinite", "SimpleAggregateFunction(sum, UInt64)"),
                          ("nan_step", f"SimpleAggregateFunction(min, Int64) DEFAULT {UNKNOWN_STEP}"),
                          ("inf_step", f"SimpleAggregateFunction(min, Int64) DEFAULT {UNKNOWN_STEP}"))},
    **{("series_blocks", name): f"ALTER TABLE series_blocks ADD COLUMN IF NOT EXISTS {name} "
                                "SimpleAggregateFunction(sum, UInt64)" for name in ("nans", "infinite")},
}
ADDED_COLUMNS: Final = frozenset(ADDED)
DDL: Final = (POINTS, SERIES_STATS, SERIES_BLOCKS, ENTITIES, PARAMS, INGESTED, ALERTS, SINK_CHUNKS)
TABLES: Final = ("points", "series_stats", "series_blocks", "entities", "params", "ingested", "alerts", "sink_chunks")
# Columns a store made by an older trackstream lacks; the tables cannot be altered in place (a new engine version
# column), so such a store is refused with what to do.
_REQUIRED: Final = {"points": "version", "series_stats": "covers"}
_REQUIRED_SQL: Final = """
SELECT table, name FROM system.columns
WHERE database = currentDatabase() AND table IN ('points', 'series_stats', 'series_blocks', 'sink_chunks')
  AND name IN ('version', 'covers', 'write_key', 'infinite', 'nan_step', 'inf_step', 'nans')
"""


class _Commander(Protocol):
    def command(self, sql: str) -> None: ...

    def create_database(self) -> None: ...

    def query(self, sql: str, params: Any = None) -> tuple[list[str], list[Any]]: ...


def migrate(backend: _Commander) -> None:
    """Create the database and every table that does not exist yet; safe to run any number of times, concurrently.

    Only writers (sink, ingest) and ``trackstream migrate`` call it: the query path runs no DDL.

    Raises :class:`~trackstream.sinks.errors.QueryError` for a store whose tables an older trackstream made
    (``points`` versioned by time): its data has to be re-ingested into a new store.
    """
    backend.create_database()
    for statement in DDL:
        backend.command(statement)
    present = {(table, name) for table, name in backend.query(_REQUIRED_SQL)[1]}
    for column, statement in ADDED.items():
        if column not in present:
            backend.command(statement)
    missing = [f"{table}.{name}" for table, name in _REQUIRED.items() if (table, name) not in present]
    if missing:
        raise QueryError(f"this store was made by an older trackstream (no {', '.join(missing)}): points are now "
                         "versioned in write order, which needs new tables. Point TRACKSTREAM_DATA_DIR (or the "
                         "ClickHouse database) at a new store and re-ingest, e.g. `trackstream sync` from the spool "
                         "or re-import the runs")
