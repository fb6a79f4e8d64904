"""The knobs of ``trackstream demo``, kept apart so that ``trackstream --help`` needs no heavy import."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_demo_options(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` the description and options of ``trackstream demo`` (sizes, paths, Kafka, ClickHouse, seed)."""
    parser.description = (
        "Simulate a hyperparameter sweep: every (config, rank) is a separate process logging through the public "
        "SDK; the pipeline ingests it (embedded: spool -> processing -> chDB; or Kafka and/or a ClickHouse "
        "server when configured), then the demo prints the comparison grouped by hyperparameters, writes a PNG "
        "of the loss curves and reports throughput and emit-to-queryable latency: saturated (the sweep logging as fast "
        "as it can), then paced (a second sweep of as many processes logging at half the saturated ingest rate)."
    )
    parser.add_argument("--project", default="demo", help="project name (default: demo)")
    parser.add_argument("--configs", type=int, default=6, help="hyperparameter configurations (default: 6)")
    parser.add_argument("--ranks", type=int, default=4, help="ranks (processes) per configuration (default: 4)")
    parser.add_argument("--steps", type=int, default=5000, help="training steps per rank (default: 5000)")
    parser.add_argument("--metrics", type=int, default=4, help="series metrics per step, at least 1 (default: 4)")
    parser.add_argument("--parallel", type=int, default=0,
                        help="processes logging at once (default: all ranks of all configurations)")
    parser.add_argument("--plot", type=Path, default=Path("demo-loss.png"), help="PNG of the loss curves")
    parser.add_argument("--data-dir", type=Path, help="chDB store (default: a fresh directory under .cache/demo)")
    parser.add_argument("--spool-dir", type=Path, help="spool (default: a fresh directory under .cache/demo)")
    parser.add_argument("--bootstrap",
                        help="use this Kafka instead of the spool (default: $TRACKSTREAM_KAFKA_BOOTSTRAP)")
    parser.add_argument("--clickhouse-url", help="use this ClickHouse server (default: $TRACKSTREAM_CLICKHOUSE_URL)")
    parser.add_argument("--paced-seconds", type=float, default=20.0,
                        help="how long the paced phase logs, after the saturated one; 0 skips it (default: 20)")
    parser.add_argument("--paced-rate", type=float, default=None,
                        help="points/s of the paced phase, across all its processes (default: half the ingest rate "
                             "measured in the saturated phase)")
    parser.add_argument("--seed", type=int, default=7, help="random seed of the simulated curves")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--ui", action="store_true",
                        help="print the live page's URL as the sweep starts (watch the curves grow) and keep it up "
                             "after the sweep until Ctrl-C")
