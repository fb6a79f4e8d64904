"""The SDK calls that importing history needs, in one place.

Importing an MLflow run keeps each point's original timestamp and the run's original start and end times:
that is what makes a re-import land on exactly the rows of the first import. The SDK offers these as
keyword options meant for importers (``started_ns``, ``time_ns``, ``times_ns``, ``ended_ns``, ``detach``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trackstream import producers
from trackstream.producers.handles import Model, Run


def open_run(
    project: str, run_id: str, *, name: str | None, params: dict[str, Any], tags: dict[str, str],
    started_ns: int, **options: Any,
) -> Run:
    """Open run ``run_id`` as rank 0 of 1 and announce it as started at ``started_ns`` (not now)."""
    return producers.start_run(
        project, name, run_id=run_id, params=params, tags=tags, rank=0, world_size=1, started_ns=started_ns,
        **options,
    )


def log_history(
    handle: Run | Model, key: str, steps: Sequence[int], values: Sequence[float], times_ns: Sequence[int],
) -> None:
    """Append points of series ``key`` with their own steps and times (validated like a log call)."""
    handle.log_history(key, steps, values, times_ns=times_ns)


def log_single(handle: Run | Model, key: str, value: float, *, step: int, time_ns: int) -> None:
    """Log ``key`` as a single value (latest wins) at ``step``, stamped ``time_ns``."""
    handle.log_metric(key, value, step=step, single_value=True, time_ns=time_ns)


def finish(run: Run, status: str, *, ended_ns: int | None, timeout_s: float | None = None) -> None:
    """Finish ``run`` with ``status`` at ``ended_ns`` (now when None), flushing what it buffered."""
    run.finish(status, ended_ns=ended_ns, timeout_s=timeout_s)


def detach(run: Run, *, timeout_s: float | None = None) -> None:
    """Flush ``run`` and stop logging to it without finishing it (nor letting the exit hook finish it)."""
    run.detach(timeout_s=timeout_s)
