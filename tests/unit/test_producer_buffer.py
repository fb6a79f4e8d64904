"""The caller-side buffer: validation at the call, step semantics, lists, single values, overwrite, threads."""

from __future__ import annotations

import math
import threading
from fractions import Fraction
from typing import Any

import numpy as np
import pytest

from trackstream.producers.buffer import MetricBuffer
from trackstream.producers.errors import HandleClosedError


def columns(buffer: MetricBuffer) -> dict[str, tuple[list[int], list[float]]]:
    drained = buffer.drain()
    return {key: (steps, values) for key, (steps, _, values) in drained.series.items()}


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("bad name!", 1.0, "bad name!"),
        ("", 1.0, "empty"),
        ("x" * 251, 1.0, "251"),
        ("flag", True, "bool"),
        ("label", "0.5", "str"),
        ("missing", None, "NoneType"),
        ("nested", [[1.0, 2.0]], "nested"),
        ("mixed", [1.0, "a"], "str"),
        ("obj", object(), "object"),
        ("huge", 10**400, "out of float64 range"),
    ],
)
def test_bad_log_metric_raises_value_error_naming_the_key(key: str, value: object, fragment: str) -> None:
    buffer = MetricBuffer("test")
    with pytest.raises(ValueError, match="metric") as info:
        buffer.log_metric(key, value)
    assert repr(key)[:40] in str(info.value) or key[:40] in str(info.value)
    assert fragment in str(info.value)
    assert not buffer.drain()


def test_non_string_key_and_bad_step_raise() -> None:
    buffer = MetricBuffer("test")
    with pytest.raises(ValueError, match="str"):
        buffer.log_metric(3, 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="step"):
        buffer.log_metric("a", 1.0, step=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="step"):
        buffer.log_metrics({"a": 1.0}, step=True)
    with pytest.raises(ValueError, match="int64"):
        buffer.log_metric("a", 1.0, step=2**63)
    with pytest.raises(ValueError, match="single_value"):
        buffer.log_metric("a", [1.0], single_value=True)


@pytest.mark.parametrize("step", [4096.0, np.float64(50.0), np.float32(7.0), -3.0, Fraction(12, 1)],
                         ids=repr)
def test_whole_number_float_steps_are_their_int(step: Any) -> None:
    buffer = MetricBuffer("test")
    buffer.log_metrics({"loss": 0.5}, step=step)  # Lightning and others hand loggers float steps
    buffer.log_metric("acc", 0.9, step=step)
    buffer.log_history("curve", [step, step + 1], [0.1, 0.2], times_ns=[1, 2])  # the importers' path
    got = columns(buffer)
    assert got["loss"][0] == got["acc"][0] == [int(step)]
    assert got["curve"][0] == [int(step), int(step) + 1]
    assert all(type(s) is int for s in got["loss"][0] + got["acc"][0] + got["curve"][0])


@pytest.mark.parametrize(("step", "fragment"), [
    (1.5, "whole number"), (np.float64(0.25), "whole number"), (float("nan"), "whole number"),
    (float("inf"), "whole number"), (1e30, "int64"), ("5", "integer"), (True, "bool")], ids=repr)
def test_fractional_non_finite_and_other_steps_raise_at_the_call(step: Any, fragment: str) -> None:
    buffer = MetricBuffer("test")
    with pytest.raises(ValueError, match=fragment):
        buffer.log_metrics({"loss": 0.5}, step=step)
    assert not buffer.drain()


def test_a_failing_log_metrics_call_leaves_the_buffer_and_steps_unchanged() -> None:
    buffer = MetricBuffer("test")
    buffer.log_metrics({"a": 1.0, "b": 2.0})
    with pytest.raises(ValueError, match="'c'"):
        buffer.log_metrics({"a": 3.0, "b": 4.0, "c": "oops"})
    with pytest.raises(ValueError, match="bad/name!"):
        buffer.log_metrics({"a": 3.0, "bad/name!": 4.0}, step=10)
    buffer.log_metrics({"a": 5.0, "b": 6.0})
    assert columns(buffer) == {"a": ([0, 1], [1.0, 5.0]), "b": ([0, 1], [2.0, 6.0])}


def test_nan_and_infinities_are_accepted_as_values() -> None:
    buffer = MetricBuffer("test")
    buffer.log_metric("x", math.nan)
    buffer.log_metrics({"x": math.inf, "y": -math.inf})
    buffer.log_metric("x", [math.nan, 1.0])
    steps, values = columns(buffer)["x"]
    assert steps == [0, 1, 2, 3]
    assert math.isnan(values[0])
    assert values[1] == math.inf
    assert math.isnan(values[2])
    assert values[3] == 1.0


def test_numbers_of_other_types_become_floats() -> None:
    buffer = MetricBuffer("test")
    buffer.log_metrics({"i": 3, "f": Fraction(1, 4)})
    buffer.log_metrics({"i": 4, "f": 0.5})
    buffer.log_metric("i", 2**60)
    got = columns(buffer)
    assert got["i"] == ([0, 1, 2], [3.0, 4.0, float(2**60)])
    assert all(type(v) is float for v in got["i"][1] + got["f"][1])


def test_steps_auto_increment_per_key_and_continue_after_explicit_steps() -> None:
    buffer = MetricBuffer("test")
    buffer.log_metric("a", 1.0)
    buffer.log_metric("a", 2.0)
    buffer.log_metric("b", 3.0)
    buffer.log_metric("a", 4.0, step=10)
    buffer.log_metric("a", 5.0)
    buffer.log_metrics({"a": 6.0, "b": 7.0}, step=100)
    buffer.log_metrics({"a": 8.0, "b": 9.0})
    assert columns(buffer) == {"a": ([0, 1, 10, 11, 100, 101], [1.0, 2.0, 4.0, 5.0, 6.0, 8.0]),
                               "b": ([0, 100, 101], [3.0, 7.0, 9.0])}
    buffer.log_metric("a", 10.0)
    assert columns(buffer) == {"a": ([102], [10.0])}


def test_a_list_appends_points_at_consecutive_steps() -> None:
    buffer = MetricBuffer("test")
    buffer.log_metric("loss", [0.9, 0.8, 0.7])
    buffer.log_metric("loss", (0.6,), step=7)
    buffer.log_metrics({"loss": [0.5, 0.4]})
    buffer.log_metric("loss", [])
    assert columns(buffer) == {"loss": ([0, 1, 2, 7, 8, 9], [0.9, 0.8, 0.7, 0.6, 0.5, 0.4])}


def test_single_values_keep_only_the_latest() -> None:
    buffer = MetricBuffer("test")
    buffer.log_metric("acc", 0.5, single_value=True)
    buffer.log_metric("acc", 0.75, single_value=True)
    buffer.log_metric("f1", 0.1, single_value=True, step=3)
    drained = buffer.drain()
    assert {k: (s, v) for k, (s, _, v) in drained.singles.items()} == {"acc": (0, 0.75), "f1": (3, 0.1)}
    assert not drained.series


def test_overwrite_drops_buffered_points_queues_a_marker_and_restarts_steps() -> None:
    buffer = MetricBuffer("test")
    buffer.log_metric("loss", [1.0, 2.0, 3.0])
    buffer.log_metric("other", 1.0)
    buffer.log_metric("loss", [7.0, 8.0], overwrite=True)
    buffer.log_metric("loss", 9.0)
    buffer.log_metrics({"best": 1.0}, overwrite=True)
    drained = buffer.drain()
    assert [(e.type, e.data) for e in drained.events] == [("overwrite", {"metric": "loss"}),
                                                          ("overwrite", {"metric": "best"})]
    assert {k: (s, v) for k, (s, _, v) in drained.series.items()} == {
        "loss": ([0, 1, 2], [7.0, 8.0, 9.0]), "other": ([0], [1.0]), "best": ([0], [1.0])}


def test_overwrite_of_a_single_value_replaces_it() -> None:
    buffer = MetricBuffer("test")
    buffer.log_metric("acc", 0.5, single_value=True)
    buffer.log_metric("acc", 0.6, single_value=True, overwrite=True)
    drained = buffer.drain()
    assert [e.type for e in drained.events] == ["overwrite"]
    assert drained.singles["acc"][2] == 0.6


def test_time_is_stamped_at_the_call_and_shared_by_one_log_metrics_call() -> None:
    buffer = MetricBuffer("test")
    buffer.log_metrics({"a": 1.0, "b": 2.0})
    buffer.log_metrics({"a": 1.0, "b": 2.0})
    drained = buffer.drain()
    times_a, times_b = drained.series["a"][1], drained.series["b"][1]
    assert times_a == times_b
    assert times_a[0] <= times_a[1]
    assert times_a[0] > 1_600_000_000 * 10**9


def test_closed_buffer_rejects_logs_but_still_drains() -> None:
    buffer = MetricBuffer("run p/x")
    buffer.log_metrics({"a": 1.0})
    buffer.log_metrics({"a": 2.0})
    buffer.close_buffer()
    with pytest.raises(HandleClosedError, match="run p/x"):
        buffer.log_metrics({"a": 3.0})
    with pytest.raises(HandleClosedError):
        buffer.log_metric("a", 3.0)
    assert columns(buffer) == {"a": ([0, 1], [1.0, 2.0])}


def test_many_threads_logging_to_one_buffer_lose_nothing() -> None:
    buffer = MetricBuffer("test")
    threads, per_thread = 8, 20_000
    drained_values: list[float] = []
    drained_steps: list[int] = []
    own: dict[str, list[float]] = {}
    stop = threading.Event()

    def drain_loop() -> None:
        while not stop.is_set():
            take(buffer.drain())

    def take(drained: object) -> None:
        for key, (steps, _, values) in drained.series.items():  # type: ignore[attr-defined]
            if key == "shared":
                drained_steps.extend(steps)
                drained_values.extend(values)
            else:
                own.setdefault(key, []).extend(values)

    def work(index: int) -> None:
        for i in range(per_thread):
            buffer.log_metrics({"shared": float(index * per_thread + i), f"t{index}": float(i)})

    drainer = threading.Thread(target=drain_loop)
    drainer.start()
    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    stop.set()
    drainer.join()
    take(buffer.drain())
    assert sorted(drained_values) == [float(v) for v in range(threads * per_thread)]
    assert sorted(drained_steps) == list(range(threads * per_thread))
    assert dict(own.items()) == {f"t{n}": [float(i) for i in range(per_thread)] for n in range(threads)}


def test_past_the_point_cap_log_calls_ask_the_flusher_to_drain() -> None:
    buffer = MetricBuffer("test")
    buffer.point_cap = buffer._series_cap = 4096
    calls: list[int] = []

    def relieve(full: MetricBuffer) -> None:
        calls.append(full.buffered_points())
        full.drain()

    buffer.on_full = relieve
    for i in range(10_000):
        buffer.log_metrics({"a": float(i), "b": float(i)})
    assert calls, "the cap was passed without backpressure"
    assert max(calls) <= 4096 + 2
    for i in range(5000):
        buffer.log_metric("c", float(i))
    assert max(calls) <= 2 * 4096, "each series is capped at its share, so the total stays near the cap"
