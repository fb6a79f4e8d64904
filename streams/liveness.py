"""A run's status from its ranks, and crashed ranks from silent heartbeats (docs/metrics.md, "Run status").

Every producer that wrote to a run has an entry in ``EntityState.producers`` (producer id, rank, world size,
host) to which this module adds ``status`` and ``last_seen_ns`` (the producer's clock: its latest envelope's
``sent_ns``). A rank's status is the one of its newest producer (a restarted rank is a new producer), and the
run's status follows from its ranks, whatever order their events arrive in:

- ``running`` while any rank runs;
- else ``failed`` if any rank failed; ``completed`` if every rank completed; else ``killed``, else ``crashed``.

A rank whose producer sends nothing (SDKs send a heartbeat every ``heartbeat_ms``, 10 s by default) for
``timeout`` becomes ``crashed``: measured both on the producer's clock and on the processor's (the time the
processor last saw it), so neither clock skew nor a processor catching up on a backlog crashes a live rank.
Any later envelope from that producer revives it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from trackstream.schemas.processed import EntityState

DEFAULT_HEARTBEAT_TIMEOUT_MS: Final = 60_000
TERMINAL: Final = ("completed", "failed", "killed", "crashed")


def entry(state: EntityState, producer_id: str) -> dict[str, Any] | None:
    """The producer's entry in ``state.producers``, or None."""
    return next((item for item in state.producers if item.get("producer_id") == producer_id), None)


def _status_of(item: dict[str, Any], state: EntityState) -> str:
    # entries written before liveness existed carry no status: the run's own one stands for them
    return str(item.get("status") or state.status)


def run_status(producers: Iterable[dict[str, Any]], fallback: str) -> str:
    """The run's status from its producers' entries (the newest producer of each rank counts)."""
    newest: dict[int, dict[str, Any]] = {}
    for item in producers:
        rank = int(item.get("rank", 0))
        if rank not in newest or item.get("last_seen_ns", 0) >= newest[rank].get("last_seen_ns", 0):
            newest[rank] = item
    statuses = {str(item.get("status") or fallback) for item in newest.values()}
    if not statuses or "running" in statuses:
        return "running" if statuses else fallback
    if statuses == {"completed"}:
        return "completed"
    return next((status for status in ("failed", "killed", "crashed") if status in statuses), fallback)


def seen(state: EntityState, producer_id: str, sent_ns: int) -> bool:
    """Note an envelope from ``producer_id`` sent at ``sent_ns``; True when the run's status changed (a crashed
    rank came back to life, or the rank's newest producer is another one now)."""
    item = entry(state, producer_id)
    if item is None:
        return False
    item["last_seen_ns"] = max(int(item.get("last_seen_ns", 0)), sent_ns)
    if item.get("status") == "crashed":
        item["status"] = "running"
        item.pop("ended_ns", None)
    item.setdefault("status", "running" if state.status not in TERMINAL else state.status)
    return _settle(state)  # a rank's newest producer may have changed


def started(state: EntityState, producer_id: str) -> bool:
    """``run_started`` from ``producer_id``: that rank runs again; True when the run's status changed."""
    item = entry(state, producer_id)
    if item is not None:
        item["status"] = "running"
        item.pop("ended_ns", None)
    return _settle(state)


def finished(state: EntityState, producer_id: str, status: str, time_ns: int) -> bool:
    """``run_finished`` with ``status`` from ``producer_id``; True when the run's status changed."""
    item = entry(state, producer_id)
    if item is not None:
        item["status"], item["ended_ns"] = status, time_ns
    state.ended_ns = max(state.ended_ns, time_ns)
    return _settle(state)


def expire(state: EntityState, seen_at: dict[str, int], now_ns: int, timeout_ns: int) -> bool:
    """Mark ``crashed`` the running producers silent for ``timeout_ns`` on both clocks; True when any was.

    ``seen_at``: producer id -> when this processor last saw it (its own clock; entities restored from a
    checkpoint start at the restore time, so a restarted worker gives every rank a full timeout).
    """
    crashed = False
    for item in state.producers:
        producer_id = str(item.get("producer_id"))
        if _status_of(item, state) != "running" or producer_id not in seen_at:
            continue
        if now_ns - seen_at[producer_id] > timeout_ns and now_ns - int(item.get("last_seen_ns", 0)) > timeout_ns:
            item["status"], item["ended_ns"] = "crashed", int(item.get("last_seen_ns", 0))
            state.ended_ns = max(state.ended_ns, item["ended_ns"])
            crashed = True
    return _settle(state) or crashed


def _settle(state: EntityState) -> bool:
    before = state.status
    state.status = run_status(state.producers, state.status)
    if state.status == "running":
        state.ended_ns = 0
    else:  # the run ended when its last rank did
        state.ended_ns = max([state.ended_ns, *(int(item.get("ended_ns", 0)) for item in state.producers)])
    return state.status != before
