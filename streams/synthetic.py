"""Synthetic training-run envelopes for tests and the benchmark (built directly, without the SDK).

:func:`run_envelopes` imitates ``world_size`` ranks of one run logging ``metrics`` every step and flushing every
``steps_per_envelope`` steps, with seqs per producer as the SDK numbers them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

from trackstream.schemas.envelope import EntityRef, Envelope, Event, MetricBatch


@dataclass(frozen=True, slots=True)
class RunSpec:
    """Shape of a synthetic run."""

    project: str = "bench"
    run_id: str = "run-0"
    world_size: int = 1
    metrics: tuple[str, ...] = ("loss", "accuracy", "lr", "grad_norm")
    steps: int = 1000
    steps_per_envelope: int = 250
    seed: int = 0
    nan_every: int = 0

    @property
    def entity(self) -> EntityRef:
        """The run's entity: ``EntityRef(project, "run", run_id)``."""
        return EntityRef(project=self.project, type="run", id=self.run_id)


def value_at(spec: RunSpec, metric_index: int, rank: int, step: int) -> float:
    """A deterministic, curve-like value (NaN every ``nan_every`` steps on rank 0's first metric when set)."""
    if spec.nan_every and step % spec.nan_every == spec.nan_every - 1 and metric_index == 0 and rank == 0:
        return math.nan
    rng = random.Random(hash((spec.seed, metric_index, rank, step)))
    return 1.0 / (1.0 + step * (metric_index + 1)) + rng.random() * 0.01


def run_envelopes(spec: RunSpec, *, start_ns: int = 1_000_000_000, finish: bool = True,
                  params: dict[str, object] | None = None) -> Iterator[Envelope]:
    """Envelopes of all ranks, rank-interleaved per flush (as they would arrive on one partition)."""
    producers = [f"{spec.run_id}-rank{rank}" for rank in range(spec.world_size)]
    seqs = [0] * spec.world_size
    for first in range(0, spec.steps, spec.steps_per_envelope):
        steps = list(range(first, min(first + spec.steps_per_envelope, spec.steps)))
        for rank in range(spec.world_size):
            events = []
            if first == 0 and rank == 0:
                events.append(Event("run_started", start_ns, {"name": spec.run_id, "params": params or {},
                                                              "tags": {"kind": "synthetic"}}))
            metrics = [
                MetricBatch(name=name, kind="series", steps=steps,
                            times_ns=[start_ns + s * 1_000_000 + rank for s in steps],
                            values=[value_at(spec, index, rank, s) for s in steps])
                for index, name in enumerate(spec.metrics)
            ]
            yield _envelope(spec, producers[rank], seqs[rank], rank, metrics, events=events, sent_ns=start_ns + first)
            seqs[rank] += 1
    if finish:  # every rank finishes, as each process of a distributed job does
        end = start_ns + spec.steps * 1_000_000
        for rank in range(spec.world_size):
            yield _envelope(spec, producers[rank], seqs[rank], rank, [],
                            events=[Event("run_finished", end, {"status": "completed"})], sent_ns=end)


def _envelope(spec: RunSpec, producer: str, seq: int, rank: int, metrics: list[MetricBatch], *,
              events: list[Event], sent_ns: int) -> Envelope:
    return Envelope(producer_id=producer, seq=seq, sent_ns=sent_ns, entity=spec.entity, rank=rank,
                    world_size=spec.world_size, host=f"host{rank}", metrics=metrics, events=events)
