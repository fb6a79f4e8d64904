"""Producer benchmark (``make bench-producer``): caller cost, sustained throughput and memory.

For trackstream (into Kafka, acknowledged; into the spool; into the spool with ``durability="spool"``, where each
log call is also journaled to an mmap'd file so that a SIGKILL loses nothing) and, on the same workload in the same run,
MLflow (local sqlite store, synchronous and asynchronous logging), W&B (offline) and TensorBoard event files
(tensorboardX) when those packages are installed. Every system runs in its own subprocess so that peak
RSS is its own. Prints a markdown table and writes JSON.

    python bench/producer.py [--seconds 5] [--json .cache/bench/producer.json]

Kafka: ``TRACKSTREAM_KAFKA_BOOTSTRAP`` when set, else the project's own broker is started and stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
KEYS = [f"train/metric_{i}" for i in range(8)]
VARIANTS = 1024
COST_CALLS = 50_000
# Other systems queue what they cannot deliver (MLflow async, W&B): bound their sustained workload so that
# draining the queue stays in minutes; their points/s still include the drain.
SLOW_MAX_CALLS = 50_000


def workload() -> list[dict[str, float]]:
    rng = random.Random(7)
    return [{key: rng.random() for key in KEYS} for _ in range(VARIANTS)]


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so a phase's peak is its own; False if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class Target:
    """One system under test: how to log 8 metrics, one metric, and how to wait until delivered."""

    points_note = ""

    def log_many(self, metrics: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def log_one(self, key: str, value: float, step: int) -> None:
        raise NotImplementedError

    def drain(self) -> None:
        """Block until everything logged is delivered (acknowledged, written or flushed)."""

    def close(self) -> None:
        self.drain()


class Trackstream(Target):
    def __init__(self, work: Path, kafka: str | None, durability: str = "memory") -> None:
        import trackstream as ts

        options: dict[str, Any] = {"spool_dir": str(work / "spool"), "durability": durability}
        if kafka:
            options.update(kafka_bootstrap=kafka, topic_prefix=os.environ["BENCH_TOPIC_PREFIX"])
        else:
            options["kafka_bootstrap"] = ""
        self.run = ts.start_run("bench", "producer", **options)
        self.log_metrics = self.run.log_metrics
        self.log_metric = self.run.log_metric

    def log_many(self, metrics: dict[str, float], step: int) -> None:
        self.log_metrics(metrics)

    def log_one(self, key: str, value: float, step: int) -> None:
        self.log_metric(key, value)

    def drain(self) -> None:
        self.run.flush(acknowledged=True)

    def close(self) -> None:
        self.run.finish()
        self.run.flush(acknowledged=True)


class MLflow(Target):
    def __init__(self, work: Path, synchronous: bool) -> None:
        import mlflow

        self.mlflow = mlflow
        self.synchronous = synchronous
        mlflow.set_tracking_uri(f"sqlite:///{work}/mlflow.db")
        mlflow.set_experiment("bench")
        mlflow.start_run()

    def log_many(self, metrics: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics(metrics, step=step, synchronous=self.synchronous)

    def log_one(self, key: str, value: float, step: int) -> None:
        self.mlflow.log_metric(key, value, step=step, synchronous=self.synchronous)

    def drain(self) -> None:
        if not self.synchronous:
            self.mlflow.flush_async_logging()

    def close(self) -> None:
        self.drain()
        self.mlflow.end_run()


class Wandb(Target):
    def __init__(self, work: Path) -> None:
        os.environ["WANDB_MODE"] = "offline"
        os.environ["WANDB_SILENT"] = "true"
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project="bench", dir=str(work))

    def log_many(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def log_one(self, key: str, value: float, step: int) -> None:
        self.run.log({key: value}, step=step)

    def close(self) -> None:
        self.run.finish()


class TensorBoard(Target):
    def __init__(self, work: Path) -> None:
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(str(work / "tb"))

    def log_many(self, metrics: dict[str, float], step: int) -> None:
        add = self.writer.add_scalar
        for key, value in metrics.items():
            add(key, value, step)

    def log_one(self, key: str, value: float, step: int) -> None:
        self.writer.add_scalar(key, value, step)

    def drain(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


CASES: dict[str, tuple[str, Callable[[Path, str | None], Target]]] = {
    "trackstream → Kafka": ("trackstream", Trackstream),
    "trackstream → spool": ("trackstream", lambda w, k: Trackstream(w, None)),
    "trackstream → spool, durability=spool": ("trackstream", lambda w, k: Trackstream(w, None, "spool")),
    "MLflow sync (sqlite)": ("mlflow", lambda w, k: MLflow(w, True)),
    "MLflow async (sqlite)": ("mlflow", lambda w, k: MLflow(w, False)),
    "W&B offline": ("wandb", lambda w, k: Wandb(w)),
    "TensorBoard (tensorboardX)": ("tensorboardX", lambda w, k: TensorBoard(w)),
}


def caller_cost(target: Target, data: list[dict[str, float]], budget_s: float) -> dict[str, float]:
    """Median per call from blocks of calls (little timer overhead) and p99 from single timed calls."""
    clock = time.perf_counter_ns
    block, blocks, singles = 64, [], []
    step, deadline = 0, time.monotonic() + budget_s
    while step < COST_CALLS and time.monotonic() < deadline:
        start = clock()
        for i in range(step, step + block):
            target.log_many(data[i & (VARIANTS - 1)], i)
        blocks.append((clock() - start) / block)
        step += block
        for i in range(step, step + block):
            before = clock()
            target.log_many(data[i & (VARIANTS - 1)], i)
            singles.append(clock() - before)
        step += block
    singles.sort()
    one = []
    for i in range(min(step, COST_CALLS // 4)):
        before = clock()
        target.log_one(KEYS[0], 0.5, step + i)
        one.append(clock() - before)
    target.drain()
    median_call = statistics.median(blocks) / 1000
    return {
        "calls": step,
        "log_metrics_median_us_per_call": median_call,
        "log_metrics_median_us_per_point": median_call / len(KEYS),
        "log_metrics_p99_us_per_call": singles[int(len(singles) * 0.99)] / 1000,
        "log_metrics_max_us_per_call": singles[-1] / 1000,
        "log_metric_median_us": statistics.median(one) / 1000,
        "log_metric_p99_us": sorted(one)[int(len(one) * 0.99)] / 1000,
    }


def sustained(target: Target, data: list[dict[str, float]], seconds: float, max_calls: int) -> dict[str, float]:
    """Log at full rate for ``seconds`` (or ``max_calls``), then wait until delivered: points/s end to end."""
    process_peak_mb = rss_kib("VmHWM") / 1024
    peak_reset = reset_peak_rss()
    rss_before = rss_kib("VmRSS")
    start = time.perf_counter()
    step = 0
    deadline = start + seconds
    while True:
        for i in range(step, step + 1024):
            target.log_many(data[i & (VARIANTS - 1)], i)
        step += 1024
        if time.perf_counter() >= deadline or step >= max_calls:
            break
    logged = time.perf_counter()
    target.close()
    done = time.perf_counter()
    points = step * len(KEYS)
    return {
        "points": points,
        "caller_points_per_s": points / (logged - start),
        "delivered_points_per_s": points / (done - start),
        "drain_s": done - logged,
        "rss_before_mb": rss_before / 1024,
        "rss_growth_mb": (rss_kib("VmHWM") - rss_before) / 1024,
        "peak_rss_reset": peak_reset,
        "peak_rss_mb": max(process_peak_mb, rss_kib("VmHWM") / 1024),
    }


def run_case(name: str, seconds: float, kafka: str | None) -> dict[str, Any]:
    data = workload()
    with tempfile.TemporaryDirectory(prefix="bench-producer-") as tmp:
        work = Path(tmp)
        target = CASES[name][1](work, kafka)
        cost = caller_cost(target, data, budget_s=seconds * 2)
        target.close()
        target = CASES[name][1](work / "sustained", kafka)
        unbounded = name.startswith("trackstream")
        rate = sustained(target, data, seconds, max_calls=1 << 62 if unbounded else SLOW_MAX_CALLS)
    return {"system": name, **cost, **rate}


def available(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


async def _create_topic(bootstrap: str, prefix: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(f"{prefix}.metrics", 3, 1)])
    finally:
        await admin.close()


def start_broker() -> tuple[str, Callable[[], None]]:
    configured = os.environ.get("TRACKSTREAM_KAFKA_BOOTSTRAP")
    if configured:
        return configured, lambda: None
    sys.path.insert(0, str(REPO / "tests" / "services"))
    from kafka_broker import KafkaBroker

    broker = KafkaBroker(Path(tempfile.mkdtemp(prefix="bench-broker-")))
    return broker.start(), broker.stop


def table(results: list[dict[str, Any]]) -> str:
    rows = ["| system | log_metrics(8) median µs/call | µs/point | p99 µs/call | log_metric median µs "
            "| delivered points/s | RSS growth MB |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if "skipped" in r:
            rows.append(f"| {r['system']} | skipped: {r['skipped']} | | | | | |")
            continue
        rows.append(
            f"| {r['system']} | {r['log_metrics_median_us_per_call']:.2f} | "
            f"{r['log_metrics_median_us_per_point']:.3f} | {r['log_metrics_p99_us_per_call']:.1f} | "
            f"{r['log_metric_median_us']:.2f} | {r['delivered_points_per_s']:,.0f} | {r['rss_growth_mb']:.0f} |")
    return "\n".join(rows)


def verdict(results: list[dict[str, Any]]) -> dict[str, Any]:
    ours = next((r for r in results if r["system"] == "trackstream → Kafka" and "skipped" not in r), None)
    others = [r for r in results if not r["system"].startswith("trackstream") and "skipped" not in r]
    if ours is None:
        return {}
    out: dict[str, Any] = {
        "kafka_points_per_s>=1e6": ours["delivered_points_per_s"] >= 1e6,
        "median_us_per_point<=0.5": ours["log_metrics_median_us_per_point"] <= 0.5,
        "p99_us_per_call<=50": ours["log_metrics_p99_us_per_call"] <= 50,
        "rss_growth_mb<=100": ours["rss_growth_mb"] <= 100,
    }
    if others:
        best_rate = max(r["delivered_points_per_s"] for r in others)
        best_cost = min(r["log_metrics_median_us_per_point"] for r in others)
        out["throughput_x_best_other"] = ours["delivered_points_per_s"] / best_rate
        out["caller_cost_fraction_of_best_other"] = ours["log_metrics_median_us_per_point"] / best_cost
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="full-rate logging time per system")
    parser.add_argument("--json", default=str(REPO / ".cache" / "bench" / "producer.json"))
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--only", action="append", help="run only these systems (substring match)")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.seconds, os.environ.get("BENCH_KAFKA") or None)))
        return
    bootstrap, stop = start_broker()
    results: list[dict[str, Any]] = []
    try:
        prefix = f"bench_{uuid.uuid4().hex[:8]}"
        asyncio.run(_create_topic(bootstrap, prefix))
        env = {**os.environ, "BENCH_KAFKA": bootstrap, "BENCH_TOPIC_PREFIX": prefix, "PYTHONPATH": str(REPO)}
        for name, (module, _) in CASES.items():
            if args.only and not any(o.lower() in name.lower() for o in args.only):
                continue
            if not available(module):
                print(f"note: {name} skipped, {module} is not installed", file=sys.stderr)
                results.append({"system": name, "skipped": f"{module} not installed"})
                continue
            print(f"running {name} ...", file=sys.stderr)
            done = subprocess.run([sys.executable, __file__, "--case", name, "--seconds", str(args.seconds)],
                                  env=env, capture_output=True, text=True, timeout=900, check=False)
            if done.returncode != 0:
                results.append({"system": name, "skipped": f"failed: {done.stderr.strip().splitlines()[-1:]}"})
                continue
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    finally:
        stop()
    checks = verdict(results)
    print(table(results))
    if checks:
        print("\n" + "\n".join(f"- {k}: {v if isinstance(v, bool) else f'{v:.2f}'}" for k, v in checks.items()))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"cpus": os.cpu_count(), "seconds": args.seconds,
                                           "results": results, "checks": checks}, indent=2))
    print(f"\nJSON: {args.json}")


if __name__ == "__main__":
    main()
