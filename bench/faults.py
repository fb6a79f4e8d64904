"""Fault suite (``make bench-faults``): one table, fault x points sent / stored / DLQ / lost / duplicated.

Each scenario runs the real pipeline in processes of its own, with a fresh topic prefix and a fresh store, injects
one fault and counts what became of every point:

- sent: points the SDK accepted (log calls that returned, counted by the training process itself), or the points
  of the envelopes the benchmark wrote by hand and the broker acknowledged; for spool damage, the points of the
  frames the damage left intact;
- stored: ``SELECT count() FROM points FINAL`` of the scenario's project, through trackstream's query API;
- DLQ: points of the dead letters on ``<prefix>.metrics.dlq`` and ``<prefix>.sink.dlq`` (``<data_dir>/dlq.jsonl``
  in embedded mode), each record once (a record a restarted worker wrote again is noted as replayed);
- lost = sent - stored - DLQ; duplicated = rows - distinct (entity, metric, generation, rank, step) of the raw
  points table (no FINAL).

Kafka: single-broker scenarios use ``TRACKSTREAM_KAFKA_BOOTSTRAP`` (or ``--bootstrap``), else the project's own
broker started for the run (tests/services/kafka_broker.py); the broker-restart scenario always starts a broker of
its own (it kills it), the cluster scenario a three-broker KRaft cluster. Workers that exit by themselves are
restarted, as a service manager would, and the restarts are noted. Logs and stores stay in
``.cache/bench/faults/<time>/<scenario>/``.

    python bench/faults.py [--only NAME[,NAME]] [--points 20000] [--seconds 10] [--list]

It is a benchmark that reports: a scenario that fails prints its row with the error, and the table goes on.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from faults_support import (  # noqa: E402
    COUNTER_BYTES,
    PY,
    DlqTally,
    Proc,
    clean_env,
    create_topics,
    entity_key,
    envelope,
    final_counts,
    jsonl_dlq,
    kafka_dlq,
    nested_marker,
    partition_of,
    produce,
    run_command,
    series,
    spool_frames,
    stored_now,
    wait_owner,
    write_spool,
)
from services.kafka_broker import KafkaBroker, KafkaCluster  # noqa: E402

log = logging.getLogger("faults")

PROJECT = "faults"
GOOD_POINTS = 100
SEGMENT_BYTES = 64 * 1024


@dataclass
class Row:
    """One line of the table."""

    fault: str
    sent: int | None = None
    stored: int | None = None
    dlq: int | None = None
    duplicated: int | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def lost(self) -> int | None:
        if self.sent is None or self.stored is None or self.dlq is None:
            return None
        return self.sent - self.stored - self.dlq

    def as_dict(self) -> dict[str, Any]:
        return {"fault": self.fault, "sent": self.sent, "stored": self.stored, "dlq": self.dlq, "lost": self.lost,
                "duplicated": self.duplicated, "seconds": round(self.seconds, 1), "notes": self.notes,
                "error": self.error}


class Context:
    """What the scenarios share: options, the run directory and the single broker (started on first use)."""

    def __init__(self, args: argparse.Namespace, run_dir: Path) -> None:
        self.args = args
        self.run_dir = run_dir
        self.configured = args.bootstrap
        self.broker: KafkaBroker | None = None
        self.timings: dict[str, float] = {}

    def bootstrap(self) -> str:
        if self.configured:
            return str(self.configured)
        if self.broker is None:
            self.broker = KafkaBroker(self.run_dir / "broker")
            started = time.monotonic()
            log.info("starting the project's Kafka broker for the single-broker scenarios")
            self.broker.start()
            self.timings["single broker start"] = time.monotonic() - started
        return self.broker.bootstrap

    def close(self) -> None:
        if self.broker is not None:
            self.broker.stop()
            self.broker = None


class Producer:
    """bench/faults_producer.py in a process: the SDK logging ``points`` over ``seconds``."""

    def __init__(self, env: Env, *, points: int, seconds: float, durability: str = "memory", kafka: bool = True,
                 mode: str = "series", segment_bytes: int | None = None) -> None:
        self.env = env
        self.points = points
        self.run_id = f"{env.slug}-{uuid.uuid4().hex[:6]}"
        self.counter = env.dir / "producer.counter"
        spec = {
            "project": env.project, "run_id": self.run_id, "points": points, "metrics": 10, "seconds": seconds,
            "durability": durability, "kafka_bootstrap": env.bootstrap if kafka else "",
            "topic_prefix": env.prefix, "spool_dir": str(env.spool), "counter": str(self.counter), "mode": mode,
            "spool_segment_bytes": segment_bytes, "flush_timeout_s": 120,
        }
        self.proc = Proc("producer", [PY, str(REPO / "bench" / "faults_producer.py"), orjson.dumps(spec).decode()],
                         env.dir / "producer.log", env.child_env)
        self.proc.start()
        env.procs["producer"] = self.proc

    def counts(self) -> tuple[int, int]:
        """(attempted, accepted) points so far, as the training process wrote them."""
        data = self.counter.read_bytes() if self.counter.exists() else b""
        if len(data) < COUNTER_BYTES:
            return 0, 0
        return int.from_bytes(data[:8], "little"), int.from_bytes(data[8:16], "little")

    def fraction(self) -> float:
        return self.counts()[1] / max(self.points, 1)

    def alive(self) -> bool:
        return self.proc.alive()

    def summary(self) -> dict[str, Any]:
        """The JSON line the producer printed last ({} when it did not get there)."""
        try:
            lines = self.proc.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return {}
        for line in reversed(lines):
            if line.startswith("{"):
                try:
                    summary: dict[str, Any] = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                return summary
        return {}

    def wait(self, timeout_s: float) -> None:
        """Until the producer exits (it finishes the run and waits for Kafka's acknowledgement), bounded."""
        assert self.proc.popen is not None
        try:
            code = self.proc.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("the producer did not exit within %.0f s; killing it", timeout_s)
            self.proc.kill()
            self.env.note(f"producer killed after {timeout_s:.0f} s without exiting")
            return
        if code != 0 and not self.proc.kills:
            error = self.proc.last_error()
            self.env.note(f"producer exited with code {code}" + (f": {error}" if error else ""))


@dataclass
class Trigger:
    """A fault injected once ``ready()`` holds (checked in order: a trigger waits for the previous one)."""

    label: str
    ready: Callable[[], bool]
    fire: Callable[[], object]


class Env:
    """One scenario's world: a directory, a topic prefix, a store, its processes; stops them all on exit."""

    def __init__(self, ctx: Context, name: str, *, bootstrap: str | None = None, replication: int = 1) -> None:
        self.ctx = ctx
        self.replication = replication
        self.name = name
        self.slug = slug = re.sub(r"[^a-z0-9.-]+", "-", name.lower())  # topic names take [a-zA-Z0-9._-] only
        self.dir = ctx.run_dir / slug
        self.store = self.dir / "store"
        self.spool = self.dir / "spool"
        for path in (self.store, self.spool):
            path.mkdir(parents=True, exist_ok=True)
        self.prefix = f"faults-{slug}-{uuid.uuid4().hex[:8]}"
        self.project = PROJECT
        self.bootstrap = bootstrap
        self.child_env = clean_env(TRACKSTREAM_SPOOL_DIR=str(self.spool), TRACKSTREAM_DATA_DIR=str(self.store))
        self.procs: dict[str, Proc] = {}
        self.known: dict[str, int] = {}  # SHA-256 of a message the benchmark produced -> its points
        self.sent: int | None = None
        self.good_run: str | None = None
        self.notes: list[str] = []
        self.row: Row | None = None
        self._in_flight = 0  # points inside the log call a kill interrupted
        self._finished = False

    def __enter__(self) -> Env:
        if self.bootstrap is not None:
            create_topics(self.bootstrap, self.prefix, replication=self.replication)
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is not None and not self._finished and self.row is not None and kind is not KeyboardInterrupt:
            try:
                self.finish(self.row)  # the error stands; the counts still say what became of the points
            except Exception as exc:
                self.row.notes.append(f"counting after the error failed: {exc}")
        for proc in self.procs.values():
            proc.stop()

    def note(self, text: str) -> None:
        log.info("[%s] %s", self.name, text)
        self.notes.append(text)

    # --- processes --------------------------------------------------------------------------------------

    def proc(self, kind: str) -> Proc:
        if kind not in self.procs:
            kafka = ["--bootstrap", str(self.bootstrap), "--topic-prefix", self.prefix]
            args = {
                "streams": ["streams", "worker", *kafka, "--data-dir", str(self.dir / "streams-state"),
                            "--step-timeout-ms", "2000"],
                "sink": ["sink", "worker", *kafka, "--data-dir", str(self.store)],
                "local": ["local", "--spool-dir", str(self.spool), "--data-dir", str(self.store)],
            }[kind]
            self.procs[kind] = Proc(f"{kind} worker" if kind != "local" else "trackstream local",
                                    [PY, "-m", "trackstream.cli", *args], self.dir / f"{kind}.log", self.child_env,
                                    supervised=True)
        return self.procs[kind]

    def start(self, *kinds: str) -> None:
        """Start these processes; returns once the store's owner (sink worker or local) serves queries."""
        for kind in kinds:
            self.proc(kind).start()
        owners = [self.procs[k] for k in kinds if k in ("sink", "local")]
        if owners:
            wait_owner(self.store, owners, timeout_s=120)
        log.info("[%s] %s running", self.name, " and ".join(self.procs[k].name for k in kinds))

    def crash(self, kind: str) -> None:
        """SIGKILL a worker and start it again at once (a crash under a service manager)."""
        proc = self.procs[kind]
        proc.kill()
        proc.start()

    def supervise(self) -> None:
        for proc in self.procs.values():
            proc.check()

    def stored(self) -> int | None:
        return stored_now(self.store, self.project)

    def dlq(self) -> DlqTally:
        if self.bootstrap is None:
            return jsonl_dlq(self.store / "dlq.jsonl", self.known)
        return kafka_dlq(self.bootstrap, self.prefix, self.known)

    # --- the run ----------------------------------------------------------------------------------------

    def producer(self, **options: Any) -> Producer:
        options.setdefault("points", self.ctx.args.points)
        options.setdefault("seconds", self.ctx.args.seconds)
        producer = Producer(self, **options)
        log.info("[%s] producer logging %d points over %.0f s (run %s)", self.name, producer.points,
                 options["seconds"], producer.run_id)
        return producer

    def drive(self, producer: Producer, triggers: list[Trigger]) -> None:
        """Inject the faults in order while the producer logs; returns when it is done and all have fired."""
        deadline = time.monotonic() + self.ctx.args.seconds + 180
        pending = list(triggers)
        while pending or producer.alive():
            self.supervise()
            if pending and pending[0].ready():
                trigger = pending.pop(0)
                logged = producer.counts()[1]
                trigger.fire()
                self.note(f"{trigger.label} at {logged:,} points logged")
                continue
            if time.monotonic() > deadline:
                if pending:
                    self.note(f"never fired: {', '.join(t.label for t in pending)}")
                break
            time.sleep(0.2)
        producer.wait(timeout_s=180)
        attempted, accepted = producer.counts()
        summary = producer.summary()
        self.sent = int(summary.get("accepted", accepted))
        if "step_2_63" in summary:
            self.note(f"SDK, reward at step 2**63: {summary['step_2_63']}")
        if summary.get("flush_error"):
            self.note(f"producer flush: {summary['flush_error']}")
        if attempted > accepted and not summary:
            self.note(f"{attempted - accepted} points were inside a log call at the kill")
        self._in_flight = attempted - self.sent

    def sync(self) -> None:
        """``trackstream sync`` of the scenario's spool when producers left envelopes there."""
        if self.bootstrap is None or not list(self.spool.glob("*/*.seg")):
            return
        args = [PY, "-m", "trackstream.cli", "sync", "--bootstrap", self.bootstrap, "--topic-prefix", self.prefix,
                "--spool-dir", str(self.spool)]
        code = run_command(args, self.dir / "sync.log", self.child_env, timeout_s=180)
        self.note("trackstream sync ran" + (f" (exit {code})" if code else ""))

    def settle(self) -> None:
        """Wait until stored + DLQ reach sent, or nothing moved for --quiet-s, or --settle-s passed."""
        target = self.sent or 0
        args = self.ctx.args
        started = time.monotonic()
        last: tuple[int | None, int] | None = None
        moved = started
        while True:
            self.supervise()
            stored = self.stored()
            try:
                dlq = self.dlq().points
            except Exception as exc:
                log.debug("DLQ count failed: %r", exc)
                dlq = last[1] if last else 0
            now = time.monotonic()
            if (stored, dlq) != last:
                if stored is not None:
                    log.info("[%s] stored %s + DLQ %s of %s sent", self.name, f"{stored:,}", f"{dlq:,}",
                             f"{target:,}")
                last, moved = (stored, dlq), now
            if stored is not None and stored + dlq >= target:
                return
            if now - moved > args.quiet_s:
                self.note(f"no progress for {args.quiet_s:.0f} s: stopped waiting")
                return
            if now - started > args.settle_s:
                self.note(f"not settled after {args.settle_s:.0f} s")
                return
            time.sleep(1.0)

    def finish(self, row: Row) -> None:
        """Stop every process, count from the store and the dead-letter topics, fill ``row``."""
        self._finished = True
        for proc in self.procs.values():
            proc.stop()
        row.sent = self.sent
        counts = final_counts(self.store, self.project, self.good_run, self.dir / "count.log")
        row.stored = counts["stored"]
        row.duplicated = counts["rows"] - counts["unique"]
        tally = self.dlq()
        row.dlq = tally.points
        in_flight = self._in_flight
        if row.sent is not None and in_flight and row.sent < row.stored + row.dlq <= row.sent + in_flight:
            row.sent = row.stored + row.dlq
            self.note("the log call in flight at the kill had been accepted")
        if self.good_run is not None:
            self.note(f"good envelope after the poison: {counts.get('run', 0)}/{GOOD_POINTS} points stored")
        for proc in self.procs.values():
            if proc.exits and proc.name != "producer":
                codes = sorted(set(proc.exits))
                error = proc.last_error()
                self.notes.append(f"{proc.name} exited {len(proc.exits)}x by itself (codes {codes})"
                                  + (f", last error: {error}" if error else ""))
        if tally.describe():
            self.notes.append(tally.describe())
        row.notes = self.notes


# --- scenarios ---------------------------------------------------------------------------------------------

SCENARIOS: dict[str, Callable[[Context, Row], None]] = {}


def scenario(name: str) -> Callable[[Callable[[Context, Row], None]], Callable[[Context, Row], None]]:
    def register(function: Callable[[Context, Row], None]) -> Callable[[Context, Row], None]:
        SCENARIOS[name] = function
        return function
    return register


def _stored_above(env: Env, floor: Callable[[], int] | int = 0) -> Callable[[], bool]:
    def ready() -> bool:
        stored = env.stored()
        bound = floor() if callable(floor) else floor
        return stored is not None and stored > bound
    return ready


def _kafka_run(env: Env, row: Row, triggers: Callable[[Env, Producer], list[Trigger]], **producer: Any) -> None:
    """Workers, a producer, the faults while it logs, sync, settle, count."""
    env.row = row
    env.start("streams", "sink")
    running = env.producer(**producer)
    env.drive(running, triggers(env, running))
    env.sync()
    env.settle()
    env.finish(row)


@scenario("broker-sigkill-restart")
def broker_restart(ctx: Context, row: Row) -> None:
    broker = KafkaBroker(ctx.run_dir / "broker-sigkill-restart" / "broker")
    broker.start()
    try:
        with Env(ctx, "broker-sigkill-restart", bootstrap=broker.bootstrap) as env:
            killed_at: list[float] = []

            def triggers(env: Env, producer: Producer) -> list[Trigger]:
                def kill() -> None:
                    broker.kill()
                    killed_at.append(producer.fraction())

                return [
                    Trigger("broker SIGKILL", lambda: producer.fraction() >= 0.3 and _stored_above(env)(), kill),
                    Trigger("broker restarted",
                            lambda: not producer.alive() or producer.fraction() >= killed_at[0] + 0.3, broker.start),
                ]

            _kafka_run(env, row, triggers)
    finally:
        broker.stop()


@scenario("stream-worker-sigkill")
def stream_worker_kill(ctx: Context, row: Row) -> None:
    with Env(ctx, "stream-worker-sigkill", bootstrap=ctx.bootstrap()) as env:
        _kafka_run(env, row, lambda env, producer: [
            Trigger("stream worker SIGKILL + restart",
                    lambda: producer.fraction() >= 0.4 and _stored_above(env)(), lambda: env.crash("streams")),
        ])


@scenario("sink-worker-sigkill-x3")
def sink_worker_kill(ctx: Context, row: Row) -> None:
    with Env(ctx, "sink-worker-sigkill-x3", bootstrap=ctx.bootstrap()) as env:
        floor = [0]

        def crash() -> None:
            floor[0] = env.stored() or floor[0]
            env.crash("sink")

        # A restarted sink worker waits ~10 s for the group to drop its dead predecessor: the producer logs for
        # four times as long, so that each kill lands while points still arrive.
        _kafka_run(env, row, lambda env, producer: [
            Trigger(f"sink worker SIGKILL #{n} + restart",
                    lambda at=fraction: producer.fraction() >= at and _stored_above(env, lambda: floor[0])(), crash)
            for n, fraction in ((1, 0.2), (2, 0.45), (3, 0.7))
        ], seconds=4 * ctx.args.seconds)


def _producer_kill(ctx: Context, row: Row, durability: str) -> None:
    name = f"producer-sigkill-{durability}"
    with Env(ctx, name, bootstrap=ctx.bootstrap()) as env:
        _kafka_run(env, row, lambda env, producer: [
            Trigger("producer SIGKILL", lambda: producer.fraction() >= 0.5 and _stored_above(env)(),
                    producer.proc.kill),
        ], durability=durability)


@scenario("producer-sigkill-memory")
def producer_kill_memory(ctx: Context, row: Row) -> None:
    _producer_kill(ctx, row, "memory")


@scenario("producer-sigkill-spool")
def producer_kill_spool(ctx: Context, row: Row) -> None:
    _producer_kill(ctx, row, "spool")


# --- embedded: the spool and `trackstream local` ------------------------------------------------------------


def _spool_damage(ctx: Context, row: Row, name: str, damage: Callable[[list[Any]], tuple[str, list[Any]]]) -> None:
    """A spool-only producer logs and exits; the damage hits its segment files; then `trackstream local` ingests."""
    with Env(ctx, name) as env:
        env.row = row
        producer = env.producer(kafka=False, segment_bytes=SEGMENT_BYTES)
        env.drive(producer, [])
        frames = spool_frames(env.spool)
        if not frames:
            raise RuntimeError(f"the producer left no spool frame to damage (see {producer.proc.log_path})")
        segments = len({frame.segment for frame in frames})
        what, destroyed = damage(frames)
        lost_to_damage = sum(frame.points for frame in destroyed)
        env.sent = sum(frame.points for frame in frames) - lost_to_damage
        env.note(f"{len(frames)} frames in {segments} segments; {what}; "
                 f"{lost_to_damage:,} points in destroyed frames are not counted as sent")
        env.start("local")
        env.settle()
        env.finish(row)


@scenario("spool-truncated")
def spool_truncated(ctx: Context, row: Row) -> None:
    def truncate(frames: list[Any]) -> tuple[str, list[Any]]:
        last = frames[-1]
        cut = last.start + (last.end - last.start) // 2
        os.truncate(last.segment, cut)
        return f"last segment cut at byte {cut}, inside its last frame", [last]

    _spool_damage(ctx, row, "spool-truncated", truncate)


@scenario("spool-garbage-appended")
def spool_garbage(ctx: Context, row: Row) -> None:
    def append(frames: list[Any]) -> tuple[str, list[Any]]:
        with open(frames[-1].segment, "ab") as handle:
            handle.write(os.urandom(4096))
        return "4,096 random bytes appended to the last segment", []

    _spool_damage(ctx, row, "spool-garbage-appended", append)


@scenario("spool-mid-segment-damage")
def spool_mid_damage(ctx: Context, row: Row) -> None:
    def zero(frames: list[Any]) -> tuple[str, list[Any]]:
        segments = sorted({frame.segment for frame in frames})
        segment = segments[len(segments) // 2]
        first = next(frame for frame in frames if frame.segment == segment)
        start = first.start + 24
        with open(segment, "r+b") as handle:
            handle.seek(start)
            handle.write(bytes(min(64, first.end - start)))
        after = sum(frame.points for frame in frames if (frame.segment, frame.start) > (segment, first.start))
        return (f"64 bytes zeroed inside the first frame of segment {segments.index(segment) + 1} of "
                f"{len(segments)} ({after:,} points in intact frames after it)"), [first]

    _spool_damage(ctx, row, "spool-mid-segment-damage", zero)


@scenario("local-sigkill-x5")
def local_kill(ctx: Context, row: Row) -> None:
    with Env(ctx, "local-sigkill-x5") as env:
        env.row = row
        env.start("local")
        producer = env.producer(kafka=False)
        floor = [0]

        def crash() -> None:
            floor[0] = env.stored() or floor[0]
            env.crash("local")

        env.drive(producer, [
            Trigger(f"trackstream local SIGKILL #{n} + restart",
                    lambda n=n: producer.fraction() >= 0.15 * n and _stored_above(env, lambda: floor[0])(), crash)
            for n in range(1, 6)
        ])
        env.settle()
        env.finish(row)


def _local_poison(ctx: Context, row: Row, name: str, poison: bytes, points: int) -> None:
    """A dead producer's spool holding a poison frame, then a good one; `trackstream local` ingests it."""
    with Env(ctx, name) as env:
        env.row = row
        poison_run = f"poison-{uuid.uuid4().hex[:6]}"
        env.good_run = f"good-{uuid.uuid4().hex[:6]}"
        good = _good_envelope(env.project, env.good_run)
        raw_poison = poison.replace(b"__POISON_RUN__", poison_run.encode())
        for raw, count in ((raw_poison, points), (good, GOOD_POINTS)):
            env.known[hashlib.sha256(raw).hexdigest()] = count
        write_spool(env.spool, uuid.uuid4().hex, [(entity_key(env.project, poison_run), raw_poison),
                                                  (entity_key(env.project, env.good_run), good)])
        env.sent = points + GOOD_POINTS
        env.start("local")
        env.settle()
        env.finish(row)


@scenario("local-poison-params-nested-300")
def local_poison_params(ctx: Context, row: Row) -> None:
    raw = envelope(PROJECT, "__POISON_RUN__", metrics=[series("loss", range(10))], params={"deep": nested_marker()},
                   nested=300)
    _local_poison(ctx, row, "local-poison-params-nested-300", raw, 10)


@scenario("local-poison-rank-2**32")
def local_poison_rank(ctx: Context, row: Row) -> None:
    raw = envelope(PROJECT, "__POISON_RUN__", metrics=[series("loss", range(10))], rank=2**32, world_size=2**32 + 1)
    _local_poison(ctx, row, "local-poison-rank-2**32", raw, 10)


# --- poison on <prefix>.metrics ----------------------------------------------------------------------------


def _good_envelope(project: str, run_id: str) -> bytes:
    return envelope(project, run_id, metrics=[series(f"m{j}", range(GOOD_POINTS // 10)) for j in range(10)])


def _poison(ctx: Context, row: Row, name: str, build: Callable[[str], tuple[bytes, int]], *,
            compression: str | None = None) -> None:
    """One poison message on <prefix>.metrics, then a good envelope on the same partition; the workers run."""
    with Env(ctx, name, bootstrap=ctx.bootstrap()) as env:
        env.row = row
        env.start("streams", "sink")
        poison_run = f"poison-{uuid.uuid4().hex[:6]}"
        raw, points = build(poison_run)
        partition = partition_of(entity_key(env.project, poison_run))
        env.good_run = next(run for run in (f"good-{uuid.uuid4().hex[:6]}" for _ in range(1000))
                            if partition_of(entity_key(env.project, run)) == partition)
        good = _good_envelope(env.project, env.good_run)
        for message, count in ((raw, points), (good, GOOD_POINTS)):
            env.known[hashlib.sha256(message).hexdigest()] = count
        log.info("[%s] poison: %s bytes, %s points, partition %d", name, f"{len(raw):,}", f"{points:,}", partition)
        produce(str(env.bootstrap), f"{env.prefix}.metrics",
                [(entity_key(env.project, poison_run), raw, partition),
                 (entity_key(env.project, env.good_run), good, partition)], compression=compression)
        env.sent = points + GOOD_POINTS
        env.settle()
        env.finish(row)


def _groups(count: int) -> list[dict[str, Any]]:
    return [{"name": f"g{i}", "kind": "series", "steps": [0], "times_ns": [0], "values": [0.5]} for i in range(count)]


@scenario("poison-params-nested-300")
def poison_params(ctx: Context, row: Row) -> None:
    _poison(ctx, row, "poison-params-nested-300", lambda run: (envelope(
        PROJECT, run, metrics=[series("loss", range(10))], params={"deep": nested_marker()}, nested=300), 10))


@scenario("poison-bad-group-extra-nested-300")
def poison_group(ctx: Context, row: Row) -> None:
    bad = {"name": "bad", "kind": "series", "steps": [0, 1], "times_ns": [0, 1], "values": ["x", 1.0],
           "extra": nested_marker()}
    _poison(ctx, row, "poison-bad-group-extra-nested-300", lambda run: (envelope(
        PROJECT, run, metrics=[series("loss", range(10)), bad], nested=300), 12))


@scenario("poison-7.5MB-incompressible")
def poison_large(ctx: Context, row: Row) -> None:
    _poison(ctx, row, "poison-7.5MB-incompressible", lambda run: (os.urandom(7_500_000), 0))


@scenario("poison-50k-groups-3.8MB")
def poison_50k(ctx: Context, row: Row) -> None:
    _poison(ctx, row, "poison-50k-groups-3.8MB", lambda run: (envelope(PROJECT, run, metrics=_groups(50_000)), 50_000))


@scenario("poison-1M-groups-zstd")
def poison_1m(ctx: Context, row: Row) -> None:
    _poison(ctx, row, "poison-1M-groups-zstd",
            lambda run: (envelope(PROJECT, run, metrics=_groups(1_000_000)), 1_000_000), compression="zstd")


@scenario("poison-rank-2**32")
def poison_rank(ctx: Context, row: Row) -> None:
    _poison(ctx, row, "poison-rank-2**32", lambda run: (envelope(
        PROJECT, run, metrics=[series("loss", range(10))], rank=2**32, world_size=2**32 + 1), 10))


@scenario("poison-step-2**63-sdk")
def poison_step(ctx: Context, row: Row) -> None:
    """Through the SDK: 19 points of a series, the same series at step 2**63 (its fast path), then good points."""
    with Env(ctx, "poison-step-2**63-sdk", bootstrap=ctx.bootstrap()) as env:
        env.row = row
        env.start("streams", "sink")
        env.drive(env.producer(mode="step-2**63", points=120, seconds=0), [])
        env.settle()
        env.finish(row)


# --- the three-broker cluster ------------------------------------------------------------------------------


@scenario("cluster-3-brokers-lose-one")
def cluster_loses_one(ctx: Context, row: Row) -> None:
    """RF 3, min.insync.replicas 2: the leader of the run's partition is SIGKILLed mid-stream and stays down."""
    cluster = KafkaCluster(ctx.run_dir / "cluster-3-brokers-lose-one" / "cluster", size=3)
    started = time.monotonic()
    cluster.start()
    ctx.timings["three-broker cluster start"] = time.monotonic() - started
    log.info("three-broker cluster ready in %.1f s", ctx.timings["three-broker cluster start"])
    try:
        with Env(ctx, "cluster-3-brokers-lose-one", bootstrap=cluster.bootstrap, replication=3) as env:

            def triggers(env: Env, producer: Producer) -> list[Trigger]:
                partition = partition_of(entity_key(env.project, producer.run_id))

                def kill_leader() -> None:
                    victim = cluster.leader(f"{env.prefix}.metrics", partition)
                    cluster.stop_broker(victim)
                    env.note(f"broker {cluster.nodes[victim].node_id} (leader of the run's partition) SIGKILLed")

                return [Trigger("broker SIGKILL", lambda: producer.fraction() >= 0.4 and _stored_above(env)(),
                                kill_leader)]

            _kafka_run(env, row, triggers)
    finally:
        cluster.stop(timeout_s=10)


# --- the table ---------------------------------------------------------------------------------------------


def _number(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def render(rows: list[Row]) -> str:
    header = ("fault", "sent", "stored", "DLQ", "lost", "duplicated", "time s")
    body = [(r.fault, _number(r.sent), _number(r.stored), _number(r.dlq), _number(r.lost), _number(r.duplicated),
             f"{r.seconds:.0f}") for r in rows]
    widths = [max(len(str(line[i])) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(w) if i == 0 else str(cell).rjust(w)
                       for i, (cell, w) in enumerate(zip(line, widths, strict=True)))
             for line in [header, *body]]
    lines.insert(1, "-" * len(lines[0]))
    notes = []
    for r in rows:
        text = "; ".join(r.notes)
        if r.error:
            text = f"ERROR {r.error}" + (f"; {text}" if text else "")
        if text:
            notes.append(f"  {r.fault}: {text}")
    return "\n".join(lines + (["", "notes:", *notes] if notes else []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", default=[], help="scenario name(s), comma-separated; repeatable")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--points", type=int, default=20_000, help="points each SDK producer logs")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long a producer takes to log them")
    parser.add_argument("--quiet-s", type=float, default=20.0, help="settled once nothing moved for this long")
    parser.add_argument("--settle-s", type=float, default=240.0, help="longest wait for a scenario to settle")
    parser.add_argument("--bootstrap", default=os.environ.get("TRACKSTREAM_KAFKA_BOOTSTRAP"),
                        help="Kafka of the single-broker scenarios (default: $TRACKSTREAM_KAFKA_BOOTSTRAP, else the "
                             "project's broker, started for the run)")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(SCENARIOS))
        return 0
    names = [n for value in args.only for n in value.split(",") if n] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; --list shows them")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    for noisy in ("aiokafka", "kafka"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    run_dir = REPO / ".cache" / "bench" / "faults" / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(args, run_dir)
    rows: list[Row] = []
    began = time.monotonic()
    try:
        for name in names:
            row = Row(name)
            rows.append(row)
            log.info("=== %s", name)
            started = time.monotonic()
            try:
                SCENARIOS[name](ctx, row)
            except Exception as exc:
                log.exception("[%s] failed", name)
                row.error = f"{type(exc).__name__}: {exc}"
            row.seconds = time.monotonic() - started
            log.info("=== %s: sent %s, stored %s, DLQ %s, lost %s, duplicated %s (%.0f s)%s", name, _number(row.sent),
                     _number(row.stored), _number(row.dlq), _number(row.lost), _number(row.duplicated), row.seconds,
                     f" ERROR {row.error}" if row.error else "")
    finally:
        ctx.close()
    total = time.monotonic() - began
    (run_dir / "faults.json").write_bytes(orjson.dumps(
        {"rows": [r.as_dict() for r in rows], "timings_s": ctx.timings, "total_s": total}, option=orjson.OPT_INDENT_2))
    print(render(rows))
    print()
    for label, seconds in ctx.timings.items():
        print(f"{label}: {seconds:.1f} s")
    print(f"total: {total:.0f} s; logs and stores in {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
