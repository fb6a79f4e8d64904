"""The pipeline ``trackstream demo`` sends its sweep through, as processes of their own: the embedded runner
(``trackstream local``), or with Kafka a stream worker and a sink worker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from trackstream.schemas.errors import TrackstreamError
from trackstream.schemas.settings import KafkaSettings, StoreSettings
from trackstream.schemas.topics import Topics


def _runner_main() -> None:
    """The embedded runner process of the demo: ``trackstream local`` with the demo's settings.

    Run as ``python -c "from trackstream.demo_pipeline import _runner_main; _runner_main()" SPOOL DATA POLL_MS``;
    stops on SIGTERM. Its log goes to stderr (the demo sends it to ``local.log``).
    """
    from trackstream.local_serve import run_local

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spool_dir, data_dir, poll_ms = sys.argv[1:4]
    run_local(spool_dir=Path(spool_dir), data_dir=Path(data_dir), poll_interval_ms=int(poll_ms),
              step_timeout_ms=2_000)


@contextlib.contextmanager
def embedded_pipeline(spool_dir: Path, data_dir: Path, logs: Path, *, poll_interval_ms: int = 50,
                      timeout_s: float = 120.0) -> Iterator[None]:
    """``trackstream local`` as a process of its own, as a user runs it: it owns the store and serves queries,
    and the demo's own threads (the latency probe, the progress bar) do not share its interpreter.

    Its output goes to ``logs/local.log``. Raises :class:`TrackstreamError` naming that log when it exits, or does
    not serve the store within ``timeout_s``.
    """
    from trackstream.api.owner import read_owner

    command = [sys.executable, "-c", "from trackstream.demo_pipeline import _runner_main; _runner_main()",
               str(spool_dir), str(data_dir), str(poll_interval_ms)]
    with open(logs / "local.log", "ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while read_owner(data_dir) is None:
            if time.monotonic() > deadline or process.poll() is not None:
                raise TrackstreamError(f"the embedded runner did not come up; see {logs}/local.log")
            time.sleep(0.1)
        yield
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()


@contextlib.contextmanager
def kafka_workers(kafka: KafkaSettings, data_dir: Path, logs: Path, *, store: StoreSettings | None = None,
                  step_timeout_ms: int = 2000, timeout_s: float = 120.0) -> Iterator[list[subprocess.Popen[bytes]]]:
    """A stream worker and a sink worker as subprocesses, both stopped on exit.

    The sink worker writes to ``store`` when it names a ClickHouse server, else to the chDB store ``data_dir``,
    which it owns and serves. The workers get ``kafka`` and the store's credentials through their environment,
    so a password never shows in a process list. Their output goes to ``logs/streams.log`` and ``logs/sink.log``.
    Raises :class:`TrackstreamError` naming the logs when a worker exits, or the workers are not ready (the
    embedded store served, or on a server the processed topics created) within ``timeout_s``.
    """
    command = [sys.executable, "-m", "trackstream.cli"]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TRACKSTREAM_KAFKA_")}, **kafka.to_environment()}
    server = store.url if store is not None else None
    sink_store = ["--data-dir", str(data_dir)]
    if store is not None and server:
        env.update({"TRACKSTREAM_CLICKHOUSE_USER": store.user or "", "TRACKSTREAM_CLICKHOUSE_PASSWORD":
                    store.password.reveal() if store.password else ""})
        sink_store = ["--clickhouse-url", server]
    workers = [
        (["streams", "worker", "--data-dir", str(data_dir / "streams"), "--step-timeout-ms", str(step_timeout_ms)],
         "streams.log"),
        (["sink", "worker", *sink_store], "sink.log"),
    ]
    processes = []
    for args, log_name in workers:
        with open(logs / log_name, "ab") as out:
            processes.append(subprocess.Popen([*command, *args], stdout=out, stderr=subprocess.STDOUT, env=env))
    try:
        from trackstream.api.owner import read_owner

        deadline = time.monotonic() + timeout_s
        while not (_topics_exist(kafka) if server else read_owner(data_dir) is not None):
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                raise TrackstreamError(f"the workers did not come up; see {logs}/streams.log and {logs}/sink.log")
            time.sleep(0.1)
        yield processes
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()


def _topics_exist(kafka: KafkaSettings) -> bool:
    """Whether the stream worker created the processed topics the sink worker consumes."""
    from aiokafka.admin import AIOKafkaAdminClient

    async def check() -> bool:
        admin = AIOKafkaAdminClient(**kafka.client_options())
        try:
            await admin.start()
            return Topics(kafka.topic_prefix).points in set(await admin.list_topics())
        except Exception:
            return False
        finally:
            await admin.close()

    return asyncio.run(check())
