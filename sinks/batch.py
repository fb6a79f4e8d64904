"""Batching contract and the columnar batches both backends insert.

:class:`Batcher` is the one batching contract (``add`` / ``due`` / ``flush``): items accumulate until a bound on
rows, bytes or age is reached, then one ``write`` call receives them all. A failed write keeps the items, so the
caller retries the same batch (same rows, same deduplication token) instead of losing or reshaping it.

The ``*_table`` functions turn processed records into pyarrow tables whose columns match
:mod:`trackstream.sinks.schema`;
both backends insert these tables as they are. Points are built segment-wise (one segment per metric batch) so
the per-point work is list ``extend`` and numpy, never a Python loop over points.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import orjson

from trackstream.schemas.envelope import EntityRef
from trackstream.schemas.processed import EntityState, PointBlock, StepAggregate, point_version
from trackstream.sinks.checks import check_point_block, float64_column, int64_column, step_runs
from trackstream.sinks.errors import require
from trackstream.sinks.rollup import Points, series_blocks, series_stats
from trackstream.sinks.schema import CROSS_RANK

if TYPE_CHECKING:
    import pyarrow as pa

T = TypeVar("T")
NS_PER_MS = 1_000_000


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """Flush when any bound is reached: rows, approximate bytes, or age of the oldest item (``linger_ms``).

    ``idle_linger_ms``: for a writer that is idle, the age at which a batch is worth writing anyway (the sink worker
    writes a chunk that old as soon as nothing is in flight, so latency stays low below saturation and batches
    grow only while the writer is busy).
    """

    max_rows: int = 500_000
    max_bytes: int = 64 * 1024 * 1024
    linger_ms: float = 1000.0
    idle_linger_ms: float = 100.0


@dataclass(slots=True)
class Batcher(Generic[T]):
    """Accumulates items and hands them to ``write`` in one call when a bound is reached or on ``flush``."""

    write: Callable[[list[T]], None]
    limits: BatchLimits = field(default_factory=BatchLimits)
    clock: Callable[[], float] = time.monotonic
    items: list[T] = field(default_factory=list)
    rows: int = 0
    nbytes: int = 0
    started: float | None = None

    def add(self, item: T, *, rows: int = 1, nbytes: int = 0) -> bool:
        """Append an item; returns whether the batch is now due (the caller decides when to flush)."""
        if self.started is None:
            self.started = self.clock()
        self.items.append(item)
        self.rows += rows
        self.nbytes += nbytes
        return self.due()

    def full(self) -> bool:
        """True when the rows or the approximate bytes reached ``limits.max_rows`` / ``limits.max_bytes``."""
        return self.rows >= self.limits.max_rows or self.nbytes >= self.limits.max_bytes

    def age_ms(self) -> float:
        """Age of the oldest item in ms (0 when empty)."""
        return 0.0 if self.started is None else (self.clock() - self.started) * 1000.0

    def due(self) -> bool:
        """True when the batch holds items and is :meth:`full` or its oldest item is ``limits.linger_ms`` (ms) old."""
        if not self.items:
            return False
        age_ms = (self.clock() - (self.started or 0.0)) * 1000.0
        return self.full() or age_ms >= self.limits.linger_ms

    def flush(self) -> int:
        """Write everything accumulated; on error the items stay for a retry. Returns the rows written."""
        if not self.items:
            return 0
        self.write(self.items)
        rows = self.rows
        self.clear()
        return rows

    def clear(self) -> None:
        """Drop the accumulated items without writing them and reset rows, bytes and age."""
        self.items = []
        self.rows = 0
        self.nbytes = 0
        self.started = None


def _pa() -> Any:
    return require("pyarrow")


def _np() -> Any:
    return require("numpy")


def _dictionary(values: list[str], indices: Any) -> pa.Array:
    pa = _pa()
    return pa.DictionaryArray.from_arrays(pa.array(indices, pa.int32()), pa.array(values, pa.string()))


class _Interner:
    """Maps strings to small ints so string columns become dictionary arrays (cheap to build and to insert)."""

    def __init__(self) -> None:
        self.index: dict[Any, int] = {}
        self.values: list[Any] = []

    def __call__(self, value: Any) -> int:
        found = self.index.get(value)
        if found is None:
            found = self.index[value] = len(self.values)
            self.values.append(value)
        return found


def _ms_timestamps(times_ns: Any) -> pa.Array:
    pa = _pa()
    return pa.array(_np().floor_divide(times_ns, NS_PER_MS), pa.timestamp("ms", tz="UTC"))


def split_values(values: Any) -> tuple[pa.Array, pa.Array]:
    """float64 -> (float32, float64 or NULL where the float32 widens back to the very same bits)."""
    np, pa = _np(), _pa()
    with np.errstate(over="ignore", invalid="ignore"):
        narrow = values.astype(np.float32)
    exact = narrow.astype(np.float64).view(np.uint64) == values.view(np.uint64)
    return pa.array(narrow), pa.array(values, mask=exact)


@dataclass(slots=True)
class _Segments:
    """Per-metric-batch segments of a list of point blocks, plus the flat point columns."""

    entities: _Interner = field(default_factory=_Interner)
    metrics: _Interner = field(default_factory=_Interner)
    kinds: _Interner = field(default_factory=_Interner)
    entity: list[int] = field(default_factory=list)
    metric: list[int] = field(default_factory=list)
    kind: list[int] = field(default_factory=list)
    generation: list[int] = field(default_factory=list)
    rank: list[int] = field(default_factory=list)
    length: list[int] = field(default_factory=list)
    steps: list[Any] = field(default_factory=list)  # int64 arrays, one per segment
    times: list[Any] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)  # float64 arrays (NaN where the wire has null)
    version: list[int] = field(default_factory=list)  # per segment: the write order of its points
    covers: dict[int, Any] = field(default_factory=dict)  # segment index -> counts, for cross-rank segments
    points: int = 0

    def add(self, block: PointBlock) -> None:
        entity = self.entities("\x00".join((block.entity.project, block.entity.type, block.entity.id)))
        version = point_version(block.incarnation, block.seq)
        for batch, generation in zip(block.metrics, block.generations, strict=True):
            if batch.values:
                key = (entity, self.metrics(batch.name), self.kinds(batch.kind), generation, block.rank)
                self.append(key, batch.steps, batch.times_ns, batch.values, version=version)

    def add_steps(self, records: Sequence[StepAggregate]) -> None:
        """Cross-rank step aggregates as points of rank :data:`~trackstream.sinks.schema.CROSS_RANK`: value the
        mean, time the latest point time, version and ``covers`` the count of ranks (a re-emission after a late
        rank has a higher count). One segment per run of records of one (entity, metric, generation)."""
        start = 0
        while start < len(records):
            first = records[start]
            end = start + 1
            while end < len(records) and records[end].entity == first.entity and records[end].metric == first.metric \
                    and records[end].generation == first.generation:
                end += 1
            run = records[start:end]
            entity = self.entities("\x00".join((first.entity.project, first.entity.type, first.entity.id)))
            key = (entity, self.metrics(first.metric), self.kinds("series"), first.generation, CROSS_RANK)
            counts = [r.count for r in run]
            self.append(key, [r.step for r in run], [r.time_ns for r in run], [r.mean for r in run], version=0,
                        covers=counts)
            start = end

    def append(self, key: tuple[int, int, int, int, int], steps: Sequence[int] | Any, times: Sequence[int] | Any,
               values: Sequence[float | None], *, version: int, covers: Sequence[int] | None = None) -> None:
        """One segment: its key (entity, metric, kind as interned ids; generation; rank), its columns (steps and
        times as int64 arrays or sequences), the version of its points, and for a cross-rank segment the rank
        count of each point (which is then also its version)."""
        entity, metric, kind, generation, rank = key
        if covers is not None:
            self.covers[len(self.entity)] = _np().asarray(covers, dtype=_np().int64)
        self.version.append(version)
        self.entity.append(entity)
        self.metric.append(metric)
        self.kind.append(kind)
        self.generation.append(generation)
        self.rank.append(rank)
        self.length.append(len(values))
        np = _np()
        self.steps.append(np.asarray(steps, dtype=np.int64))
        self.times.append(np.asarray(times, dtype=np.int64))
        self.values.append(np.asarray(values, dtype=np.float64))  # None (null on the wire): NaN until values()
        self.points += len(values)


@dataclass(slots=True)
class PointColumns:
    """Point blocks accumulated straight into the flat columns :func:`points_tables` builds from.

    :meth:`add_raw` reads a ``<prefix>.points`` message (:func:`trackstream.schemas.processed.encode_point_block`)
    without
    building a :class:`PointBlock` or a Python float per point: the worker decodes each message into the chunk
    it is filling, and the chunk's tables are built from these lists in one pass.
    """

    segments: _Segments = field(default_factory=_Segments)
    ingested: list[tuple[str, str, str, str, int, int, int]] = field(default_factory=list)
    nonfinite: list[tuple[int, int]] = field(default_factory=list)  # (flat index, float64 bits)
    points: int = 0
    steps: int = 0  # cross-rank step aggregates added by :meth:`add_steps_raw`

    def __len__(self) -> int:
        """How many blocks were added."""
        return len(self.ingested)

    def add(self, block: PointBlock) -> int:
        """Add one decoded point block; returns its number of points (empty metric groups add no segment)."""
        self.segments.add(block)
        return self._ingested((block.entity.project, block.entity.type, block.entity.id, block.producer_id,
                               block.seq, block.rank, block.point_count()))

    def add_raw(self, raw: bytes) -> int:
        """Add one encoded point block; returns its points. Raises (adding nothing) on a malformed message, and
        :class:`~trackstream.sinks.checks.Rejected` on a value its column cannot hold (e.g. a rank past UInt32)."""
        wire = orjson.loads(raw)
        check_point_block(wire)
        project, entity_type, entity_id = wire["entity"]
        rank, producer_id, seq = wire["rank"], wire["producer_id"], wire["seq"]
        version = point_version(wire.get("incarnation", 0), seq)
        batches = [(m["name"], m["kind"], int64_column(f"metrics[{at}].steps", m["steps"]),
                    int64_column(f"metrics[{at}].times_ns", m["times_ns"]),
                    float64_column(f"metrics[{at}].values", m["values"]), m.get("nonfinite", ()), generation)
                   for at, (m, generation) in enumerate(zip(wire["metrics"], wire["generations"], strict=True))]
        seg, points = self.segments, 0
        entity = seg.entities("\x00".join((project, entity_type, entity_id)))
        for name, kind, steps, times, values, nonfinite, generation in batches:
            if not len(values):
                continue
            base = seg.points
            self.nonfinite.extend((base + index, bits) for index, bits in nonfinite)
            seg.append((entity, seg.metrics(name), seg.kinds(kind), generation, rank), steps, times, values,
                       version=version)
            points += len(values)
        return self._ingested((project, entity_type, entity_id, producer_id, seq, rank, points))

    def add_steps_raw(self, raw: bytes | None) -> int | None:
        """Add one ``<prefix>.steps`` message column-wise (:func:`~trackstream.sinks.checks.step_runs`); returns
        its records, or ``None`` (adding nothing) when the message needs the record-by-record decode."""
        decoded = step_runs(raw)
        if decoded is None:
            return None
        runs, count = decoded
        seg = self.segments
        for entity, metric, generation, steps, times, means, counts in runs:
            key = (seg.entities("\x00".join(entity)), seg.metrics(metric), seg.kinds("series"), generation, CROSS_RANK)
            seg.append(key, steps, times, means, version=0, covers=counts)
        self.steps += count
        return count

    def _ingested(self, row: tuple[str, str, str, str, int, int, int]) -> int:
        self.ingested.append(row)
        self.points += row[-1]
        return row[-1]

    def values(self) -> Any:
        """The float64 values (JSON nulls are NaN until the exact non-finite bits are put back)."""
        np = _np()
        chunks = self.segments.values
        values = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float64)
        if self.nonfinite:
            at, bits = zip(*self.nonfinite, strict=True)
            values.view(np.uint64)[list(at)] = np.array(bits, dtype=np.uint64)
        return values


def _entity_columns(interner: _Interner, per_row: Any) -> dict[str, pa.Array]:
    parts = [key.split("\x00", 2) for key in interner.values]
    # Each column's dictionary holds distinct values: one id in two projects (or as a run and a model) is one entry.
    projects, types, ids = _Interner(), _Interner(), _Interner()
    project_of = _np().array([projects(p[0]) for p in parts], dtype=_np().int32)
    type_of = _np().array([types(p[1]) for p in parts], dtype=_np().int32)
    id_of = _np().array([ids(p[2]) for p in parts], dtype=_np().int32)
    return {
        "project": _dictionary(projects.values, project_of[per_row]),
        "entity_type": _dictionary(types.values, type_of[per_row]),
        "entity_id": _dictionary(ids.values, id_of[per_row]),
    }


def points_tables(blocks: Iterable[PointBlock] | PointColumns) -> dict[str, pa.Table]:
    """The ``points``, ``series_stats``, ``series_blocks`` and ``ingested`` rows of some point blocks (and the
    cross-rank step aggregates of :meth:`PointColumns.add_steps`).

    A (series, step) written more than once in the batch keeps its last write only: the highest version, then
    the latest in the batch (an MLflow history holding a step twice, a step re-logged between two flushes).
    """
    np, pa = _np(), _pa()
    if not isinstance(blocks, PointColumns):
        columns = PointColumns()
        for block in blocks:
            columns.add(block)
        blocks = columns
    seg = blocks.segments
    lengths = np.array(seg.length, dtype=np.int64)
    per_segment = {name: np.array(getattr(seg, name), dtype=np.int64)
                   for name in ("entity", "metric", "kind", "generation", "rank", "version")}
    steps = np.concatenate(seg.steps) if seg.steps else np.zeros(0, dtype=np.int64)
    times = np.concatenate(seg.times) if seg.times else np.zeros(0, dtype=np.int64)
    values = blocks.values()
    versions = np.repeat(per_segment["version"], lengths)
    covers = None
    if seg.covers:
        covers = np.ones(len(steps), dtype=np.int64)
        starts = np.r_[0, np.cumsum(lengths)[:-1]]
        for index, counts in seg.covers.items():
            covers[starts[index]:starts[index] + lengths[index]] = counts
            versions[starts[index]:starts[index] + lengths[index]] = counts
    keys = np.stack([per_segment[name] for name in ("entity", "metric", "generation", "rank")], axis=1).reshape(-1, 4)
    series_keys, series = np.unique(keys, axis=0, return_inverse=True)
    series = series.reshape(-1)
    kept = _last_writes(steps, versions, lengths, series)
    if kept is not None:
        order, segment_of = kept
        steps, times, values, versions = steps[order], times[order], values[order], versions[order]
        covers = None if covers is None else covers[order]
        lengths = np.bincount(segment_of, minlength=len(lengths)).astype(np.int64)
        nonempty = lengths > 0
        per_segment = {name: column[nonempty] for name, column in per_segment.items()}
        series, lengths = series[nonempty], lengths[nonempty]

    def repeat(name: str, dtype: Any) -> Any:
        return np.repeat(per_segment[name].astype(dtype), lengths)

    value32, value_exact = split_values(values)
    points = {
        **_entity_columns(seg.entities, repeat("entity", np.int32)),
        "metric": _dictionary(seg.metrics.values, repeat("metric", np.int32)),
        "generation": pa.array(repeat("generation", np.uint32)),
        "rank": pa.array(repeat("rank", np.uint32)),
        "step": pa.array(steps),
        "time": _ms_timestamps(times),
        "kind": _dictionary(seg.kinds.values, repeat("kind", np.int32)),
        "value32": value32,
        "value_exact": value_exact,
        "version": pa.array(versions.astype(np.uint64)),
    }
    kinds = per_segment["kind"]
    series_kinds = np.zeros(len(series_keys), dtype=np.int64)
    series_kinds[series] = kinds
    series_keys = np.concatenate([series_keys, series_kinds[:, None]], axis=1)
    rollup = Points(steps, times, values, lengths, series, kinds == seg.kinds.index.get("single", -1), covers)
    return {
        "points": pa.table(points),
        "series_stats": _series_table(seg, series_keys, *series_stats(rollup), with_kind=True),
        "series_blocks": _series_table(seg, series_keys, *series_blocks(rollup)),
        "ingested": _ingested_table(blocks.ingested),
    }


def _last_writes(steps: Any, versions: Any, lengths: Any, series: Any) -> tuple[Any, Any] | None:
    """Where some (series, step) occurs twice in a batch: the points to keep, ordered by (segment, step), and
    their segment; ``None`` (the common case, checked per segment) when every segment is ordered by step and the
    segments of one series do not overlap."""
    np = _np()
    starts = np.r_[0, np.cumsum(lengths)[:-1]].astype(np.int64)
    rising = np.ones(len(steps), dtype=bool)
    rising[1:] = steps[1:] > steps[:-1]
    rising[starts] = True
    if rising.all():
        low, high = steps[starts], steps[starts + lengths - 1]
        order = np.lexsort((low, series))
        same = series[order][1:] == series[order][:-1]
        if not (same & (low[order][1:] <= high[order][:-1])).any():  # sorted by start: neighbours suffice
            return None
    segment_of = np.repeat(np.arange(len(lengths)), lengths)
    point_series = series[segment_of]
    order = np.lexsort((np.arange(len(steps)), versions, steps, point_series))
    last = np.r_[(point_series[order][1:] != point_series[order][:-1]) | (steps[order][1:] != steps[order][:-1]),
                 True]
    kept = order[last]
    kept = kept[np.lexsort((steps[kept], segment_of[kept]))]
    return kept, segment_of[kept]


def _series_table(seg: _Segments, series_keys: Any, series: Any, columns: dict[str, pa.Array], *,
                  with_kind: bool = False) -> pa.Table:
    """Key columns (entity, metric, generation, rank[, kind]) for rows given by series id, then ``columns``."""
    np, pa = _np(), _pa()
    if not columns:
        return pa.table({})
    keys = series_keys[series]
    table = {
        **_entity_columns(seg.entities, keys[:, 0].astype(np.int32)),
        "metric": _dictionary(seg.metrics.values, keys[:, 1].astype(np.int32)),
        "generation": pa.array(keys[:, 2].astype(np.uint32)),
        "rank": pa.array(keys[:, 3].astype(np.uint32)),
    }
    if with_kind:
        table["kind"] = _dictionary(seg.kinds.values, keys[:, 4].astype(np.int32))
    return pa.table(table | columns)


def _entity_rows(entities: Sequence[EntityRef]) -> dict[str, list[str]]:
    return {
        "project": [e.project for e in entities],
        "entity_type": [e.type for e in entities],
        "entity_id": [e.id for e in entities],
    }


def _ingested_table(rows: list[tuple[str, str, str, str, int, int, int]]) -> pa.Table:
    pa = _pa()
    project, entity_type, entity_id, producer_id, seq, rank, points = zip(*rows, strict=True) if rows else [()] * 7
    return pa.table({
        "project": pa.array(project, pa.string()), "entity_type": pa.array(entity_type, pa.string()),
        "entity_id": pa.array(entity_id, pa.string()), "producer_id": pa.array(producer_id, pa.string()),
        "seq": pa.array(seq, pa.uint64()), "rank": pa.array(rank, pa.uint32()), "points": pa.array(points, pa.uint64()),
    })


def param_row(value: Any) -> tuple[str, float | None, str, str]:
    """(type, number, text, json) of one param: read back with the JSON type it was logged with."""
    if value is None:
        return "null", None, "", "null"
    if isinstance(value, bool):
        return "bool", float(value), "", "true" if value else "false"
    if isinstance(value, int):
        return "int", float(value), "", str(value)
    if isinstance(value, float):
        return "float", value, "", repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return "string", None, value, orjson.dumps(value).decode()
    return "json", None, "", orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def entities_tables(states: Sequence[EntityState]) -> dict[str, pa.Table]:
    """The ``entities`` and ``params`` rows for a list of entity states."""
    pa = _pa()
    entities = pa.table({
        **_entity_rows([s.entity for s in states]),
        "name": [s.name for s in states],
        "status": [s.status for s in states],
        "tags": pa.array([list(s.tags.items()) for s in states], pa.map_(pa.string(), pa.string())),
        "started_ns": pa.array([s.started_ns for s in states], pa.int64()),
        "ended_ns": pa.array([s.ended_ns for s in states], pa.int64()),
        "producers": [orjson.dumps(s.producers).decode() for s in states],
        "lost_points": pa.array([s.lost_points for s in states], pa.uint64()),
        "version": pa.array([s.version for s in states], pa.uint64()),
    })
    rows = [(s, key, param_row(value)) for s in states for key, value in s.params.items()]
    params = pa.table({
        **_entity_rows([s.entity for s, _, _ in rows]),
        "key": [key for _, key, _ in rows],
        "type": [p[0] for _, _, p in rows],
        "number": pa.array([p[1] for _, _, p in rows], pa.float64()),
        "text": [p[2] for _, _, p in rows],
        "json": [p[3] for _, _, p in rows],
        "version": pa.array([s.version for s, _, _ in rows], pa.uint64()),
    })
    return {"entities": entities, "params": params}


def param_value(kind: str, json_text: str, text: str) -> Any:
    """Inverse of :func:`param_row`."""
    if kind == "string":
        return text
    if kind == "float":
        return float(json_text)
    if kind == "int":
        return int(json_text)
    return orjson.loads(json_text)
