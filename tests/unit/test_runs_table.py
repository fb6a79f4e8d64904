"""The runs table's server side (trackstream.sinks.runs_table): search, filters, sorting and pages over runs()
rows, checked against plain Python on generated rows."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trackstream.sinks.errors import QueryError
from trackstream.sinks.runs_table import Listings, table_page

NOW = 1_700_000_100 * 10**9


def row(i: int, *, status: str = "completed", lr: Any = 0.1, loss: float | None = 1.0, nan: int = 0,
        tags: dict[str, str] | None = None, started: str | None = "2023-11-14T22:13:20.000000Z",
        ended: str | None = None) -> dict[str, Any]:
    metrics = {} if loss is None else {"loss": {"kind": "series", "count": 3, "last": loss, "last_step": 2,
                                                "min": loss, "max": loss, "nan_count": nan, "inf_count": 0,
                                                "first_nan_step": 1 if nan else None, "first_inf_step": None}}
    return {"id": f"r{i}", "name": f"run-{i}", "status": status, "tags": tags or {}, "started_at": started,
            "ended_at": ended, "lost_points": 0, "ranks": [], "params": {"lr": lr, "bs": 32}, "metrics": metrics}


def ids(page: dict[str, Any]) -> list[str]:
    return [r["id"] for r in page["data"]]


def test_search_status_and_filters_narrow_and_columns_stay_those_of_every_run() -> None:
    rows = [row(0, lr=0.1, tags={"team": "vision"}), row(1, lr=0.01, status="running"),
            row(2, lr="auto", tags={"baseline": ""}), row(3, lr=0.1, status="failed")]
    page = table_page(rows, search="LR=0.1", now_ns=NOW)
    assert sorted(ids(page)) == ["r0", "r3"]
    assert (page["last_row"], page["total"]) == (2, 4)
    assert page["params"] == {"differ": ["lr"], "same": {"bs": 32}}  # over every row, not the matches
    assert (page["metrics"], page["series"]) == (["loss"], ["loss"])
    assert ids(table_page(rows, search="team=vision run-0", now_ns=NOW)) == ["r0"]
    assert ids(table_page(rows, search="baseline", now_ns=NOW)) == ["r2"]
    assert sorted(ids(table_page(rows, status=["running", "failed"], now_ns=NOW))) == ["r1", "r3"]
    assert ids(table_page(rows, filters=[{"field": "param:lr", "value": "AU"}], now_ns=NOW)) == ["r2"]
    assert ids(table_page(rows, filters=[{"field": "name", "value": "run-1"}], now_ns=NOW)) == ["r1"]
    assert ids(table_page(rows, filters=[{"field": "tags", "value": "team=v"}], now_ns=NOW)) == ["r0"]


def test_a_missing_or_nan_value_sorts_last_both_ways_and_ties_keep_the_next_key() -> None:
    rows = [row(0, loss=0.5), row(1, loss=None), row(2, loss=math.nan), row(3, loss=0.2), row(4, loss=0.5)]
    for direction, expected in (("asc", ["r3", "r0", "r4"]), ("desc", ["r0", "r4", "r3"])):
        got = ids(table_page(rows, sort=[{"field": "metric:loss:min", "dir": direction}], now_ns=NOW))
        assert got[:3] == expected
        assert set(got[3:]) == {"r1", "r2"}
    tie = table_page(rows, sort=[{"field": "metric:loss:last", "dir": "asc"}, {"field": "id", "dir": "desc"}],
                     now_ns=NOW)
    assert ids(tie)[:3] == ["r3", "r4", "r0"]


def test_params_of_mixed_types_sort_numbers_first_and_durations_count_a_running_run_to_now() -> None:
    rows = [row(0, lr="auto"), row(1, lr=0.3), row(2, lr=True), row(3, lr=0.01)]
    assert ids(table_page(rows, sort=[{"field": "param:lr", "dir": "asc"}], now_ns=NOW)) == ["r3", "r1", "r0", "r2"]
    timed = [row(0, ended="2023-11-14T22:13:30.000000Z"), row(1, status="running"),
             row(2, started=None), row(3, ended="2023-11-14T22:13:21.500000Z")]
    got = ids(table_page(timed, sort=[{"field": "duration", "dir": "desc"}], now_ns=NOW))
    assert got == ["r1", "r0", "r3", "r2"]  # running: 100 s to NOW; no start: last


def test_the_default_order_is_newest_first_and_bad_counts_sort() -> None:
    rows = [row(0, started="2023-01-01T00:00:00.000000Z"), row(1, started="2024-01-01T00:00:00.000000Z", nan=3),
            row(2, started=None)]
    assert ids(table_page(rows, now_ns=NOW)) == ["r1", "r0", "r2"]
    assert ids(table_page(rows, sort=[{"field": "metric:loss:bad", "dir": "desc"}], now_ns=NOW))[0] == "r1"


@pytest.mark.parametrize("kwargs", [
    {"size": 0}, {"size": 1001}, {"page": 0}, {"sort": [{"field": "loss", "dir": "asc"}]},
    {"sort": [{"field": "name", "dir": "up"}]}, {"sort": [{"field": "metric:loss:median"}]},
    {"filters": [{"field": "metrics", "value": "x"}]},
])
def test_what_it_does_not_know_raises_query_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(QueryError):
        table_page([row(0)], now_ns=NOW, **kwargs)


@settings(max_examples=60, deadline=None)
@given(losses=st.lists(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)), max_size=40),
       size=st.integers(1, 7), direction=st.sampled_from(["asc", "desc"]))
def test_pages_put_together_are_the_whole_ordering(losses: list[float | None], size: int, direction: str) -> None:
    rows = [row(i, loss=loss) for i, loss in enumerate(losses)]
    sort = [{"field": "metric:loss:last", "dir": direction}]
    first = table_page(rows, sort=sort, size=size, now_ns=NOW)
    pages = [table_page(rows, sort=sort, size=size, page=p, now_ns=NOW) for p in range(1, first["last_page"] + 1)]
    whole = [r for page in pages for r in page["data"]]
    assert len(whole) == first["last_row"] == len(rows)
    values = [r["metrics"]["loss"]["last"] if r["metrics"] else None for r in whole]
    present = [v for v in values if v is not None and not math.isnan(v)]
    assert values[:len(present)] == present  # every value before every missing one
    assert present == sorted(present, reverse=direction == "desc")


def test_listings_give_later_pages_the_rows_of_page_one_until_they_expire() -> None:
    reads: list[int] = []

    def read() -> list[dict[str, Any]]:
        reads.append(1)
        return [row(len(reads))]

    listings = Listings(kept=2, ttl_s=3600)
    token, read_at, rows = listings.rows(None, read)
    assert rows[0]["id"] == "r1"
    assert read_at > 0
    assert listings.rows(token, read)[2] is rows  # a later page: the same read
    other = listings.rows(None, read)[0]
    listings.rows(None, read)  # a third read pushes the oldest out (kept=2)
    assert listings.rows(other, read)[2][0]["id"] == "r2"
    renewed, _at, fresh = listings.rows(token, read)
    assert (renewed != token, fresh[0]["id"], len(reads)) == (True, "r4", 4)  # gone: read again, a new token
    assert Listings(kept=2, ttl_s=0).rows("unknown", read)[2][0]["id"] == "r5"
