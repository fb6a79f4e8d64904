"""The isolated SDK shim of the integrations: explicit steps and times reach the envelope columns unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

from trackstream.integrations import _sdk
from trackstream.producers.config import ProducerConfig
from trackstream.producers.errors import HandleClosedError
from trackstream.producers.handles import Model, Run
from trackstream.schemas import EntityRef


def _run(tmp_path: Path) -> Run:
    """A run handle that is not registered with the flusher: drain() shows exactly what was buffered."""
    config = ProducerConfig(spool_dir=str(tmp_path))
    return Run(EntityRef("p", "run", "r"), config, name=None, rank=0, world_size=1)


def test_log_history_keeps_steps_and_times(tmp_path: Path) -> None:
    run = _run(tmp_path)
    _sdk.log_history(run, "loss", [0, 10, 10], [1.0, float("nan"), 0.5], [5_000_000, 6_000_000, 7_000_000])
    run.log_metric("loss", 0.25)
    steps, times, values = run.drain().series["loss"]
    assert steps == [0, 10, 10, 11]
    assert times[:3] == [5_000_000, 6_000_000, 7_000_000]
    assert values[0] == 1.0
    assert values[1] != values[1]
    assert values[2:] == [0.5, 0.25]


@pytest.mark.parametrize(("key", "steps", "values", "times"), [
    ("bad:name", [0], [1.0], [1]),
    ("loss", [0, 1], [1.0], [1, 2]),
    ("loss", [0], ["x"], [1]),
    ("loss", [True], [1.0], [1]),
])
def test_log_history_rejects_bad_input_and_buffers_nothing(
    tmp_path: Path, key: str, steps: list[int], values: list[float], times: list[int],
) -> None:
    run = _run(tmp_path)
    with pytest.raises(ValueError, match=r"step|metric"):
        _sdk.log_history(run, key, steps, values, times)
    assert not run.drain()


def test_log_single_has_its_own_time(tmp_path: Path) -> None:
    model = Model(EntityRef("p", "model", "m"), ProducerConfig(spool_dir=str(tmp_path)), 0, 1)
    _sdk.log_single(model, "acc", 0.9, step=7, time_ns=123_000_000)
    assert model.drain().singles == {"acc": (7, 123_000_000, 0.9)}


def test_open_run_announces_the_given_start_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRACKSTREAM_KAFKA_BOOTSTRAP", raising=False)
    run = _sdk.open_run("p", "imported", name="n", params={"a": "1"}, tags={"t": "v"}, started_ns=42,
                        spool_dir=str(tmp_path))
    try:
        started = [e for e in run.drain().events if e.type == "run_started"]
        assert [(e.time_ns, e.data) for e in started] == [(42, {"name": "n", "params": {"a": "1"}, "tags": {"t": "v"}})]
        assert (run.rank, run.world_size) == (0, 1)
    finally:
        _sdk.detach(run)
    assert run.closed
    with pytest.raises(HandleClosedError):
        run.log_metric("x", 1.0)


def test_finish_at_a_given_time_rejects_running(tmp_path: Path) -> None:
    run = _run(tmp_path)
    with pytest.raises(ValueError, match="status"):
        _sdk.finish(run, "running", ended_ns=1)
