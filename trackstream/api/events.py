"""Server push for the live page: ``GET /api/v1/events``, a Server-Sent Events stream (docs/ui.md).

The page opens one stream per view, ``/api/v1/events?project=P[&metric=M&runs=a,b&points=N&entity_type=run]``,
and the server sends what changed; the page never re-queries whole curves:

- ``event: runs`` ``{"runs": [row, ...], "new": [id, ...]}``: the runs whose state changed (every run in the first
  event, unless ``changes=true``; only the view's ``runs`` when it names some; none with ``states=false``), rows
  as ``QueryService.entities`` gives them (id, name, status, tags, started_at, ended_at, lost_points, ranks);
  ``new``: those first seen since the stream opened, or started at or after ``since`` (ms since the epoch: when the
  page read its rows).
- ``event: curves`` ``{"curves": {run: {"plan": {"origin", "width"}, "buckets": [bucket, ...]}}}``: a run's whole
  curve (buckets as ``curves()`` gives them), sent first and again when the run outgrows its plan (more than
  twice ``points`` buckets).
- ``event: buckets`` ``{"buckets": {run: [bucket, ...]}}``: the newest buckets of a run; they replace the page's
  buckets from the first one's ``step_from`` on (the last bucket fills up while a run logs).
- ``event: alerts`` ``{"alerts": [row, ...]}``: alert transitions of the project's runs not sent yet, newest first,
  rows as ``QueryService.alerts`` gives them (rule_id, when, run, metric, state, step, value, time, message,
  ``active``, ...). The first one holds the rules firing now and the last ``ALERTS_FIRST`` transitions; then,
  polled every ``ALERTS_INTERVAL_S``, the transitions stored since (one stored late, with a time up to
  ``ALERTS_LOOKBACK_NS`` before the newest sent, is still sent once). A row's ``active`` is as of when it was
  sent: a later row of the same rule and run supersedes it. Sent only when there is one.
- a comment line (``: ping``) every ``PING_S`` so proxies keep the stream open.

Every ``interval_s`` the stream asks the store for the runs' newest steps (one small aggregation over
``series_stats``) and reads only the buckets from each run's last bucket on. Floats are in wire form
(:mod:`trackstream.api.wire`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Final

import orjson
from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from trackstream.api.wire import to_wire

log = logging.getLogger(__name__)

INTERVAL_S: Final = 0.25
RUNS_INTERVAL_S: Final = 1.0
PING_S: Final = 15.0
ALERTS_INTERVAL_S: Final = 0.25
ALERTS_FIRST: Final = 50
ALERTS_SEEN_MAX: Final = 10_000
ALERTS_LOOKBACK_NS: Final = 3600 * 10**9


def sse(event: str, data: Any) -> bytes:
    """One Server-Sent Event: ``event: <event>`` and one ``data:`` line of JSON (wire floats)."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(to_wire(data)) + b"\n\n"


class LiveView:
    """What one stream has sent, and what to send next (pure bookkeeping over a ``QueryService``)."""

    def __init__(self, service: Any, *, project: str, metric: str | None, runs: list[str], points: int,
                 entity_type: str, changes_only: bool = False, since_ms: int | None = None,
                 states: bool = True) -> None:
        self.service, self.project, self.metric, self.runs = service, project, metric, runs
        self.points, self.entity_type = points, entity_type
        self.send_states = states
        self.states: dict[str, bytes] = {}
        self.read_once = False
        self.changes_only = changes_only
        # Runs started at or after this (ISO 8601 text orders as time) are new even on the first read: they started
        # after the page read its rows, before the stream opened.
        self.since = None if since_ms is None else time.strftime(
            "%Y-%m-%dT%H:%M:%S", time.gmtime(since_ms // 1000)) + f".{since_ms % 1000:03d}000Z"
        self.plans: dict[str, dict[str, int]] = {}
        self.heads: dict[str, tuple[int, int]] = {}  # per run: (generation, highest step) when last sent
        self.tails: dict[str, int] = {}  # per run: the step_from of its last bucket sent
        self.alerts_sent: dict[tuple[str, str, int, str], int] | None = None  # (rule, run, ns, state) -> ns

    def new_alerts(self) -> list[dict[str, Any]]:
        """The alert rows not sent yet, newest first (see the module docstring).

        The first call sends the active ones and the newest ``ALERTS_FIRST``, and takes the newest
        ``ALERTS_SEEN_MAX`` as seen; later calls read the transitions after the newest seen (or now, if earlier)
        less ``ALERTS_LOOKBACK_NS`` and send those not seen, so one stored late is still sent, once."""
        alerts, scope, now = self.service.alerts, {"entity_type": self.entity_type}, time.time_ns()
        seen: list[dict[str, Any]] = []
        if self.alerts_sent is None:
            seen = alerts(self.project, limit=ALERTS_SEEN_MAX, **scope)
            rows = [*alerts(self.project, state="firing", **scope), *seen[:ALERTS_FIRST]]
            self.alerts_sent = {}
        else:
            rows = alerts(self.project, since_ns=self._alerts_since(now), **scope)
        fresh = []
        for row in rows:
            key = (row["rule_id"], row["run"], row["time_ns"], row["state"])
            if key not in self.alerts_sent:
                self.alerts_sent[key] = row["time_ns"]
                fresh.append(row)
        for row in seen:
            self.alerts_sent[(row["rule_id"], row["run"], row["time_ns"], row["state"])] = row["time_ns"]
        if fresh or seen:  # forget what no later call can read again
            since = self._alerts_since(now)
            self.alerts_sent = {key: ns for key, ns in self.alerts_sent.items() if ns > since}
        return sorted(fresh, key=lambda row: row["time_ns"], reverse=True)

    def _alerts_since(self, now: int) -> int:
        newest = max((self.alerts_sent or {}).values(), default=now)
        return min(newest, now) - ALERTS_LOOKBACK_NS

    def changed_runs(self) -> tuple[list[dict[str, Any]], list[str]]:
        """The entities whose row differs from the last one sent, and the ids among them that are new to the view:
        first seen after the first read, or started at or after ``since_ms``. With ``changes_only``, the first read
        sends only the new ones."""
        changed, new, first = [], [], not self.read_once
        self.read_once = True
        for row in self.service.entities(self.project, entity_type=self.entity_type, runs=self.runs or None):
            blob = orjson.dumps(to_wire(row))
            seen = self.states.get(row["id"])
            if seen != blob:
                self.states[row["id"]] = blob
                started = row.get("started_at")
                if seen is None and (not first or (self.since is not None and started and started >= self.since)):
                    new.append(row["id"])
                    changed.append(row)
                elif not (first and self.changes_only):
                    changed.append(row)
        return changed, new

    def curve_events(self) -> list[tuple[str, Any]]:
        """``curves`` for runs new to the view, overwritten or past their plan; ``buckets`` for runs that logged
        since the last poll."""
        if self.metric is None or not self.runs:
            return []
        heads = self.service.series_heads(self.project, self.metric, self.runs, entity_type=self.entity_type)
        replan = [run for run, head in heads.items() if self._outgrown(run, head)]
        events: list[tuple[str, Any]] = []
        if replan:
            plans = self.service.curve_plans(self.project, replan, self.metric, points=self.points,
                                             entity_type=self.entity_type)
            curves = self.service.curve_buckets(self.project, self.metric, plans, entity_type=self.entity_type)
            for run, plan in plans.items():
                self.plans[run], self.heads[run] = plan, heads[run]
                self._remember(run, curves.get(run, []))
            events.append(("curves", {"curves": {run: {"plan": {"origin": plan["origin"], "width": plan["width"]},
                                                       "buckets": curves.get(run, [])}
                                                 for run, plan in plans.items()}}))
        grown = {run: self.tails[run] for run, head in heads.items()
                 if run in self.plans and run not in replan and head != self.heads.get(run)}
        if grown:
            tails = self.service.curve_buckets(self.project, self.metric, {run: self.plans[run] for run in grown},
                                               since=grown, entity_type=self.entity_type)
            for run in grown:
                self.heads[run] = heads[run]
                self._remember(run, tails.get(run, []))
            events.append(("buckets", {"buckets": {run: tails.get(run, []) for run in grown}}))
        return events

    def _outgrown(self, run: str, head: tuple[int, int]) -> bool:
        """A run to (re)send whole: new to the view, overwritten (a new generation) or past twice its buckets."""
        plan, sent = self.plans.get(run), self.heads.get(run)
        if plan is None or sent is None:
            return True
        return head[0] != sent[0] or head[1] < sent[1] or head[1] - plan["origin"] >= 2 * self.points * plan["width"]

    def _remember(self, run: str, buckets: list[dict[str, Any]]) -> None:
        if buckets:
            self.tails[run] = buckets[-1]["step_from"]
        else:
            self.tails.setdefault(run, self.plans[run]["origin"])


async def stream(view: LiveView, *, interval_s: float = INTERVAL_S) -> AsyncIterator[bytes]:
    """The event stream of ``view`` until the client goes away (then the response's task is cancelled)."""
    import anyio

    last_runs = last_ping = last_alerts = 0.0
    while True:
        now = time.monotonic()
        try:
            if view.send_states and now - last_runs >= RUNS_INTERVAL_S:
                last_runs = now
                changed, new = await run_in_threadpool(view.changed_runs)
                if changed:
                    yield sse("runs", {"runs": changed, "new": new})
            for event, data in await run_in_threadpool(view.curve_events):
                yield sse(event, data)
        except Exception as exc:  # a failed poll (store busy, a run without the metric yet) is retried
            log.debug("live view of %s: %s", view.project, exc)
            yield sse("problem", {"message": str(exc)})
        if now - last_alerts >= ALERTS_INTERVAL_S:  # apart: a failing curve poll must not hold alerts back
            last_alerts = now
            try:
                fired = await run_in_threadpool(view.new_alerts)
            except Exception as exc:
                log.debug("live view of %s, alerts: %s", view.project, exc)
                yield sse("problem", {"message": f"alerts: {exc}"})
            else:
                if fired:
                    yield sse("alerts", {"alerts": fired})
        if now - last_ping >= PING_S:
            last_ping = now
            yield b": ping\n\n"
        await anyio.sleep(interval_s)


def events_router(service: Any) -> APIRouter:
    """``GET /events`` (mounted under ``/api/v1``) over ``service``."""
    router = APIRouter()

    # An endless text/event-stream is no JSON operation: left out of the OpenAPI schema (and its fuzzing).
    @router.get("/events", include_in_schema=False)
    async def events(*, project: str = Query(description="the project to watch"),
                     metric: str | None = Query(None, description="the metric whose curves to stream"),
                     runs: str = Query("", description="comma-separated run ids whose curves to stream"),
                     points: int = Query(1000, ge=1, le=100_000, description="buckets per curve"),
                     entity_type: str = Query("run", pattern="^(run|model)$"),
                     changes: bool = Query(False, description="no first `runs` event of every run: changes only"),
                     since: int | None = Query(None, description="ms since the epoch: runs started since are new"),
                     states: bool = Query(True, description="false: no `runs` events (alerts and curves only)"),
                     ) -> StreamingResponse:
        view = LiveView(service, project=project, metric=metric, runs=[r for r in runs.split(",") if r],
                        points=points, entity_type=entity_type, changes_only=changes, since_ms=since, states=states)
        return StreamingResponse(stream(view), media_type="text/event-stream",
                                 headers={"cache-control": "no-store", "x-accel-buffering": "no"})

    return router
