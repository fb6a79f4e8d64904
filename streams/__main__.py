"""``python -m trackstream.streams worker ...``: a streams worker, as ``trackstream streams worker`` runs it."""

from __future__ import annotations

import argparse

from trackstream.schemas.envelope import MAX_ENVELOPE_BYTES
from trackstream.streams.liveness import DEFAULT_HEARTBEAT_TIMEOUT_MS
from trackstream.streams.processor import DEFAULT_STEP_TIMEOUT_MS


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m trackstream.streams")
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("worker", help="consume <prefix>.metrics, produce the processed topics")
    worker.add_argument("--bootstrap", help="Kafka bootstrap servers (else TRACKSTREAM_KAFKA_BOOTSTRAP)")
    worker.add_argument("--topic-prefix", help="topic prefix (else TRACKSTREAM_TOPIC_PREFIX, 'trackstream')")
    worker.add_argument("--partitions", type=int, help="partitions of <prefix>.metrics (default: discovered)")
    worker.add_argument("--app-id", help="consumer group / faust app id")
    worker.add_argument("--data-dir", help="faust working directory")
    worker.add_argument("--step-timeout-ms", type=int, default=DEFAULT_STEP_TIMEOUT_MS)
    worker.add_argument("--heartbeat-timeout-ms", type=int, default=DEFAULT_HEARTBEAT_TIMEOUT_MS,
                        help="a run rank silent this long becomes crashed")
    worker.add_argument("--tick-interval-ms", type=int, default=1_000)
    worker.add_argument("--batch-max-events", type=int, default=256)
    worker.add_argument("--batch-within-ms", type=int, default=20)
    worker.add_argument("--max-envelope-bytes", type=int, default=MAX_ENVELOPE_BYTES)
    worker.add_argument("--loglevel", default="info")
    args = parser.parse_args(argv)
    from trackstream.streams.app import run_worker

    run_worker(bootstrap=args.bootstrap, topic_prefix=args.topic_prefix, partitions=args.partitions,
               app_id=args.app_id, data_dir=args.data_dir, step_timeout_ms=args.step_timeout_ms,
               heartbeat_timeout_ms=args.heartbeat_timeout_ms,
               tick_interval_ms=args.tick_interval_ms, batch_max_events=args.batch_max_events,
               batch_within_ms=args.batch_within_ms, max_envelope_bytes=args.max_envelope_bytes,
               loglevel=args.loglevel)


if __name__ == "__main__":
    main()
