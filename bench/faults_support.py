"""Plumbing of bench/faults.py: processes, Kafka topics, dead-letter tallies, spool files and hand-written envelopes.

Everything here talks to the pipeline only through what a user has: the ``trackstream`` command line, the SDK (in
bench/faults_producer.py), Kafka topics, ``dlq.jsonl``, the spool's documented frame format and the query API.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import logging
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
log = logging.getLogger("faults")

PROCESSED = ("points", "steps", "entities")
DLQ_SUFFIXES = ("metrics.dlq", "sink.dlq")
PARTITIONS = 3
FETCH_BYTES = 64 * 1024 * 1024
COUNTER_BYTES = 16  # bench/faults_producer.py: attempted and accepted points, two little-endian u64


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any TRACKSTREAM_* setting, plus ``extra``: a child sees only what the
    scenario gives it (its own spool and store, never ~/.trackstream)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKSTREAM_")}
    env.update(extra, PYTHONUNBUFFERED="1")
    return env


# --- processes -----------------------------------------------------------------------------------------------


@dataclass
class Proc:
    """A child process in its own process group, its output appended to ``log_path``.

    ``supervised``: when it exits on its own, :meth:`check` records the exit and starts it again (at most every
    ``backoff_s``), as a service manager would; ``exits`` lists those exit codes.
    """

    name: str
    args: list[str]
    log_path: Path
    env: dict[str, str]
    supervised: bool = False
    backoff_s: float = 2.0
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0
    kills: int = 0
    exits: list[int] = field(default_factory=list)
    _restart_at: float | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as out:
            out.write(f"\n=== {time.strftime('%H:%M:%S')} start #{self.starts + 1}: {' '.join(self.args)}\n".encode())
            self.popen = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=REPO,
                                          start_new_session=True)
        self.starts += 1
        self._restart_at = None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL the process group and reap it (a crash: no clean-up runs)."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.kills += 1
        self.popen.wait()

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``; the process is reaped either way."""
        self.supervised = False
        if self.popen is None:
            return
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s of SIGTERM; killing it", self.name, timeout_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()

    def last_error(self) -> str:
        """The last line of its log that looks like an error (for the notes), else ""."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        for line in reversed(lines):
            text = line.strip()
            if text and not text.startswith("===") and ("Error" in text or "ERROR" in text or "Exception" in text):
                return text[:300]
        return ""

    def check(self) -> None:
        """Supervision: note an exit of its own and restart it after the backoff."""
        if not self.supervised or self.popen is None or self.popen.poll() is None:
            return
        now = time.monotonic()
        if self._restart_at is None:
            self.exits.append(self.popen.returncode)
            log.warning("%s exited by itself with code %s; restarting it in %.0f s", self.name,
                        self.popen.returncode, self.backoff_s)
            self._restart_at = now + self.backoff_s
        elif now >= self._restart_at:
            self.start()


def run_command(args: list[str], log_path: Path, env: dict[str, str], timeout_s: float) -> int:
    """Run ``args`` to its end (bounded); returns the exit code, -9 when it had to be killed."""
    proc = Proc(args[0], args, log_path, env)
    proc.start()
    assert proc.popen is not None
    try:
        return proc.popen.wait(timeout_s)
    except subprocess.TimeoutExpired:
        log.warning("%s did not finish within %.0f s; killing it", " ".join(args[:4]), timeout_s)
        proc.kill()
        return -9


# --- the store -----------------------------------------------------------------------------------------------

STORED_SQL = "SELECT count() FROM points FINAL WHERE project = {p:String} AND rank != 4294967295"  # not cross-rank


def stored_now(data_dir: Path, project: str) -> int | None:
    """Points of ``project`` through the store owner's query API; None when no process serves the store.

    Never opens the store in this process (chDB binds one store per process: the benchmark reads many).
    """
    from trackstream.api.client import owner_client

    client = owner_client(data_dir, timeout_s=10)
    if client is None:
        return None
    try:
        return int(client.sql(STORED_SQL, {"p": project})[0][0])
    except Exception as exc:
        log.debug("count through %r failed: %r", client, exc)
        return None


def wait_owner(data_dir: Path, procs: Iterable[Proc], timeout_s: float) -> None:
    """Until a process serves the store's query API (bounded; fails early when every process has exited)."""
    from trackstream.api.owner import read_owner

    deadline = time.monotonic() + timeout_s
    procs = list(procs)
    while read_owner(data_dir) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing served the store {data_dir} within {timeout_s:.0f} s")
        if procs and not any(p.alive() for p in procs):
            errors = "; ".join(f"{p.name}: {p.last_error()}" for p in procs if p.last_error())
            raise RuntimeError(f"{', '.join(p.name for p in procs)} exited before serving the store"
                               + (f" ({errors})" if errors else ""))
        time.sleep(0.1)


def final_counts(data_dir: Path, project: str, run: str | None, log_path: Path) -> dict[str, int]:
    """``stored``, ``rows``, ``unique`` (and ``run``) of a store, read in a process of its own."""
    args = [PY, str(REPO / "bench" / "faults_count.py"), str(data_dir), project]
    if run:
        args += ["--run", run]
    with open(log_path, "ab") as err:
        result = subprocess.run(args, stdout=subprocess.PIPE, stderr=err, env=clean_env(), cwd=REPO, timeout=180,
                                check=False)
    if result.returncode != 0:
        raise RuntimeError(f"the store could not be read (exit {result.returncode}; see {log_path})")
    counts: dict[str, int] = orjson.loads(result.stdout.splitlines()[-1])
    return counts


# --- Kafka ---------------------------------------------------------------------------------------------------


def state_topics(prefix: str) -> tuple[str, str]:
    """The stream worker's entity-state topic and faust's leader topic for the default app id of ``prefix``."""
    app_id = f"trackstream-streams-{prefix}"
    return f"{app_id}-entity-state", f"{app_id}-__assignor-__leader"


def create_topics(bootstrap: str, prefix: str, *, replication: int) -> None:
    """Every topic of a topic family, created up front with ``replication`` (the workers create missing ones with
    replication factor 1, which a cluster losing a broker would not survive)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    state, leader = state_topics(prefix)
    names = [f"{prefix}.{suffix}" for suffix in ("metrics", *DLQ_SUFFIXES, *PROCESSED)]
    topics = [NewTopic(name, PARTITIONS, replication) for name in names]
    topics.append(NewTopic(state, PARTITIONS, replication, topic_configs={"cleanup.policy": "compact"}))
    topics.append(NewTopic(leader, 1, replication))

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
        await asyncio.wait_for(admin.start(), 60)
        try:
            await asyncio.wait_for(admin.create_topics(topics), 60)
        finally:
            await admin.close()

    asyncio.run(create())


def produce(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes, int]], *,
            compression: str | None = None, timeout_s: float = 120.0) -> None:
    """Send ``(key, value, partition)`` messages with acks=all, one at a time, each acknowledged before the next."""
    from aiokafka import AIOKafkaProducer

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", compression_type=compression,
                                    max_request_size=128 * 1024 * 1024, max_batch_size=1024 * 1024,
                                    request_timeout_ms=int(timeout_s * 1000))
        await asyncio.wait_for(producer.start(), 60)
        try:
            for key, value, partition in messages:
                await asyncio.wait_for(producer.send_and_wait(topic, value, key=key, partition=partition), timeout_s)
        finally:
            await producer.stop()

    asyncio.run(send())


def read_topic(bootstrap: str, topic: str, *, timeout_s: float = 60.0) -> list[bytes]:
    """Every message of ``topic`` up to the end offsets seen at start ([] when the topic does not exist)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    async def partitions() -> list[int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
        await asyncio.wait_for(admin.start(), 60)
        try:
            if topic not in await admin.list_topics():  # asking for the topic by name could create it
                return []
            described = await admin.describe_topics([topic])
            return sorted(p["partition"] for p in described[0]["partitions"])
        finally:
            await admin.close()

    async def read() -> list[bytes]:
        tps = [TopicPartition(topic, p) for p in await partitions()]
        if not tps:
            return []
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                    fetch_max_bytes=FETCH_BYTES, max_partition_fetch_bytes=FETCH_BYTES,
                                    request_timeout_ms=30_000)
        await asyncio.wait_for(consumer.start(), 60)
        try:
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            end = await consumer.end_offsets(tps)
            values: list[bytes] = []
            deadline = time.monotonic() + timeout_s
            while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{topic}: read {len(values)} of {sum(end.values())} messages in time")
                batches = await consumer.getmany(timeout_ms=500)
                values.extend(record.value for records in batches.values() for record in records)
            return values
        finally:
            await consumer.stop()

    return asyncio.run(read())


def partition_of(key: bytes, partitions: int = PARTITIONS) -> int:
    """The partition Kafka's default partitioner (and the SDK) gives ``key``."""
    from aiokafka.partitioner import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % partitions


# --- dead letters --------------------------------------------------------------------------------------------


@dataclass
class DlqTally:
    """Dead letters seen: distinct ``records`` and their ``points``; ``replayed`` records seen again (a worker
    restarted and wrote the same record twice: counted once); ``uncounted`` records whose points are unknown."""

    records: int = 0
    points: int = 0
    replayed: int = 0
    uncounted: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        if not self.records:
            return ""
        reasons = ", ".join(f"{reason} x{n}" for reason, n in sorted(self.reasons.items()))
        text = f"DLQ: {reasons}"
        if self.replayed:
            text += f" (+{self.replayed} replayed)"
        if self.uncounted:
            text += f" ({self.uncounted} with unknown points)"
        return text


def envelope_points(raw: bytes) -> int | None:
    """Points in an envelope's bytes (the lengths of its metric groups' values), None when they are no envelope."""
    try:
        wire = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(wire, dict) or not isinstance(wire.get("metrics"), list):
        return None
    return sum(len(group["values"]) for group in wire["metrics"]
               if isinstance(group, dict) and isinstance(group.get("values"), list))


def tally_dlq(values: Iterable[bytes], known: dict[str, int]) -> DlqTally:
    """Count dead letters (the stream worker's, the sink worker's, or ``dlq.jsonl`` lines) and their points.

    Points of a record: a sink dead letter's ``points``; a rejected metric group's ``count``; for a rejected envelope
    the points of its raw bytes, or, when those were cut, of the message with that SHA-256 in ``known`` (what the
    benchmark itself produced).
    """
    tally = DlqTally()
    seen: set[bytes] = set()
    for value in values:
        try:
            wire = orjson.loads(value)
        except orjson.JSONDecodeError:
            tally.records += 1
            tally.uncounted += 1
            continue
        identity = orjson.dumps([wire.get("source"), wire.get("spool"), wire.get("reason"), wire.get("metric"),
                                 wire.get("records")])
        if identity in seen:
            tally.replayed += 1
            continue
        seen.add(identity)
        tally.records += 1
        reason = str(wire.get("reason"))
        tally.reasons[reason] = tally.reasons.get(reason, 0) + 1
        points = _record_points(wire, known)
        if points is None:
            tally.uncounted += 1
        else:
            tally.points += points
    return tally


def _record_points(wire: dict[str, Any], known: dict[str, int]) -> int | None:
    if "rejected" in wire or "records" in wire:  # the sink worker's dead letter
        points = wire.get("points")
        return points if isinstance(points, int) else None
    count = wire.get("count")
    if wire.get("metric") is not None or (isinstance(count, int) and count > 0):
        return count if isinstance(count, int) else None
    try:
        raw = base64.b64decode(wire.get("raw") or "")
    except (binascii.Error, ValueError):
        raw = b""
    if not wire.get("raw_truncated"):
        points = envelope_points(raw)
        if points is not None:
            return points
    digest = wire.get("raw_sha256") or hashlib.sha256(raw).hexdigest()
    if digest in known:
        return known[digest]
    return 0 if str(wire.get("reason", "")).startswith("spool_") else None


def kafka_dlq(bootstrap: str, prefix: str, known: dict[str, int]) -> DlqTally:
    values: list[bytes] = []
    for suffix in DLQ_SUFFIXES:
        values += read_topic(bootstrap, f"{prefix}.{suffix}")
    return tally_dlq(values, known)


def jsonl_dlq(path: Path, known: dict[str, int]) -> DlqTally:
    if not path.exists():
        return DlqTally()
    return tally_dlq((line for line in path.read_bytes().splitlines() if line.strip()), known)


# --- spool files (format 1: docs/wire-format.md) -------------------------------------------------------------

SPOOL_MAGIC = b"TSSPOOL1"
_HEADER = struct.Struct("<II")
_KEY_LEN = struct.Struct("<H")


@dataclass(frozen=True)
class SpoolFrame:
    """One frame of a segment file: byte range [start, end) and the points of its envelope."""

    segment: Path
    start: int
    end: int
    points: int


def spool_frames(spool_dir: Path) -> list[SpoolFrame]:
    """Every complete, CRC-valid frame of every segment under ``spool_dir``, in order."""
    frames = []
    for segment in sorted(spool_dir.glob("*/*.seg")):
        data = segment.read_bytes()
        offset = len(SPOOL_MAGIC)
        while offset + _HEADER.size <= len(data):
            length, crc = _HEADER.unpack_from(data, offset)
            body = data[offset + _HEADER.size: offset + _HEADER.size + length]
            if len(body) < length or zlib.crc32(body) != crc or length < _KEY_LEN.size:
                break
            (key_len,) = _KEY_LEN.unpack_from(body)
            points = envelope_points(body[_KEY_LEN.size + key_len:]) or 0
            end = offset + _HEADER.size + length
            frames.append(SpoolFrame(segment, offset, end, points))
            offset = end
    return frames


def encode_frame(key: bytes, payload: bytes) -> bytes:
    body = _KEY_LEN.pack(len(key)) + key + payload
    return _HEADER.pack(len(body), zlib.crc32(body)) + body


def write_spool(spool_dir: Path, producer_id: str, messages: list[tuple[bytes, bytes]]) -> None:
    """A dead producer's spool directory holding ``(key, payload)`` frames in one segment, written by hand."""
    path = spool_dir / producer_id
    path.mkdir(parents=True)
    (path / "LOCK").touch()
    meta = {"format": 1, "producer_id": producer_id, "pid": 0, "host": "faults-bench", "created_ns": time.time_ns()}
    (path / "producer.json").write_bytes(orjson.dumps(meta))
    (path / f"{0:020d}.seg").write_bytes(SPOOL_MAGIC + b"".join(encode_frame(k, p) for k, p in messages))


# --- hand-written envelopes ----------------------------------------------------------------------------------

T0_NS = 1_767_225_600_000_000_000  # 2026-01-01
_NEST = b'"__faults_nested__"'


def entity_key(project: str, run_id: str) -> bytes:
    return orjson.dumps([project, "run", run_id])


def series(name: str, steps: Iterable[int], *, value: float = 0.5) -> dict[str, Any]:
    steps = list(steps)
    return {"name": name, "kind": "series", "steps": steps, "times_ns": [T0_NS + s * 1_000_000 for s in steps],
            "values": [value + s for s in steps]}


def envelope(project: str, run_id: str, *, metrics: list[dict[str, Any]], producer_id: str | None = None,
             rank: int = 0, world_size: int = 1, params: Any = None, nested: int = 0) -> bytes:
    """v1 envelope bytes with a run_started event; ``nested`` > 0 puts a value nested that deep wherever
    :data:`_NEST` (the string ``"__faults_nested__"``) appears in ``params`` or ``metrics``."""
    wire = {
        "v": 1, "producer_id": producer_id or os.urandom(16).hex(), "seq": 0, "sent_ns": time.time_ns(),
        "entity": {"project": project, "type": "run", "id": run_id}, "rank": rank, "world_size": world_size,
        "host": "faults-bench", "metrics": metrics,
        "events": [{"type": "run_started", "time_ns": T0_NS, "name": run_id, "params": params or {}, "tags": {}}],
        "entity_seq": 0, "entity_offset": 0,
    }
    raw = orjson.dumps(wire)
    if nested:  # orjson writes at most 254 levels: the deep value is spliced in as text
        raw = raw.replace(_NEST, b'{"a":' * nested + b"1" + b"}" * nested)
    return raw


def nested_marker() -> str:
    return _NEST.decode().strip('"')
