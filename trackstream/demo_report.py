"""The report of ``trackstream demo``: its figures (throughput, emit-to-queryable latency percentiles per phase),
and the tables and loss-curve plot it prints of the sweep's results."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trackstream import _query

# the demo's logger: its log lines name the demo, whichever of its modules writes them
log = logging.getLogger("trackstream.demo")


@dataclass
class PacedReport:
    """The paced phase: ``target_points_per_s`` asked for, ``points`` logged in ``seconds``, latency samples (ms)
    of the probes emitted meanwhile, and ``drain_seconds`` from the end of logging until every point was
    queryable."""

    sweep: str = ""
    target_points_per_s: float = 0.0
    points: int = 0
    seconds: float = 0.0
    drain_seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready figures: ``target_points_per_s``, ``points_per_s`` achieved, latency p50/p99 in ms."""
        return {
            "target_points_per_s": round(self.target_points_per_s),
            "points": self.points,
            "seconds": round(self.seconds, 3),
            "points_per_s": round(self.points / self.seconds) if self.seconds > 0 else None,
            "drain_seconds": round(self.drain_seconds, 3),
            **_latency_figures(self.latencies_ms),
        }


@dataclass
class DemoReport:
    """The figures the demo prints (and writes as JSON with ``--json``)."""

    points: int = 0
    processes: int = 0
    log_seconds: float = 0.0
    ingest_seconds: float = 0.0
    first_seen_seconds: float = 0.0
    first_logged_seconds: float | None = None
    latencies_ms: list[float] = field(default_factory=list)
    paced: PacedReport | None = None

    def ingest_points_per_s(self) -> float | None:
        """The maximum ingest rate: points / (s until all were queryable - s until the first was logged), the rate
        the machine sustains with the training processes logging flat out; None before both are known."""
        if self.first_logged_seconds is not None and self.ingest_seconds > self.first_logged_seconds:
            return self.points / (self.ingest_seconds - self.first_logged_seconds)
        return None

    def drain_points_per_s(self) -> float | None:
        """Points / (s until all were queryable - s until the first was): the pipeline working off what the
        processes logged, mostly after they stopped (an upper bound no sustained load reaches)."""
        if self.ingest_seconds > self.first_seen_seconds:
            return self.points / (self.ingest_seconds - self.first_seen_seconds)
        return None

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready figures: times in s (3 decimals), ``ingest_points_per_s``, latency p50/p99 in ms
        of the saturated phase, and ``paced`` (see :meth:`PacedReport.as_dict`) when that phase ran.

        ``ingest_points_per_s`` is :meth:`ingest_points_per_s` (what the paced phase takes half of),
        ``drain_points_per_s`` :meth:`drain_points_per_s`; percentiles are nearest-rank. Figures that cannot be
        computed (no latency samples, no ingest interval) are None.
        """
        rate, drain = self.ingest_points_per_s(), self.drain_points_per_s()
        figures = {
            "points": self.points,
            "processes": self.processes,
            "log_seconds": round(self.log_seconds, 3),
            "end_to_end_seconds": round(self.ingest_seconds, 3),
            "ingest_points_per_s": round(rate) if rate is not None else None,
            "drain_points_per_s": round(drain) if drain is not None else None,
            **_latency_figures(self.latencies_ms),
        }
        if self.paced is not None:
            figures["paced"] = self.paced.as_dict()
        return figures


def _latency_figures(samples: list[float]) -> dict[str, Any]:
    latencies = sorted(samples)
    return {
        "latency_p50_ms": round(_percentile(latencies, 50), 1) if latencies else None,
        "latency_p99_ms": round(_percentile(latencies, 99), 1) if latencies else None,
        "latency_samples": len(latencies),
    }


def _percentile(ordered: list[float], q: float) -> float:
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def print_results(args: argparse.Namespace, sweep: str, configs: list[dict[str, Any]]) -> dict[str, Any]:
    """Print the sweep's min loss per run and grouped by learning rate, plot its loss curves to ``args.plot``;
    returns the best run and both tables."""
    from trackstream import render

    runs = [f"{sweep}-c{index}" for index in range(len(configs))]
    by_run = _query.compare(args.project, "loss", agg="min", runs=runs)
    render.print_table(by_run, title="min loss per run (mean over ranks per step)")
    grouped = _query.compare(args.project, "loss", agg="min", by=["lr"], runs=runs)
    render.print_table(grouped, title="min loss grouped by learning rate (across batch sizes)")
    curves = _query.curves(args.project, runs, "loss", points=500)
    names = {row["id"]: row.get("name") or row["id"] for row in by_run}
    render.plot_curves({names.get(run, run): buckets for run, buckets in curves.items()}, metric="loss",
                       path=args.plot, title=f"loss, sweep {sweep}: mean over {args.ranks} ranks, min/max band")
    best = min(by_run, key=lambda row: row["value"])
    return {"best_run": best["id"], "best_min_loss": best["value"], "by_run": by_run, "grouped": grouped}


def print_figures(figures: dict[str, Any], results: dict[str, Any], plot: Path) -> None:
    """Print the figures, the best run, the registered model and the plot's path, then the latency of each
    phase (also logged)."""
    from trackstream import render

    rows = [{"figure": key, "value": value} for key, value in figures.items() if key != "paced"]
    rows.append({"figure": "best run (min loss)", "value": f"{results['best_run']} ({results['best_min_loss']:.4f})"})
    rows.append({"figure": "registered model", "value": results["model"]["model"]})
    rows.append({"figure": "loss curves", "value": str(plot.resolve())})
    render.print_table(rows, title="demo figures")
    phases = [("saturated", figures.get("ingest_points_per_s"), figures)]
    if "paced" in figures:
        paced = figures["paced"]
        phases.append((f"paced ({paced['target_points_per_s']} points/s asked)", paced["points_per_s"], paced))
    render.print_table([{"phase": name, "points/s": rate, "p50 ms": found["latency_p50_ms"],
                         "p99 ms": found["latency_p99_ms"], "probes": found["latency_samples"]}
                        for name, rate, found in phases], title="emit-to-queryable latency")
    for name, rate, found in phases:
        if found.get("latency_samples"):
            log.info("emit-to-queryable latency, %s at %s points/s: p50 %.1f ms, p99 %.1f ms over %d probes", name,
                     rate, found["latency_p50_ms"], found["latency_p99_ms"], found["latency_samples"])
