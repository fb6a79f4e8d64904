"""Alert evaluation benchmark: points/s through :meth:`AlertEvaluator.observe` (pure Python, no Kafka).

    .venv/bin/python bench/alerts.py [--points 1000000] [--batch 10000] [--repeat 3]

One run, one rank, one metric (``loss``), fed in batches of ``--batch`` points, with 1, 3 and 5 rules:
nan; + inf, above; + below, diverge. Two kinds of data: ``clean`` (a decaying loss, no alert: the common case) and
``noisy`` (a NaN every 1,000 points and a spike above the thresholds every 5,000: rules fire and resolve). The best
of ``--repeat`` runs is printed, as millions of points per second.
"""

from __future__ import annotations

import argparse
import math
import random
import time

from trackstream.schemas.alerts import AlertRule, make_rule
from trackstream.schemas.envelope import EntityRef
from trackstream.streams.alert_state import RunAlerts
from trackstream.streams.alerts import AlertEvaluator

RULES = [make_rule("bench", "loss", "nan"), make_rule("bench", "loss", "inf"),
         make_rule("bench", "loss", "above", value=50.0), make_rule("bench", "loss", "below", value=1e-9),
         make_rule("bench", "loss", "diverge", value=3.0, after_steps=100)]


def losses(points: int, *, noisy: bool) -> list[float]:
    rng = random.Random(15)
    values = [2.0 * math.exp(-step / points) + rng.random() * 0.1 for step in range(points)]
    if noisy:
        for step in range(500, points, 1_000):
            values[step] = math.nan
        for step in range(2_500, points, 5_000):
            values[step] = 100.0
    return values


def measure(rules: list[AlertRule], values: list[float], batch: int) -> tuple[float, int]:
    evaluator, state, alerts = AlertEvaluator(rules), RunAlerts(), []
    entity = EntityRef("bench", "run", "r")
    columns = []
    for start in range(0, len(values), batch):
        steps = list(range(start, min(start + batch, len(values))))
        columns.append((steps, [step * 1_000_000 for step in steps], values[start:start + batch]))
    began = time.perf_counter()
    for steps, times_ns, chunk in columns:
        evaluator.observe(state, entity, 0, "loss", steps, times_ns, chunk, into=alerts)
    return time.perf_counter() - began, len(alerts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"{args.points:,} points in batches of {args.batch:,}; best of {args.repeat}")
    print(f"{'data':<6} {'rules':>5} {'Mpoints/s':>10} {'alerts':>7}")
    for noisy in (False, True):
        values = losses(args.points, noisy=noisy)
        for count in (1, 3, 5):
            runs = [measure(RULES[:count], values, args.batch) for _ in range(args.repeat)]
            seconds = min(elapsed for elapsed, _ in runs)
            print(f"{'noisy' if noisy else 'clean':<6} {count:>5} {args.points / seconds / 1e6:>10.1f} {runs[0][1]:>7}")


if __name__ == "__main__":
    main()
