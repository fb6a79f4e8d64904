"""The one set of limits, at and across every edge, through SDK -> spool -> stream processing -> sink -> chDB.

Whatever the SDK accepts, the stream side accepts and the store holds (no dead letter, no crash, every point
stored); whatever it refuses raises ValueError at the call and logs nothing.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trackstream as ts
from trackstream.schemas.limits import INT64_MAX, INT64_MIN, NAME_MAX, NESTING_MAX, TAG_VALUE_MAX, WORLD_SIZE_MAX
from trackstream.schemas.settings import StoreSettings


def _around(edge: int) -> st.SearchStrategy[int]:
    return st.sampled_from([edge - 1, edge, edge + 1])


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth - 1):
        value = [value]
    return value


calls = st.fixed_dictionaries({
    "world_size": st.one_of(_around(WORLD_SIZE_MAX), st.sampled_from([0, 1, 2, 2**32 + 1])),
    "rank_from_top": st.sampled_from([-1, 0, 1]),  # rank = world_size - 1 + this
    "step": st.one_of(_around(INT64_MAX), _around(INT64_MIN), st.integers(0, 10)),
    "name_length": _around(NAME_MAX),
    "tag_length": _around(TAG_VALUE_MAX),
    "depth": _around(NESTING_MAX),
})


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tmp_path_factory.mktemp("limits-spool"), tmp_path_factory.mktemp("limits-store")


def _log(project: str, call: dict[str, Any], spool: Path) -> int:
    """Log one point as the drawn call says; the points the SDK accepted (0 when it raised ValueError)."""
    world_size = call["world_size"]
    try:
        run = ts.start_run(project, run_id="r", rank=world_size - 1 + call["rank_from_top"], world_size=world_size,
                           params={"deep": _nested(call["depth"] - 1)}, tags={"t": "x" * call["tag_length"]},
                           spool_dir=str(spool), kafka_bootstrap="")
    except ValueError:
        return 0
    accepted = 0
    try:
        run.log_metric("m" * call["name_length"], 1.0, step=call["step"])
        accepted = 1
    except ValueError:
        pass
    try:
        run.log_metric("m", 2.0, step=call["step"])  # the fast path of an existing series, at the same step
        accepted += 1
    except ValueError:
        pass
    run.finish()
    return accepted


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(call=calls)
def test_what_the_sdk_accepts_is_stored_and_what_it_refuses_raises(call: dict[str, Any],
                                                                   dirs: tuple[Path, Path]) -> None:
    from trackstream import _query
    from trackstream.local import catch_up

    spool, store = dirs
    project = f"limits-{uuid.uuid4().hex[:12]}"
    accepted = _log(project, call, spool)
    ts.flush(timeout_s=30)
    catch_up(spool_dir=spool, data_dir=store)
    reader = _query.reader(StoreSettings(data_dir=str(store)), spool_dir=spool)
    # the rank's own points: a world size above 1 may also store cross-rank means (rank 2**32 - 1) of step "m"
    rows = reader.sql("SELECT count() FROM points FINAL WHERE project = {p:String} AND rank != 4294967295",
                      {"p": project})
    stored = rows[0][0]
    dead = [line for line in (store / "dlq.jsonl").read_text().splitlines() if project in line] \
        if (store / "dlq.jsonl").exists() else []
    assert not dead, dead[:1]
    # the drawn name has 249-251 characters, so the two calls log two series: every accepted point is stored
    assert stored == accepted
