"""runs() search as a pure function over its rows: status, params and tags by JSON equality, order by a metric
summary (missing and NaN last), limit; errors for what cannot be searched."""

from __future__ import annotations

import math
from typing import Any

import pytest

from trackstream.schemas.errors import NotFoundError
from trackstream.sinks.errors import QueryError
from trackstream.sinks.run_filter import search


def row(run_id: str, status: str, params: dict[str, Any], loss: float | None, tags: dict[str, str] | None = None
        ) -> dict[str, Any]:
    metrics = {} if loss is None else {"loss": {"last": loss, "min": loss - 1, "max": loss + 1, "count": 10,
                                                "last_step": 9}}
    return {"id": run_id, "status": status, "params": params, "tags": tags or {}, "metrics": metrics}


ROWS = [
    row("a", "completed", {"lr": 0.001, "bs": 32, "flag": True}, 0.5, {"team": "x"}),
    row("b", "running", {"lr": 0.01, "bs": 32, "flag": 1}, 0.3),
    row("c", "failed", {"lr": 0.001, "bs": 64}, math.nan, {"team": "x"}),
    row("d", "completed", {"lr": 0.001, "bs": 1.0 * 32}, 0.9),
    row("e", "completed", {"lr": "0.001"}, None),
]


def ids(rows: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in rows]


def test_filters_by_status_params_and_tags() -> None:
    assert ids(search(ROWS, status="completed")) == ["a", "d", "e"]
    assert ids(search(ROWS, status=["running", "failed"])) == ["b", "c"]
    assert ids(search(ROWS, params={"lr": 0.001})) == ["a", "c", "d"]  # "0.001" (a string) is another value
    assert ids(search(ROWS, params={"lr": 0.001, "bs": 32})) == ["a", "d"]  # 32 and 32.0: one JSON number
    assert ids(search(ROWS, params={"flag": True})) == ["a"]  # 1 is not true
    assert ids(search(ROWS, params={"flag": 1})) == ["b"]
    assert ids(search(ROWS, tags={"team": "x"}, status="completed")) == ["a"]
    assert search(ROWS, params={"nope": 1}) == []


def test_orders_by_a_metric_summary_with_missing_and_nan_last_then_limits() -> None:
    assert ids(search(ROWS, order_by="loss.min")) == ["b", "a", "d", "c", "e"]
    assert ids(search(ROWS, order_by="-loss.last")) == ["d", "a", "b", "c", "e"]
    assert ids(search(ROWS, order_by="loss.min", limit=2)) == ["b", "a"]
    assert ids(search(ROWS, status="completed", order_by="-loss.max", limit=1)) == ["d"]
    assert search(ROWS, limit=0) == []


@pytest.mark.parametrize("order_by", ["loss", "loss.median", ".min", "-"])
def test_a_malformed_order_is_a_query_error(order_by: str) -> None:
    with pytest.raises(QueryError, match="order_by must be"):
        search(ROWS, order_by=order_by)


def test_an_order_by_an_unknown_metric_names_the_closest() -> None:
    with pytest.raises(NotFoundError, match="'losss' not found on the runs; did you mean 'loss'"):
        search(ROWS, order_by="losss.min")
    with pytest.raises(QueryError, match="limit"):
        search(ROWS, limit=-1)
