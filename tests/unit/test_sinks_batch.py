"""Pure logic of the sinks: batching contract, column builders, parameter formatting, read-only check."""

from __future__ import annotations

import math
import struct

import numpy as np
import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trackstream.schemas.envelope import EntityRef, MetricBatch
from trackstream.schemas.processed import EntityState, PointBlock, encode_point_block
from trackstream.sinks.batch import (
    Batcher,
    BatchLimits,
    PointColumns,
    entities_tables,
    param_row,
    param_value,
    points_tables,
    split_values,
)
from trackstream.sinks.chdb_backend import format_param
from trackstream.sinks.errors import IngestTimeout, QueryError, SinkError, StoreUnavailable


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_batcher_flushes_on_rows_bytes_and_age() -> None:
    written: list[list[int]] = []
    clock = Clock()
    batcher = Batcher(write=written.append, limits=BatchLimits(max_rows=10, max_bytes=100, linger_ms=50), clock=clock)
    assert not batcher.add(1, rows=4, nbytes=10)
    assert batcher.add(2, rows=6, nbytes=10)  # rows bound
    assert batcher.flush() == 10
    assert written == [[1, 2]]
    assert batcher.add(3, rows=1, nbytes=100)  # bytes bound
    batcher.flush()
    assert not batcher.add(4, rows=1)
    clock.now = 0.049
    assert not batcher.due()
    clock.now = 0.05
    assert batcher.due()  # age bound
    assert batcher.flush() == 1
    assert written[-1] == [4]
    assert batcher.flush() == 0
    assert not batcher.due()


def test_batcher_keeps_items_when_write_fails() -> None:
    attempts: list[list[str]] = []

    def write(items: list[str]) -> None:
        attempts.append(list(items))
        if len(attempts) == 1:
            raise StoreUnavailable("down")

    batcher = Batcher(write=write)
    batcher.add("a", rows=3)
    with pytest.raises(StoreUnavailable):
        batcher.flush()
    assert batcher.items == ["a"]
    assert batcher.rows == 3
    assert batcher.flush() == 3
    assert attempts == [["a"], ["a"]]


def _bits(value: float) -> int:
    return int(struct.unpack("<Q", struct.pack("<d", value))[0])


@settings(deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True) | st.floats(width=32), max_size=50))
def test_split_values_round_trips_every_float64(values: list[float]) -> None:
    narrow, exact = split_values(np.array(values, dtype=np.float64))
    back = [e if e is not None else float(np.float32(n)) for n, e in zip(narrow.to_pylist(), exact.to_pylist(),
                                                                         strict=True)]
    assert [_bits(v) for v in back] == [_bits(v) for v in values]


def test_float32_values_need_no_exact_column() -> None:
    values = np.random.default_rng(1).normal(size=1000).astype(np.float32).astype(np.float64)
    _narrow, exact = split_values(values)
    assert exact.null_count == 1000


def test_points_tables_columns_and_series_rows() -> None:
    entity = EntityRef("p", "run", "r")
    blocks = [
        PointBlock(entity, 1, "prod", 5, [MetricBatch("a", "series", [3, 4], [10**9, 2 * 10**9], [1.0, 2.0]),
                                          MetricBatch("b", "single", [0], [3 * 10**9], [math.nan])], [0, 2]),
        PointBlock(EntityRef("q", "model", "m:1"), 0, "prod2", 1, [MetricBatch("a", "series", [], [], [])], [0]),
    ]
    tables = points_tables(blocks)
    points = tables["points"].to_pydict()
    assert points["entity_id"] == ["r", "r", "r"]
    assert points["metric"] == ["a", "a", "b"]
    assert points["generation"] == [0, 0, 2]
    assert points["rank"] == [1, 1, 1]
    assert points["step"] == [3, 4, 0]
    assert points["kind"] == ["series", "series", "single"]
    series = tables["series_stats"].to_pydict()
    assert (series["metric"], series["min_step"], series["max_step"]) == (["a", "b"], [3, 0], [4, 0])
    assert series["kind"] == ["series", "single"]
    assert series["segments"] == [[{"1": 3, "2": 4}], [{"1": 0, "2": 0}]]
    assert tables["series_blocks"].to_pydict()["level"] == [1, 2]
    ingested = tables["ingested"].to_pydict()
    assert ingested["seq"] == [5, 1]
    assert ingested["points"] == [3, 0]
    assert ingested["project"] == ["p", "q"]


def _special_blocks() -> list[PointBlock]:
    nan_payload = struct.unpack("<d", struct.pack("<Q", 0x7FF8_0000_0000_0ABC))[0]
    values = [1.0, math.nan, math.inf, -math.inf, -0.0, nan_payload, 1e-310, 0.1]
    return [
        PointBlock(EntityRef("p", "run", "r'1"), 2, "prod", 7,
                   [MetricBatch("loss", "series", list(range(8)), [i * 10**9 for i in range(8)], values),
                    MetricBatch("lr", "single", [3], [5], [math.nan]), MetricBatch("x", "series", [], [], [])],
                   [0, 1, 0]),
        PointBlock(EntityRef("q", "model", "m:1"), 0, "prod2", 1, [MetricBatch("acc", "series", [1, 2], [1, 2],
                                                                            [0.5, -math.inf])], [3]),
    ]


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue())


def test_point_columns_from_wire_bytes_match_decoded_blocks() -> None:
    blocks = _special_blocks()
    columns = PointColumns()
    assert [columns.add_raw(encode_point_block(b)) for b in blocks] == [9, 2]
    assert columns.points == 11
    from_raw, from_blocks = points_tables(columns), points_tables(blocks)
    for name, table in from_blocks.items():
        assert _ipc(from_raw[name]) == _ipc(table), name  # bit for bit (NaN never equals itself)
    exact = from_raw["points"].column("value_exact").to_pylist()
    narrow = from_raw["points"].column("value32").to_numpy().astype(np.float64)
    bits = [struct.pack("<d", v if v is not None else float(n)) for v, n in zip(exact, narrow, strict=True)]
    expected = [struct.pack("<d", v) for b in blocks for m in b.metrics for v in m.values]
    assert bits == expected  # every float64 bit for bit, NaN payload and -0.0 included


def test_point_columns_skip_a_malformed_message_whole() -> None:
    columns = PointColumns()
    good = encode_point_block(_special_blocks()[1])
    columns.add_raw(good)
    wire = orjson.loads(good)
    wire["metrics"][0]["values"] = [1.0]  # shorter than its steps
    for raw in (b"{", orjson.dumps(wire), orjson.dumps({"entity": ["p", "run"]})):
        with pytest.raises((ValueError, KeyError, orjson.JSONDecodeError)):
            columns.add_raw(raw)
    assert columns.points == 2
    assert points_tables(columns)["points"].num_rows == 2


PARAMS = [None, True, False, 0, -7, 2**62, 0.1, 1e300, math.inf, "", "a'b\\c", "x\"); DROP", [1, "a"], {"k": [1.5]}]


@pytest.mark.parametrize("value", PARAMS)
def test_params_read_back_with_their_json_type(value: object) -> None:
    kind, _number, text, json_text = param_row(value)
    back = param_value(kind, json_text, text)
    assert back == value
    assert type(back) is type(value)


def test_entities_tables_keep_params_and_tags() -> None:
    state = EntityState(EntityRef("p", "run", "r"), "n", "running", {"lr": 0.1, "opt": "adam"}, {"t": "v"}, version=3)
    tables = entities_tables([state])
    assert tables["entities"].to_pydict()["tags"] == [[("t", "v")]]
    assert tables["params"].to_pydict()["key"] == ["lr", "opt"]


@pytest.mark.parametrize(("value", "text"), [
    (None, "\\N"), (True, "true"), (3, "3"), (0.5, "0.5"), (math.nan, "nan"), (-math.inf, "-inf"),
    ("a\\b\tc\nd'", "a\\\\b\\tc\\nd'"), (["x'y", "z\\"], "['x\\'y','z\\\\']"), ([1, 2], "[1,2]"),
])
def test_format_param(value: object, text: str) -> None:
    assert format_param(value) == text


def test_format_param_rejects_unknown_types() -> None:
    with pytest.raises(QueryError):
        format_param(object())


def test_error_hierarchy() -> None:
    assert StoreUnavailable("x").retriable
    assert not QueryError("x").retriable
    assert issubclass(IngestTimeout, SinkError)
    assert issubclass(IngestTimeout, TimeoutError)
    assert SinkError("x", retriable=True).retriable


def test_importing_sinks_loads_no_driver() -> None:
    import subprocess
    import sys

    code = ("import sys, trackstream.sinks, trackstream.sinks.query, trackstream.sinks.worker, trackstream.sinks.sink\n"
            "heavy = {'chdb', 'clickhouse_connect', 'pyarrow', 'numpy', 'aiokafka'} & set(sys.modules)\n"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_one_id_in_two_projects_and_as_run_and_model_is_one_dictionary_entry() -> None:
    def block(project: str, kind: str) -> PointBlock:
        return PointBlock(EntityRef(project, kind, "same-id"), 0, f"prod-{project}-{kind}", 1,
                          [MetricBatch("loss", "series", [0, 1], [10**9, 2 * 10**9], [1.0, 0.5])], [0])

    tables = points_tables([block("p0", "run"), block("p1", "run"), block("p0", "model")])
    for name in ("points", "series_stats", "series_blocks"):
        column = tables[name].column("entity_id").combine_chunks()
        assert column.dictionary.to_pylist() == ["same-id"], name  # ClickHouse refuses repeated dictionary values
        rows = tables[name].select(["project", "entity_type", "entity_id"]).to_pylist()
        assert {(r["project"], r["entity_type"]) for r in rows} == {("p0", "run"), ("p1", "run"), ("p0", "model")}
        assert {r["entity_id"] for r in rows} == {"same-id"}
