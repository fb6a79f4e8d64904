"""Coverage-guided fuzzing (atheris, libFuzzer) of what a worker does with one untrusted Kafka message.

Each input goes through the stream processor and every message it would produce is encoded; an exception
anywhere, or a dead letter with reason ``internal_error`` (a bug caught by the processor's last-resort
handler), is a finding. The sink's decoders then read back every processed message the processor produced
(rejecting none of it), and a mutated copy of it, which they may reject (``Rejected``, a JSON error) but not
fail on otherwise.

Mutations: libFuzzer's byte mutations, plus a structure-aware one that parses an input as JSON, replaces or
deepens one value at a random path with an adversarial value (int64 edges, 2**64, huge ranks, deep nesting,
long strings, wrong types), and writes it back. Seeds are valid envelopes built with the SDK's encoder.

    python tests/fuzz/fuzz_envelopes.py -runs=100000 -seed=1 -max_len=65536 CORPUS_DIR   # tests/unit/test_fuzz.py
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import sys
from pathlib import Path
from typing import Any

import atheris

with atheris.instrument_imports(include=["trackstream"]):
    import orjson

    from trackstream.schemas import EntityRef, Envelope, Event, MetricBatch, encode
    from trackstream.schemas.topics import Topics
    from trackstream.sinks.batch import PointColumns
    from trackstream.sinks.checks import Rejected, decode_records
    from trackstream.streams.processor import Processor
    from trackstream.streams.records import SourcePosition, output_messages

TOPICS = Topics("fuzz")
KINDS = {TOPICS.points: "points", TOPICS.steps: "steps", TOPICS.entities: "entities"}
PROCESSOR = Processor(step_timeout_ms=1)
ADVERSARIAL: list[Any] = [
    0, -1, 1, 2**31, 2**32, 2**32 + 1, 2**62, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 2**64 - 1,
    0.5, -0.0, 1e308, None, True, False, "", "x" * 300, "\u0000", "名前", [], {}, [[[[[[]]]]]], {"a": {"b": {}}},
    "run_started", "run_finished", "heartbeat", "overwrite", "series", "single", "model", "run",
]
_counter = 0


def _seed(rng: random.Random) -> bytes:
    world_size = rng.choice([1, 2, 4])
    metrics = [MetricBatch(f"m{i}", rng.choice(["series", "single"]) if i else "series",
                           list(range(3)), [1, 2, 3], [0.5, float("nan"), float("inf")])
               for i in range(rng.randint(0, 3))]
    metrics = [m if m.kind == "series" else MetricBatch(m.name, "single", [1], [1], [2.0]) for m in metrics]
    events = rng.choice([[], [Event("run_started", 1, {"name": "n", "params": {"lr": 0.1}, "tags": {"t": "v"}})],
                         [Event("run_finished", 2, {"status": "completed"}), Event("heartbeat", 3, {})],
                         [Event("overwrite", 1, {"metric": "m0"}), Event("params", 1, {"params": {"a": [1]}})]])
    envelope = Envelope(producer_id=f"p{rng.randint(0, 3)}", seq=rng.randint(0, 5), sent_ns=10, rank=world_size - 1,
                        world_size=world_size, entity=EntityRef("proj", rng.choice(["run", "model"]), "e"),
                        metrics=metrics, events=events, entity_seq=rng.randint(0, 3), entity_offset=0)
    return encode(envelope)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, child in node.items():
            found.extend(_paths(child, (*prefix, key)))
    elif isinstance(node, list):
        for index, child in enumerate(node[:8]):
            found.extend(_paths(child, (*prefix, index)))
    return found


def _mutate_json(data: bytes, rng: random.Random) -> bytes | None:
    try:
        tree = json.loads(data)
    except (ValueError, RecursionError):
        return None
    path = rng.choice(_paths(tree))
    value: Any = rng.choice(ADVERSARIAL)
    if rng.random() < 0.1:
        for _ in range(rng.choice([33, 300, 900])):
            value = [value]
    if not path:
        return json.dumps(value).encode()
    parent = tree
    for part in path[:-1]:
        parent = parent[part]
    if rng.random() < 0.15 and isinstance(parent, dict):
        parent[rng.choice(["extra", "v", "nonfinite", "entity_seq", "rank"])] = value
    elif rng.random() < 0.1 and isinstance(parent, list):
        parent.extend([parent[path[-1]]] * rng.choice([2, 50, 1100]))
    else:
        parent[path[-1]] = value
    try:
        return json.dumps(tree, allow_nan=False).encode()
    except (ValueError, RecursionError):
        return None


def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    if rng.random() < 0.6:
        mutated = _mutate_json(data, rng)
        if mutated is not None and len(mutated) <= max_size:
            return mutated
    if rng.random() < 0.05:
        return _seed(rng)[:max_size]
    return atheris.Mutate(data, max_size)


def test_one_input(data: bytes) -> None:
    global _counter
    _counter += 1
    source = SourcePosition("fuzz.metrics", 0, _counter)
    output = PROCESSOR.process(data, source=source, key=b"k", now_ns=_counter)
    if _counter % 64 == 0:
        tick = PROCESSOR.tick(now_ns=_counter * 10**9)
        output.step_aggregates.extend(tick.step_aggregates)
    bugs = [record for record in output.dlq if record.reason == "internal_error"]
    if bugs:
        raise AssertionError(f"internal_error dead letter: {bugs[0].detail}")
    messages = output_messages(output, TOPICS)
    for message in messages:
        if len(message.value) > 16 * 1024 * 1024:
            raise AssertionError(f"a {len(message.value)}-byte message for {message.topic}")
        kind = KINDS.get(message.topic)
        if kind is not None:
            rejected = _sink_decode(kind, message.value)
            if rejected:
                raise AssertionError(f"the sink rejects what the processor wrote to {message.topic}: {rejected}")
    for message in messages[:2]:  # and a mutated processed message: the sink may reject it, never crash on it
        kind = KINDS.get(message.topic)
        mutated = _mutate_json(message.value, random.Random(_counter)) if kind else None
        if kind is not None and mutated is not None:
            with contextlib.suppress(Rejected, orjson.JSONDecodeError):
                _sink_decode(kind, mutated)


def _sink_decode(kind: str, raw: bytes) -> list[tuple[int, str, str]]:
    """Decode one processed message as the sink worker does; the records it rejects."""
    if kind == "points":
        PointColumns().add_raw(raw)
        return []
    return decode_records(kind, raw).rejected


def main() -> None:
    logging.disable(logging.CRITICAL)  # a dead letter per bad input is logged; millions of lines help nobody here
    rng = random.Random(0)
    corpus = [Path(arg) for arg in sys.argv[1:] if not arg.startswith("-")]
    for directory in corpus:  # an empty corpus directory gets valid envelopes to start from
        if directory.is_file():
            continue  # a crash input to replay
        directory.mkdir(parents=True, exist_ok=True)
        if not any(directory.iterdir()):
            for index in range(32):
                (directory / f"seed-{index}").write_bytes(_seed(rng))
    atheris.Setup(sys.argv, test_one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
