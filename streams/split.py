"""Outputs cut into messages under the broker's size limit, in the formats the sinks already read.

A processed-topic message holds a list of records of one kind (or one point block); the sinks decode every message on
its own (``trackstream.sinks.batch``, ``trackstream.schemas.processed``), so a list split over several messages of the
same format is read as if it came in one:

- step aggregates and entity states: the list is cut into shorter lists;
- a point block: its metric groups are spread over several blocks with the same entity, rank, producer and seq, and
  a group too large on its own is cut into consecutive slices of its columns (same name, kind and generation). The
  sinks key points by (entity, metric, generation, rank, step), so a point lands once whichever block carries it.

Every piece is encoded at most ``limit`` bytes, except a single record that alone is larger (it cannot be cut
without changing the record format; the worker sends it as it is).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import TypeVar

from trackstream.schemas.envelope import MetricBatch
from trackstream.schemas.limits import RECORD_BYTES_MAX
from trackstream.schemas.processed import PointBlock, encode_point_block

T = TypeVar("T")
_FILL = 0.9  # aim pieces at 90% of the limit, so that the first cut usually suffices


def _pieces(count: int, size: int, limit: int) -> int:
    return max(2, min(count, math.ceil(size / (limit * _FILL))))


def _cut(weights: Sequence[int], pieces: int) -> list[tuple[int, int]]:
    """``pieces`` contiguous, non-empty ``[start, end)`` ranges of about equal total weight."""
    total = sum(weights) or 1
    bounds: list[tuple[int, int]] = []
    start = acc = 0
    for index, weight in enumerate(weights):
        acc += weight
        left = len(weights) - index - 1
        wanted = len(bounds) + 1
        if wanted < pieces and (acc * pieces >= total * wanted or left == pieces - wanted):
            bounds.append((start, index + 1))
            start = index + 1
    bounds.append((start, len(weights)))
    return [b for b in bounds if b[0] < b[1]]


def record_values(records: list[T], encode: Callable[[list[T]], bytes], *,
                  limit: int = RECORD_BYTES_MAX) -> list[bytes]:
    """``encode`` of ``records``, as one message or several (each a shorter list) of at most ``limit`` bytes."""
    blob = encode(records)
    if len(blob) <= limit or len(records) <= 1:
        return [blob]
    values: list[bytes] = []
    for start, end in _cut([1] * len(records), _pieces(len(records), len(blob), limit)):
        values.extend(record_values(records[start:end], encode, limit=limit))
    return values


def _slice(batch: MetricBatch, start: int, end: int) -> MetricBatch:
    return MetricBatch(batch.name, batch.kind, batch.steps[start:end], batch.times_ns[start:end],
                       batch.values[start:end])


def point_block_values(block: PointBlock, *, limit: int = RECORD_BYTES_MAX) -> list[bytes]:
    """The point block as one ``<prefix>.points`` message, or several blocks of at most ``limit`` bytes each."""
    return [blob for _, blob in split_point_block(block, limit=limit)]


def split_point_block(block: PointBlock, *, limit: int = RECORD_BYTES_MAX,
                      blob: bytes | None = None) -> list[tuple[PointBlock, bytes]]:
    """Blocks holding the points of ``block`` in order, with their encodings of at most ``limit`` bytes each.

    ``blob``: the encoding of ``block`` when the caller has it already.
    """
    blob = encode_point_block(block) if blob is None else blob
    if len(blob) <= limit:
        return [(block, blob)]
    groups = block.metrics
    if len(groups) > 1:
        weights = [len(batch) + len(batch.name) // 8 + 4 for batch in groups]
        parts = [dataclasses.replace(block, metrics=groups[start:end], generations=block.generations[start:end])
                 for start, end in _cut(weights, _pieces(len(groups), len(blob), limit))]
    elif groups and len(groups[0]) > 1:
        batch = groups[0]
        parts = [dataclasses.replace(block, metrics=[_slice(batch, start, end)], generations=list(block.generations))
                 for start, end in _cut([1] * len(batch), _pieces(len(batch), len(blob), limit))]
    else:
        return [(block, blob)]  # one point: its size is bounded by validation (names, int64 columns)
    return [piece for part in parts for piece in split_point_block(part, limit=limit)]
