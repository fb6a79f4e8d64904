"""The live page's benchmark (``make bench-ui``): what a user waits for in a real browser (Playwright driving
Debian's Chromium) against the real servers, each figure printed beside its target.

Scenarios (``--only NAME`` runs one; ``--quick`` shrinks every size for a smoke run):

- ``emit-embedded`` / ``emit-kafka``: **emit-to-visible**. A training process (the SDK, a process of its own)
  logs one point of ``loss`` every ``--emit-interval-s`` and flushes; it takes ``time.time()`` just before
  ``log_metric`` and prints it with the step. The curves page of that run is open; a MutationObserver (installed
  before the page's scripts run) stamps ``performance.timeOrigin + performance.now()`` whenever the run's legend
  value cell gets a new ``data-last-step`` (the newest step drawn, set right after the chart's ``setData``). A
  point is visible at the first stamp of a step >= its own (two points arriving in one poll are drawn together).
  Both clocks are the machine's wall clock. Embedded: ``trackstream local`` (spool -> chDB). Kafka: SDK -> Kafka
  -> ``trackstream streams worker`` -> ``trackstream sink worker`` (chDB, serving the page); the broker is
  ``--bootstrap`` / ``TRACKSTREAM_KAFKA_BOOTSTRAP`` (``make bench-ui`` starts one), topics under a fresh prefix,
  deleted at the end. Also split: emit -> the Server-Sent Event carrying the step reaches the page (pipeline and
  server poll) and -> drawn (the page). Target: p99 <= 1 s.
- ``runs-table``: a store of 10,000 runs (params lr/bs/optimizer/seed, a few ``loss`` points each, statuses
  mixed) written through :class:`~trackstream.sinks.sink.Sink` in a subprocess, served by
  ``trackstream ui --data-dir D`` (it becomes the owner); the table reads a page of 200 rows at a time, searched,
  filtered and sorted by the server (``/api/v1/runs_table``). Timed in the page: navigation to the first rows painted
  (fresh page each time), to the main thread free (the end of the last long task before 2 s without one, as
  Lighthouse's time to interactive), a search typed in the search box (its ``input`` event to the painted row
  count, the page's 200 ms typing debounce included), and sorting by a column (the header's ``click`` to the
  painted first row). Target: each <= 1 s.
- ``curves-10m``: 10 runs x 1,000,000 steps of ``loss`` (10M points) written likewise; the curves page of the
  ten opened fresh; navigation to all ten legend cells at the last step (``data-last-step``), split into the
  page's ``runs`` read, the first ``curves`` event (the server plans and buckets the ten curves: the work of
  ``/api/v1/curves``) and drawing. The first load is cold, the next ones warm. Target: <= 1 s.
- ``live-100``: 100 running runs in one SDK process, each logging one point per second (flushed once a second),
  with the runs table and a curves page of 10 of them open in two tabs, for ``--live-seconds``. The server
  (``trackstream local``) CPU from ``/proc/<pid>/stat`` (utime + stime, every thread, chDB's included) sampled each
  second: mean and max cores. Also the curves tab's emit-to-visible. Target: max < 1 core.

Timings are taken in the page with ``performance.now()``; "painted" means the next frame after the change
(a ``requestAnimationFrame`` then a message, which runs after that frame's paint). Every process started is stopped
and every temporary directory removed at the end. Progress goes to stderr; the report (details, then the summary
table of figures, targets and whether each is met) to stdout, and as JSON to ``--json``.

    python bench/ui.py                       # everything at full size (about 3 minutes on 2 CPUs)
    python bench/ui.py --quick               # small sizes, a smoke run
    python bench/ui.py --only curves-10m     # one scenario
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import queue
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page, ViewportSize


CLI = [sys.executable, "-m", "trackstream.cli"]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
MARK = "trackstream UI: "
SCENARIOS = ("emit-embedded", "emit-kafka", "runs-table", "curves-10m", "live-100")
TARGET_MS = 1000.0
VIEWPORT: ViewportSize = {"width": 1280, "height": 800}
RUNS_PROJECT = "bench-ui-runs"
CURVES_PROJECT = "bench-ui-curves"
EMIT_PROJECT = "bench-ui-emit"
LIVE_PROJECT = "bench-ui-live"
T0_NS = 1_760_000_000 * 10**9  # the stored runs' start: a fixed date, so stores are alike from run to run

FULL: dict[str, Any] = {
    "emit_points": 100, "emit_interval_s": 0.2, "table_runs": 10_000, "table_points": 10, "table_loads": 3,
    "curve_runs": 10, "curve_steps": 1_000_000, "curve_loads": 3, "live_runs": 100, "live_seconds": 60.0,
}
QUICK: dict[str, Any] = {
    "emit_points": 10, "emit_interval_s": 0.2, "table_runs": 10_000, "table_points": 5, "table_loads": 1,
    "curve_runs": 10, "curve_steps": 100_000, "curve_loads": 2, "live_runs": 100, "live_seconds": 15.0,
}
# Searches typed in the runs table (narrow, broad, cleared again) and the columns clicked to sort.
SEARCHES = ("run-0042", "optimizer=sgd", "")
SORTS = (("Name", "name"), ("loss min", "metric:loss:min"), ("lr", None))

# Installed in every page before its own scripts (Playwright's init script; the page's CSP does not apply).
# window.__bench: `rows` (ms after navigation start at which the first runs-table row was painted), `seen`
# ([legend cell index, data-last-step, ms] at each change), `longtasks` ([start, duration]), `sse` (per event
# stream: created, open, and its events [name, ms, bytes, {run: newest step_to} for small `buckets` events]).
INIT_JS = """
(() => {
  if (window.__bench) return;
  const bench = window.__bench = {
    origin: performance.timeOrigin, rows: null, seen: [], last: [], longtasks: [], sse: [],
  };
  const afterPaint = (fn) => requestAnimationFrame(() => {
    const channel = new MessageChannel();
    channel.port1.onmessage = () => fn(performance.now());
    channel.port2.postMessage(0);
  });
  bench.afterPaint = afterPaint;
  const look = () => {
    if (bench.rows === null && document.querySelector(".tabulator-row")) {
      bench.rows = -1;
      afterPaint((t) => { bench.rows = t; });
    }
    const cells = document.getElementsByClassName("legend-value");
    for (let i = 0; i < cells.length; i++) {
      const step = cells[i].dataset.lastStep;
      if (step !== undefined && step !== bench.last[i]) {
        bench.last[i] = step;
        bench.seen.push([i, Number(step), performance.now()]);
      }
    }
  };
  new MutationObserver(look).observe(document, { subtree: true, childList: true, attributes: true,
                                                 attributeFilter: ["data-last-step"] });
  try {
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) bench.longtasks.push([e.startTime, e.duration]);
    }).observe({ type: "longtask", buffered: true });
  } catch (err) { /* no long task timing */ }
  const Native = window.EventSource;
  window.EventSource = class extends Native {
    constructor(url, init) {
      super(url, init);
      const record = { url: String(url), created: performance.now(), open: null, events: [] };
      bench.sse.push(record);
      this.addEventListener("open", () => { record.open = performance.now(); });
      for (const name of ["runs", "curves", "buckets"]) {
        this.addEventListener(name, (event) => {
          if (record.events.length >= 20000) return;
          const item = [name, performance.now(), event.data.length, null];
          if (name === "buckets" && event.data.length < 20000) {
            const heads = {};
            for (const [run, list] of Object.entries(JSON.parse(event.data).buckets)) {
              if (list.length) heads[run] = list[list.length - 1].step_to;
            }
            item[3] = heads;
          }
          record.events.push(item);
        });
      }
    }
  };
})();
"""

# Arms a timing of the search box: its next `input` event (timeStamp) to the painted change of the row count.
ARM_SEARCH_JS = """
() => {
  const count = document.querySelector(".count");
  const before = count.textContent;
  let started = null;
  document.querySelector("input.search").addEventListener("input", (e) => { started = e.timeStamp; },
                                                           { once: true, capture: true });
  window.__action = new Promise((resolve) => {
    const observer = new MutationObserver(() => {
      if (started === null || count.textContent === before) return;
      observer.disconnect();
      const text = count.textContent;
      window.__bench.afterPaint((t) => resolve({ ms: t - started, text }));
    });
    observer.observe(count, { childList: true, characterData: true, subtree: true });
    setTimeout(() => resolve({ ms: null, text: count.textContent }), 30000);
  });
}
"""

# Arms a timing of a header click: the `click` event (timeStamp) to the painted rows after it (the first row shown
# changed, or rows were laid out again).
ARM_SORT_JS = """
() => {
  const first = () => {
    const row = document.querySelector(".tabulator-tableholder .tabulator-row");
    return row ? row.textContent : "";
  };
  const before = first();
  let started = null;
  document.addEventListener("click", (e) => { started = e.timeStamp; }, { once: true, capture: true });
  window.__action = new Promise((resolve) => {
    const rowAdded = (mutations) => mutations.some((m) => [...m.addedNodes].some(
      (node) => node.classList && node.classList.contains("tabulator-row")));
    const observer = new MutationObserver((mutations) => {
      if (started === null || (first() === before && !rowAdded(mutations))) return;
      observer.disconnect();
      const text = first();
      window.__bench.afterPaint((t) => resolve({ ms: t - started, text }));
    });
    observer.observe(document.querySelector(".tabulator-tableholder"),
                     { childList: true, characterData: true, subtree: true });
    setTimeout(() => resolve({ ms: null, text: first() }), 30000);
  });
}
"""

PAGE_STATE_JS = r"""
() => {
  const b = window.__bench;
  const runs = performance.getEntriesByType("resource").filter((e) => /\/api\/v1\/runs(_table)?$/.test(e.name))
    .map((e) => [e.startTime, e.responseStart, e.responseEnd, e.encodedBodySize]);
  return { origin: b.origin, rows: b.rows, seen: b.seen, longtasks: b.longtasks, sse: b.sse, runs,
           visibility: document.visibilityState };
}
"""

# A training process: one run, a point of `loss` at step 0 (the page's starting point), then on "go" one point
# every INTERVAL seconds, each flushed; prints "<step> <time.time() before log_metric> <after flush>".
EMIT_TRAINER = """
import sys, time, trackstream as ts
project, run_id, count, interval = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
run = ts.start_run(project, name=run_id, run_id=run_id, params={"lr": 0.001, "bs": 32, "optimizer": "adamw"})
run.log_metric("loss", 1.0, step=0)
run.flush()
print("ready", flush=True)
sys.stdin.readline()
next_at = time.monotonic()
for step in range(1, count + 1):
    next_at += interval
    time.sleep(max(0.0, next_at - time.monotonic()))
    emitted = time.time()
    run.log_metric("loss", 1.0 / (1 + step), step=step)
    run.flush()
    print(step, emitted, time.time(), flush=True)
run.finish()
print("done", flush=True)
"""

# A training process holding RUNS running runs: on "go", one point of `loss` per run every second, flushed once
# a second; prints "<step> <time.time() before the first log_metric of the round> <after the flush>".
LIVE_TRAINER = """
import sys, time, trackstream as ts
project, runs, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
handles = [ts.start_run(project, name=f"live-{i:03d}", run_id=f"r{i:03d}",
                        params={"lr": 10 ** -(i % 4 + 2), "bs": 32 * (1 + i % 3), "optimizer": ("adamw", "sgd")[i % 2]})
           for i in range(runs)]
for i, run in enumerate(handles):
    run.log_metric("loss", 1.0 + i * 0.001, step=0)
ts.flush()
print("ready", flush=True)
sys.stdin.readline()
start = time.monotonic()
step = 0
while (step + 1) <= seconds:
    step += 1
    time.sleep(max(0.0, start + step - time.monotonic()))
    emitted = time.time()
    for i, run in enumerate(handles):
        run.log_metric("loss", 1.0 / (1 + step) + i * 0.001, step=step)
    ts.flush()
    print(step, emitted, time.time(), flush=True)
for run in handles:
    run.finish()
print("done", flush=True)
"""


class BenchError(Exception):
    """A scenario could not be measured (a process died, a page never showed what it waits for)."""


@dataclass
class Figure:
    """One line of the summary: ``met`` is None for a figure without a target of its own."""

    scenario: str
    name: str
    value: str
    target: str = ""
    met: bool | None = None


def progress(label: str, text: str) -> None:
    print(f"[{label}] {text}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least ``q`` percent of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(len(ordered) * q / 100) - 1)]


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


def within(value: float | None, limit: float = TARGET_MS) -> bool:
    return value is not None and value <= limit


# --- processes ------------------------------------------------------------------------------------------------


def base_env(**extra: str) -> dict[str, str]:
    """This environment without the TRACKSTREAM_* settings that would point a child elsewhere, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKSTREAM_")}
    env.update(extra)
    return env


class Processes:
    """The processes a scenario starts; :meth:`close` stops each (SIGTERM, then SIGKILL after ``timeout_s``)."""

    def __init__(self) -> None:
        self.items: list[subprocess.Popen[Any]] = []
        self.files: list[IO[Any]] = []

    def start(self, command: list[str], *, env: dict[str, str], log: Path, pipes: bool = False,
              ) -> subprocess.Popen[Any]:
        """``command`` with its output to ``log`` (its stdout to a pipe too when ``pipes``, with a stdin pipe)."""
        out = open(log, "ab")  # noqa: SIM115 (closed by close(), after the process)
        self.files.append(out)
        if pipes:
            process: subprocess.Popen[Any] = subprocess.Popen(command, env=env, stdin=subprocess.PIPE,
                                                              stdout=subprocess.PIPE, stderr=out, text=True)
        else:
            process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.items.append(process)
        return process

    def close(self, timeout_s: float = 60.0) -> None:
        for process in self.items:
            if process.poll() is None:
                process.terminate()
        for process in self.items:
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        for out in self.files:
            out.close()
        self.items, self.files = [], []


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_for_url(process: subprocess.Popen[Any], log: Path, *, timeout_s: float = 180.0) -> str:
    """The page's URL (with its token) once ``process`` printed its ``trackstream UI:`` line to ``log``."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = log.read_text(errors="replace") if log.exists() else ""
        if MARK in text:
            return text.split(MARK, 1)[1].split()[0]
        if process.poll() is not None:
            raise BenchError(f"{process.args!r} exited ({process.returncode}) before serving the page:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise BenchError(f"no page URL from {process.args!r} after {timeout_s:.0f} s:\n{tail(log)}")
        time.sleep(0.1)


def start_trainer(procs: Processes, script: str, argv: list[str], *, env: dict[str, str], work: Path,
                  timeout_s: float, what: str) -> Lines:
    """A training process (``python -c script *argv``, its output in ``work/trainer.log``) once it printed
    ``ready``; its stdout lines."""
    trainer = procs.start([sys.executable, "-c", script, *argv], env=env, log=work / "trainer.log", pipes=True)
    lines = Lines(trainer)
    if lines.next(timeout_s, what) != "ready":
        raise BenchError(f"unexpected output from the training process; see {work / 'trainer.log'}")
    return lines


class Lines:
    """The stdout lines of a child process, read by a thread into a queue."""

    def __init__(self, process: subprocess.Popen[Any]) -> None:
        self.process = process
        self.queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.queue.put(line.strip())
        self.queue.put(None)

    def next(self, timeout_s: float, what: str) -> str:
        try:
            line = self.queue.get(timeout=timeout_s)
        except queue.Empty:
            raise BenchError(f"timed out after {timeout_s:.0f} s waiting for {what}") from None
        if line is None:
            raise BenchError(f"the training process exited ({self.process.wait()}) before {what}")
        return line

    def send(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (all its threads), in seconds, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- stores (written in a child process: chDB opens one store per process) -------------------------------------


def build_child(args: argparse.Namespace) -> int:
    """Write the store of ``--build-child`` (runs | curves) into ``--store-dir``, let its merges finish."""
    from trackstream.sinks.chdb_backend import ChdbBackend
    from trackstream.sinks.sink import Sink

    backend = ChdbBackend(args.store_dir)
    sink = Sink(backend)
    started = time.perf_counter()
    if args.build_child == "runs":
        points = build_runs(sink, runs=args.runs, points=args.steps)
    else:
        points = build_curves(sink, runs=args.runs, steps=args.steps)
    progress("build", f"wrote {points:,} points in {time.perf_counter() - started:.1f} s; waiting for merges")
    from queries import settle  # bench/queries.py: the same wait for background merges

    waited = settle(backend, label="build", timeout_s=300.0)
    progress("build", f"store at rest after {waited:.1f} s")
    sink.close()
    print(json.dumps({"points": points, "build_s": time.perf_counter() - started}), flush=True)
    return 0


def build_runs(sink: Any, *, runs: int, points: int) -> int:
    """``runs`` runs of RUNS_PROJECT: params lr/bs/optimizer/seed, ``points`` points of loss, statuses mixed."""
    from trackstream.schemas.envelope import EntityRef, MetricBatch
    from trackstream.schemas.processed import EntityState, PointBlock

    rnd = random.Random(7)
    statuses = ["completed"] * 14 + ["failed", "failed", "crashed", "killed", "running", "running"]
    blocks: list[PointBlock] = []
    states: list[EntityState] = []
    written = 0
    steps = [s * 100 for s in range(points)]
    for index in range(runs):
        ref = EntityRef(RUNS_PROJECT, "run", f"b{index:05d}")
        started = T0_NS + index * 60 * 10**9
        decay = rnd.uniform(200, 2000)
        values = [2.0 * math.exp(-s / decay) + rnd.uniform(0, 0.05) for s in steps]
        if rnd.random() < 0.02:
            values[points // 2:] = [math.nan] * (points - points // 2)
        times = [started + s * 10**9 for s in steps]
        blocks.append(PointBlock(ref, 0, f"p{index}", 0, [MetricBatch("loss", "series", steps, times, values)], [0]))
        status = rnd.choice(statuses)
        params = {"lr": rnd.choice([1e-4, 3e-4, 1e-3, 3e-3, 1e-2]), "bs": rnd.choice([32, 64, 128]),
                  "optimizer": rnd.choice(["adamw", "sgd", "lion"]), "seed": index % 7}
        states.append(EntityState(ref, f"run-{index:05d}-{rnd.choice(['alpha', 'beta', 'gamma'])}", status, params,
                                  {"sweep": f"s{index // 1000}"}, started,
                                  0 if status == "running" else times[-1] + 10**9, [], 0, 1))
        if len(blocks) >= 2000 or index == runs - 1:
            sink.write(blocks, entity_states=states)
            written += sum(b.point_count() for b in blocks)
            blocks, states = [], []
            progress("build", f"{index + 1:,} / {runs:,} runs")
    return written


def build_curves(sink: Any, *, runs: int, steps: int) -> int:
    """``runs`` runs r0.. of CURVES_PROJECT with ``steps`` steps of loss each, written per run in blocks."""
    from trackstream.schemas.envelope import EntityRef, MetricBatch
    from trackstream.schemas.processed import EntityState, PointBlock

    rnd = random.Random(11)
    block_steps = 250_000
    written = 0
    for index in range(runs):
        ref = EntityRef(CURVES_PROJECT, "run", f"r{index}")
        started = T0_NS + index * 3600 * 10**9
        scale = steps / rnd.uniform(3, 8)
        blocks = []
        for seq, first in enumerate(range(0, steps, block_steps)):
            block = range(first, min(first + block_steps, steps))
            values = [math.exp(-s / scale) + 0.05 * index + rnd.gauss(0, 0.02) for s in block]
            times = [started + s * 10**8 for s in block]
            blocks.append(PointBlock(ref, 0, f"c{index}", seq, [MetricBatch("loss", "series", list(block), times,
                                                                           values)], [0]))
        state = EntityState(ref, f"long-{index}", "completed", {"lr": 10 ** -(index % 4 + 2), "bs": 64},
                            {}, started, started + steps * 10**8, [], 0, 1)
        sink.write(blocks, entity_states=[state])
        written += steps
        progress("build", f"run {index + 1} / {runs}: {written:,} points")
    return written


def build_store(kind: str, store: Path, *, runs: int, steps: int) -> dict[str, Any]:
    """Write a store in a child process of this script (its progress goes to stderr); returns its figures."""
    command = [sys.executable, str(Path(__file__).resolve()), "--build-child", kind, "--store-dir", str(store),
               "--runs", str(runs), "--steps", str(steps)]
    done = subprocess.run(command, env=base_env(), stdout=subprocess.PIPE, text=True, timeout=3600, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        raise BenchError(f"building the {kind} store failed (exit {done.returncode}); see its output above")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def serve_store(procs: Processes, data: Path, work: Path) -> tuple[subprocess.Popen[Any], str]:
    """``trackstream ui --data-dir data`` (the owner of a store nobody owns), and its page URL."""
    spool = work / "empty-spool"
    spool.mkdir(exist_ok=True)
    log = work / "ui.log"
    process = procs.start([*CLI, "ui", "--data-dir", str(data)], env=base_env(TRACKSTREAM_SPOOL_DIR=str(spool)),
                          log=log)
    return process, wait_for_url(process, log)


# --- the browser ------------------------------------------------------------------------------------------------


def new_context(browser: Browser, url: str) -> tuple[BrowserContext, str, list[str]]:
    """A fresh browser context that has the token's cookie (``/?token=`` answered by request, no page loaded),
    with INIT_JS in every page; returns it, the page's base URL and the list the pages' script errors go to."""
    context = browser.new_context(viewport=VIEWPORT)
    context.add_init_script(INIT_JS)
    answer = context.request.get(url)
    if not answer.ok:
        context.close()
        raise BenchError(f"opening {url.split('?', maxsplit=1)[0]} with the token answered {answer.status}")
    errors: list[str] = []
    context.on("weberror", lambda error: errors.append(str(error.error)))
    return context, url.split("/?", 1)[0], errors


def wait_for_run(context: BrowserContext, base: str, project: str, run: str, *, timeout_s: float = 120.0) -> None:
    """Until the API (the page's own, through the context's cookie) lists ``run`` of ``project``."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = context.request.post(f"{base}/api/v1/runs", data=json.dumps({"project": project}),
                                      headers={"Content-Type": "application/json"})
        if answer.ok and any(row["id"] == run for row in answer.json()["result"]):
            return
        if time.monotonic() > deadline:
            raise BenchError(f"run {run} of {project} not stored after {timeout_s:.0f} s: {answer.text()[:300]}")
        time.sleep(0.1)


def api_ms(context: BrowserContext, base: str, route: str, body: dict[str, Any], *, repeat: int = 3,
           ) -> tuple[float, int]:
    """The median ms of ``repeat`` POSTs of ``/api/v1/<route>`` from here (the server's work and the transfer, no
    page), and the answer's bytes."""
    times, size = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        answer = context.request.post(f"{base}/api/v1/{route}", data=json.dumps(body),
                                      headers={"Content-Type": "application/json"})
        size = len(answer.body())
        times.append((time.perf_counter() - started) * 1000)
        if not answer.ok:
            raise BenchError(f"/api/v1/{route} answered {answer.status}: {answer.text()[:300]}")
    return percentile(times, 50), size


def open_page(context: BrowserContext, address: str) -> Page:
    page = context.new_page()
    page.goto(address)
    return page


def state(page: Page) -> dict[str, Any]:
    result: dict[str, Any] = page.evaluate(PAGE_STATE_JS)
    return result


def page_problem(page: Page) -> str:
    """What the page shows that may explain a wait that timed out: its notes, and the events it received."""
    found = page.evaluate("""() => ({
      problem: (document.getElementById("problem") || {}).textContent || "",
      banner: (document.getElementById("banner") || {}).textContent || "",
      note: (document.querySelector(".chart-note") || {}).textContent || "",
      streams: (window.__bench.sse || []).map((s) => [s.url, s.open !== null, s.events.map((e) => e[0]).join(",")]),
    })""")
    return json.dumps(found)[:1500]


def first_seen(seen: list[list[float]], index: int, step: int) -> float | None:
    """The first ms (after navigation start) at which legend cell ``index`` showed a step >= ``step``."""
    times = [t for i, s, t in seen if i == index and s >= step]
    return min(times) if times else None


def sse_arrivals(page_state: dict[str, Any], run: str) -> list[tuple[float, int]]:
    """(ms, newest step) of each small ``buckets`` event of ``run`` the page received."""
    out = []
    for stream in page_state["sse"]:
        for name, t, _size, heads in stream["events"]:
            if name == "buckets" and heads and run in heads:
                out.append((t, int(heads[run])))
    return out


def visible_latencies(page_state: dict[str, Any], emitted: dict[int, float], *, index: int, run: str,
                      ) -> tuple[list[float], list[float], list[float], list[int]]:
    """Per emitted step: emit -> drawn, emit -> its event reached the page, event -> drawn (ms); and the steps
    never drawn."""
    origin = page_state["origin"]
    arrivals = sse_arrivals(page_state, run)
    total, pipeline, page_side, missing = [], [], [], []
    for step, at in sorted(emitted.items()):
        drawn = first_seen(page_state["seen"], index, step)
        if drawn is None:
            missing.append(step)
            continue
        total.append(origin + drawn - at * 1000)
        came = [t for t, head in arrivals if head >= step]
        if came:
            pipeline.append(origin + min(came) - at * 1000)
            page_side.append(drawn - min(came))
    return total, pipeline, page_side, missing


def long_task_quiet(page: Page, since_ms: float, *, quiet_ms: float = 2000.0, limit_s: float = 15.0) -> float:
    """The end of the last long task before ``quiet_ms`` without one (at most ``limit_s`` of watching), in ms after
    navigation start; ``since_ms`` if no long task ended after it."""
    deadline = time.monotonic() + limit_s
    while True:
        now_ms, tasks = page.evaluate("[performance.now(), window.__bench.longtasks]")
        ends = [start + duration for start, duration in tasks if start + duration > since_ms]
        last = float(max([since_ms, *ends]))
        if now_ms - last >= quiet_ms or time.monotonic() > deadline:
            return last
        page.wait_for_timeout(200)


# --- scenarios ---------------------------------------------------------------------------------------------------


def emit_scenario(label: str, browser: Browser, url: str, *, env: dict[str, str], procs: Processes, work: Path,
                  args: argparse.Namespace) -> tuple[list[Figure], list[str]]:
    """One training process logging ``emit_points`` points; emit -> drawn on its open curves page."""
    run = f"emit-{uuid.uuid4().hex[:6]}"
    lines = start_trainer(procs, EMIT_TRAINER, [EMIT_PROJECT, run, str(args.emit_points), str(args.emit_interval_s)],
                          env=env, work=work, timeout_s=180, what="the training process to start")
    context, base, errors = new_context(browser, url)
    try:
        # The run stored before the page opens: the page's timings start from a curve it can draw.
        wait_for_run(context, base, EMIT_PROJECT, run)
        page = open_page(context, f"{base}/#/p/{EMIT_PROJECT}/curves?metric=loss&runs={run}")
        try:
            page.locator(".legend-value[data-last-step='0']").wait_for(timeout=120_000)
        except Exception as exc:
            raise BenchError(f"the page never showed step 0 of {run}: {page_problem(page)}") from exc
        progress(label, f"page shows step 0 of {run}; logging {args.emit_points} points, one every "
                        f"{args.emit_interval_s} s")
        lines.send("go")
        emitted: dict[int, float] = {}
        flush_ms: list[float] = []
        budget = args.emit_points * args.emit_interval_s + 120
        while (line := lines.next(budget, "the training process's points")) != "done":
            step, at, flushed = line.split()
            emitted[int(step)] = float(at)
            flush_ms.append((float(flushed) - float(at)) * 1000)
        last = max(emitted)
        with contextlib.suppress(Exception):
            page.wait_for_function(f"() => (window.__bench.last[0] | 0) >= {last}", timeout=30_000)
        page_state = state(page)
    finally:
        context.close()
    total, pipeline, page_side, missing = visible_latencies(page_state, emitted, index=0, run=run)
    if not total:
        raise BenchError(f"no logged point became visible (missing steps {missing[:10]})")
    p50, p99 = percentile(total, 50), percentile(total, 99)
    progress(label, f"emit-to-visible p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {max(total):.0f} ms")
    miss = f", {len(missing)} never drawn" if missing else ""
    figures = [
        Figure(label, "emit-to-visible p50", ms(p50)),
        Figure(label, f"emit-to-visible p99 ({len(total)} points{miss})", ms(p99), "p99 <= 1 s",
               within(p99) and not missing),
        Figure(label, "emit-to-visible max", ms(max(total))),
    ]
    details = [f"{label}: {len(total)} points, one every {args.emit_interval_s} s, each flushed; ms",
               f"  SDK log_metric + flush      p50 {percentile(flush_ms, 50):7.0f}  p99 "
               f"{percentile(flush_ms, 99):7.0f}"]
    if pipeline:
        details.append(f"  emit -> event at the page   p50 {percentile(pipeline, 50):7.0f}  p99 "
                       f"{percentile(pipeline, 99):7.0f}   (pipeline + the server's 250 ms poll)")
        details.append(f"  event -> drawn              p50 {percentile(page_side, 50):7.0f}  p99 "
                       f"{percentile(page_side, 99):7.0f}   (the page: parse, redraw on the next frame)")
    details.append(f"  emit -> drawn               p50 {p50:7.0f}  p99 {p99:7.0f}  max {max(total):7.0f}")
    if errors:
        details.append(f"  page script errors: {errors[:3]}")
    return figures, details


def start_local(procs: Processes, work: Path) -> tuple[dict[str, str], subprocess.Popen[Any], str]:
    """`trackstream local` on a fresh spool and store under ``work``: (its environment, the process, the page URL)."""
    data, spool = work / "data", work / "spool"
    spool.mkdir()
    env = base_env(TRACKSTREAM_SPOOL_DIR=str(spool), TRACKSTREAM_DATA_DIR=str(data))
    local = procs.start([*CLI, "local"], env=env, log=work / "local.log")
    return env, local, wait_for_url(local, work / "local.log")


def emit_embedded(browser: Browser, work: Path, args: argparse.Namespace) -> tuple[list[Figure], list[str]]:
    label = "emit-embedded"
    procs = Processes()
    try:
        env, _local, url = start_local(procs, work)
        progress(label, "trackstream local is serving the page")
        return emit_scenario(label, browser, url, env=env, procs=procs, work=work, args=args)
    finally:
        procs.close()


def emit_kafka(browser: Browser, work: Path, args: argparse.Namespace) -> tuple[list[Figure], list[str]]:
    label = "emit-kafka"
    if not args.bootstrap:
        return [Figure(label, "skipped: no broker (--bootstrap or TRACKSTREAM_KAFKA_BOOTSTRAP; make bench-ui "
                              "starts one)", "-", "p99 <= 1 s", None)], []
    from trackstream.demo_pipeline import kafka_workers
    from trackstream.schemas.settings import KafkaSettings

    prefix = f"benchui{uuid.uuid4().hex[:8]}"
    kafka = KafkaSettings(bootstrap=args.bootstrap, topic_prefix=prefix)
    data, spool, logs = work / "data", work / "spool", work / "logs"
    for path in (data, spool, logs):
        path.mkdir()
    env = base_env(TRACKSTREAM_SPOOL_DIR=str(spool), **kafka.to_environment())
    procs = Processes()
    try:
        with kafka_workers(kafka, data, logs) as workers:
            url = wait_for_url(workers[1], logs / "sink.log")
            progress(label, f"streams and sink workers up (topics {prefix}.*); the sink worker serves the page")
            return emit_scenario(label, browser, url, env=env, procs=procs, work=work, args=args)
    finally:
        procs.close()
        delete_topics(args.bootstrap, prefix)


def delete_topics(bootstrap: str, prefix: str) -> None:
    """Delete the topics under ``prefix`` and the stream worker's own ones (best effort)."""
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient

    async def delete() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            names = [t for t in await admin.list_topics() if t.startswith(prefix + ".") or f"-{prefix}-" in t]
            if names:
                await admin.delete_topics(names)
        finally:
            await admin.close()

    failed: list[BaseException] = []

    def in_thread() -> None:  # Playwright's sync API runs an event loop in this thread: asyncio.run elsewhere
        try:
            asyncio.run(delete())
        except Exception as exc:
            failed.append(exc)

    worker = threading.Thread(target=in_thread)
    worker.start()
    worker.join(60)
    if failed or worker.is_alive():
        progress("emit-kafka", f"could not delete the topics {prefix}.*: {failed[0] if failed else 'timed out'}")


def runs_table(browser: Browser, work: Path, args: argparse.Namespace) -> tuple[list[Figure], list[str]]:
    label = "runs-table"
    data = work / "data"
    progress(label, f"building {args.table_runs:,} runs x {args.table_points} points of loss")
    built = build_store("runs", data, runs=args.table_runs, steps=args.table_points)
    procs = Processes()
    try:
        _, url = serve_store(procs, data, work)
        progress(label, f"store built in {built['build_s']:.1f} s; trackstream ui is serving it")
        context, base, errors = new_context(browser, url)
        try:
            return measure_runs_table(label, context, base, errors, args)
        finally:
            context.close()
    finally:
        procs.close()


def measure_runs_table(label: str, context: BrowserContext, base: str, errors: list[str],
                       args: argparse.Namespace) -> tuple[list[Figure], list[str]]:
    loads: list[dict[str, Any]] = []
    page: Page | None = None
    expected = f"{args.table_runs} runs"
    for attempt in range(args.table_loads):
        if page is not None:
            page.close()
        page = open_page(context, f"{base}/#/p/{RUNS_PROJECT}")
        page.wait_for_function(f"() => window.__bench.rows > 0 && (document.querySelector('.count') || "
                               f"{{}}).textContent === {json.dumps(expected)}", timeout=120_000)
        rows_ms = page.evaluate("window.__bench.rows")
        quiet_ms = long_task_quiet(page, rows_ms)
        page_state = state(page)
        fetch = page_state["runs"][0] if page_state["runs"] else None
        first_runs = next((e for s in page_state["sse"] for e in s["events"] if e[0] == "runs"), None)
        tasks = [(round(s), round(d)) for s, d in page_state["longtasks"] if s < quiet_ms]
        loads.append({"rows": rows_ms, "quiet": quiet_ms, "fetch": fetch, "first_runs_event": first_runs,
                      "long_tasks": tasks})
        progress(label, f"load {attempt + 1}: first rows painted at {rows_ms:.0f} ms, main thread free at "
                        f"{quiet_ms:.0f} ms")
    assert page is not None
    # After the loads, so the first one stays cold: the table's first page, and the whole listing for comparison.
    api = api_ms(context, base, "runs_table", {"project": RUNS_PROJECT, "page": 1, "size": 200})
    listing = api_ms(context, base, "runs", {"project": RUNS_PROJECT})
    progress(label, f"/api/v1/runs_table (first page) asked from here: {api[0]:.0f} ms, {api[1] / 1e3:.0f} kB; "
                    f"/api/v1/runs (every run): {listing[0]:.0f} ms, {listing[1] / 1e6:.1f} MB")
    searches: list[tuple[str, float | None, str]] = []
    for term in SEARCHES:
        page.evaluate(ARM_SEARCH_JS)
        page.locator("input.search").fill(term)
        result = page.evaluate("window.__action")
        searches.append((term, result["ms"], result["text"]))
        progress(label, f"search {term!r}: {ms(result['ms'])} -> {result['text']}")
        page.wait_for_timeout(500)
    sorts: list[tuple[str, float | None, str]] = []
    for title, field in SORTS:
        page.evaluate(ARM_SORT_JS)
        header = (page.locator(f".tabulator-col[tabulator-field='{field}'] .tabulator-col-title") if field else
                  page.locator(".tabulator-col .tabulator-col-title", has_text=title).first)
        header.click()
        result = page.evaluate("window.__action")
        first = " ".join(result["text"].split())[:40]
        sorts.append((title, result["ms"], first))
        progress(label, f"sort by {title}: {ms(result['ms'])} -> first row {first!r}")
        page.wait_for_timeout(500)
    page_state = state(page)
    rows = [load["rows"] for load in loads]
    quiet = [load["quiet"] for load in loads]
    worst_search = max((t for _, t, _ in searches if t is not None), default=None)
    worst_sort = max((t for _, t, _ in sorts if t is not None), default=None)
    searches_ok = all(t is not None for _, t, _ in searches)
    sorts_ok = all(t is not None for _, t, _ in sorts)
    n = len(loads)
    figures = [
        Figure(label, f"navigation -> first rows painted (worst of {n})", ms(max(rows)), "<= 1 s", within(max(rows))),
        Figure(label, f"navigation -> main thread free (worst of {n})", ms(max(quiet)), "<= 1 s", within(max(quiet))),
        Figure(label, f"search typed -> rows filtered (worst of {len(searches)})", ms(worst_search), "<= 1 s",
               searches_ok and within(worst_search)),
        Figure(label, f"header click -> rows sorted (worst of {len(sorts)})", ms(worst_sort), "<= 1 s",
               sorts_ok and within(worst_sort)),
    ]
    details = [f"runs-table: {args.table_runs:,} runs in one project, served by `trackstream ui` (ms after "
               "navigation start, fresh page each load)",
               f"  asked by the bench (no page), median of 3: /api/v1/runs_table (first page of 200) {api[0]:.0f} ms, "
               f"{api[1] / 1e3:.0f} kB; /api/v1/runs (every run, not used by the page) {listing[0]:.0f} ms, "
               f"{listing[1] / 1e6:.1f} MB"]
    for k, load in enumerate(loads):
        fetch = load["fetch"]
        fetch_text = (f"first page read {fetch[0]:.0f}->{fetch[2]:.0f} (server answered at {fetch[1]:.0f}, "
                      f"{fetch[3] / 1e3:.0f} kB)" if fetch else "first page read: no timing")
        event = load["first_runs_event"]
        event_text = f"; first `runs` event at {event[1]:.0f} ({event[2] / 1e6:.1f} MB)" if event else ""
        details.append(f"  load {k + 1}: {fetch_text}; rows painted {load['rows']:.0f}{event_text}; main thread "
                       f"free {load['quiet']:.0f}; long tasks [start, ms]: {load['long_tasks'][:8]}")
    details.append("  search (typed -> painted row count; includes the page's 200 ms debounce): " +
                   ", ".join(f"{term or '(cleared)'!r} {ms(t)} -> {text}" for term, t, text in searches))
    details.append("  sort (header click -> painted first row): " +
                   ", ".join(f"{title} {ms(t)}" for title, t, _ in sorts))
    late = [(round(s), round(d)) for s, d in page_state["longtasks"] if s > max(quiet)]
    if late:
        details.append(f"  long tasks during search/sort [start, ms]: {late[:12]}")
    if errors:
        details.append(f"  page script errors: {errors[:3]}")
    return figures, details


def curves_10m(browser: Browser, work: Path, args: argparse.Namespace) -> tuple[list[Figure], list[str]]:
    label = "curves-10m"
    data = work / "data"
    runs, steps = args.curve_runs, args.curve_steps
    progress(label, f"building {runs} runs x {steps:,} steps of loss ({runs * steps:,} points)")
    built = build_store("curves", data, runs=runs, steps=steps)
    procs = Processes()
    try:
        _, url = serve_store(procs, data, work)
        progress(label, f"store built in {built['build_s']:.1f} s; trackstream ui is serving it")
        context, base, errors = new_context(browser, url)
        loads: list[dict[str, Any]] = []
        try:
            ids = ",".join(f"r{i}" for i in range(runs))
            for attempt in range(args.curve_loads):
                page = open_page(context, f"{base}/#/p/{CURVES_PROJECT}/curves?metric=loss&runs={ids}")
                page.wait_for_function(
                    f"() => [...document.querySelectorAll('.legend-value')].filter((c) => c.dataset.lastStep === "
                    f"'{steps - 1}').length === {runs}", timeout=600_000, polling=100)
                page_state = state(page)
                page.close()
                time.sleep(1.0)  # the closed page's event stream ends on the server before the next load
                drawn = [first_seen(page_state["seen"], i, steps - 1) for i in range(runs)]
                stream = page_state["sse"][0] if page_state["sse"] else {"created": None, "events": []}
                curves = next((e for e in stream["events"] if e[0] == "curves"), None)
                fetch = page_state["runs"][0] if page_state["runs"] else None
                loads.append({"drawn": max(t for t in drawn if t is not None), "stream": stream["created"],
                              "curves_at": curves[1] if curves else None, "curves_bytes": curves[2] if curves else 0,
                              "fetch": fetch,
                              "long_tasks": [(round(s), round(d)) for s, d in page_state["longtasks"]]})
                progress(label, f"load {attempt + 1}: all {runs} curves drawn at {loads[-1]['drawn']:.0f} ms")
            api = api_ms(context, base, "curves", {"project": CURVES_PROJECT, "runs": ids.split(","),
                                                   "metric": "loss", "points": 1000})
            progress(label, f"/api/v1/curves of the {runs} runs asked from here: {api[0]:.0f} ms")
        finally:
            context.close()
    finally:
        procs.close()
    cold, warm = loads[0]["drawn"], [load["drawn"] for load in loads[1:]]
    figures = [Figure(label, f"navigation -> {runs} x {steps:,} steps drawn, first load", ms(cold), "<= 1 s",
                      within(cold))]
    if warm:
        figures.append(Figure(label, f"navigation -> drawn, next loads (worst of {len(warm)})", ms(max(warm)),
                              "<= 1 s", within(max(warm))))
    details = [f"curves-10m: {runs} runs x {steps:,} steps = {runs * steps:,} points (store built in "
               f"{built['build_s']:.0f} s), curves page opened fresh; ms after navigation start",
               f"  /api/v1/curves of the {runs} runs at 1000 buckets, asked by the bench (no page): median "
               f"{api[0]:.0f} ms of 3 (after the page loads), {api[1] / 1e3:.0f} kB"]
    for k, load in enumerate(loads):
        fetch = load["fetch"]
        fetch_text = f"runs read {fetch[0]:.0f}->{fetch[2]:.0f}" if fetch else "runs read: no timing"
        server = (load["curves_at"] - load["stream"]) if load["curves_at"] and load["stream"] else None
        details.append(f"  load {k + 1}: {fetch_text}; event stream opened {load['stream'] or 0:.0f}; first `curves` "
                       f"event {load['curves_at'] or 0:.0f} ({ms(server)} after the stream opened: the server's "
                       f"plan + buckets, {load['curves_bytes'] / 1e3:.0f} kB); drawn {load['drawn']:.0f}; "
                       f"long tasks [start, ms]: {load['long_tasks'][:6]}")
    if errors:
        details.append(f"  page script errors: {errors[:3]}")
    return figures, details


def live_100(browser: Browser, work: Path, args: argparse.Namespace) -> tuple[list[Figure], list[str]]:
    label = "live-100"
    procs = Processes()
    try:
        env, local, url = start_local(procs, work)
        lines = start_trainer(procs, LIVE_TRAINER, [LIVE_PROJECT, str(args.live_runs), str(args.live_seconds)],
                              env=env, work=work, timeout_s=300, what="the training process to start its runs")
        context, base, errors = new_context(browser, url)
        try:
            return measure_live(label, context, base, errors, server_pid=local.pid, lines=lines, args=args)
        finally:
            context.close()
    finally:
        procs.close()


def measure_live(label: str, context: BrowserContext, base: str, errors: list[str], *, server_pid: int,
                 lines: Lines, args: argparse.Namespace) -> tuple[list[Figure], list[str]]:
    shown = [f"r{i:03d}" for i in range(min(10, args.live_runs))]
    table = open_page(context, f"{base}/#/p/{LIVE_PROJECT}")
    table.wait_for_function(f"() => (document.querySelector('.count') || {{}}).textContent === "
                            f"'{args.live_runs} runs'", timeout=120_000)
    curves = open_page(context, f"{base}/#/p/{LIVE_PROJECT}/curves?metric=loss&runs={','.join(shown)}")
    curves.wait_for_function(f"() => document.querySelectorAll(\".legend-value[data-last-step='0']\").length === "
                             f"{len(shown)}", timeout=120_000)
    progress(label, f"runs table and curves of {len(shown)} runs open; {args.live_runs} runs log 1 point/s for "
                    f"{args.live_seconds:.0f} s")
    go_ms = {"runs table": table.evaluate("performance.now()"), "curves": curves.evaluate("performance.now()")}
    lines.send("go")
    emitted: dict[int, float] = {}
    samples: list[float] = []
    began_wall, began_cpu = time.monotonic(), cpu_seconds(server_pid)
    last_wall, last_cpu = began_wall, began_cpu
    while True:
        curves.wait_for_timeout(1000)
        now, cpu = time.monotonic(), cpu_seconds(server_pid)
        samples.append((cpu - last_cpu) / (now - last_wall))
        last_wall, last_cpu = now, cpu
        done = False
        while not lines.queue.empty():
            line = lines.next(1, "a point")
            if line == "done":
                done = True
                break
            step, at, _ = line.split()
            emitted[int(step)] = float(at)
        if done or now - began_wall > args.live_seconds + 60:
            break
    mean = (last_cpu - began_cpu) / (last_wall - began_wall)
    last = max(emitted) if emitted else 0
    with contextlib.suppress(Exception):
        curves.wait_for_function(f"() => window.__bench.last.filter((s) => (s | 0) >= {last}).length === "
                                 f"{len(shown)}", timeout=30_000)
    curves_state, table_state = state(curves), state(table)
    total: list[float] = []
    missing = 0
    for index, run in enumerate(shown):
        t, _, _, lost = visible_latencies(curves_state, emitted, index=index, run=run)
        total += t
        missing += len(lost)
    window_ms = (last_wall - began_wall) * 1000
    busy = {name: sum(d for s, d in st["longtasks"] if s >= go_ms[name])
            for name, st in (("runs table", table_state), ("curves", curves_state))}
    progress(label, f"server CPU mean {mean:.2f} cores, max {max(samples):.2f}; emit-to-visible p99 "
                    f"{percentile(total, 99) if total else float('nan'):.0f} ms")
    figures = [
        Figure(label, f"server CPU, mean over {len(samples)} s (cores)", f"{mean:.2f}", "< 1 core", mean < 1.0),
        Figure(label, "server CPU, max 1 s sample (cores)", f"{max(samples):.2f}", "< 1 core", max(samples) < 1.0),
    ]
    if total:
        figures.append(Figure(label, f"emit-to-visible p99 (curves tab, {len(total)} points"
                                     f"{f', {missing} never drawn' if missing else ''})",
                              ms(percentile(total, 99)), "p99 <= 1 s", within(percentile(total, 99)) and not missing))
    details = [f"live-100: {args.live_runs} running runs in one SDK process, 1 point/s each (flushed once a second), "
               f"runs table + curves of {len(shown)} runs in two tabs, {window_ms / 1000:.0f} s",
               f"  server (trackstream local, pid {server_pid}) CPU per 1 s sample: "
               + " ".join(f"{s:.2f}" for s in samples),
               f"  machine: {os.cpu_count()} CPUs (the browser, the training process and the server share them)",
               f"  tabs' visibility: runs table {table_state['visibility']}, curves {curves_state['visibility']}; "
               "long tasks while the runs logged: " + ", ".join(f"{k} {v:.0f} ms" for k, v in busy.items())]
    if total:
        details.append(f"  emit-to-visible (curves tab) p50 {percentile(total, 50):.0f} ms, p99 "
                       f"{percentile(total, 99):.0f} ms, max {max(total):.0f} ms")
    if errors:
        details.append(f"  page script errors: {errors[:3]}")
    return figures, details


# --- the report ---------------------------------------------------------------------------------------------------


def summary(figures: list[Figure]) -> str:
    width = max(len(f.name) for f in figures) + 2
    lines = [f"{'scenario':<15}{'figure':<{width}}{'value':>12}  {'target':<12}met",
             "-" * (15 + width + 12 + 2 + 12 + 3)]
    for f in figures:
        met = "-" if f.met is None else "yes" if f.met else "NO"
        lines.append(f"{f.scenario:<15}{f.name:<{width}}{f.value:>12}  {f.target:<12}{met}")
    return "\n".join(lines)


RUNNERS: dict[str, Callable[[Browser, Path, argparse.Namespace], tuple[list[Figure], list[str]]]] = {
    "emit-embedded": emit_embedded,
    "emit-kafka": emit_kafka,
    "runs-table": runs_table,
    "curves-10m": curves_10m,
    "live-100": live_100,
}


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def run_all(args: argparse.Namespace) -> int:
    names = [args.only] if args.only else list(SCENARIOS)
    figures: list[Figure] = []
    details: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="trackstream-bench-ui-"))
    started = time.monotonic()
    try:
        with chromium() as browser:
            for name in names:
                work = root / name
                work.mkdir()
                progress(name, "starting")
                try:
                    found, lines = RUNNERS[name](browser, work, args)
                except Exception as exc:
                    traceback.print_exc(file=sys.stderr)
                    found = [Figure(name, f"failed: {' '.join(str(exc).split())[:90]}", "-", "", False)]
                    lines = [f"{name}: failed: {exc}"]
                figures += found
                details += [*lines, ""]
                progress(name, f"done ({time.monotonic() - started:.0f} s so far)")
    finally:
        if args.keep:
            progress("bench-ui", f"kept the stores and logs in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    size = "--quick" if args.quick else "full size"
    print(f"live page benchmark ({size}, {os.cpu_count()} CPUs, Chromium {CHROMIUM}); details:\n")
    print("\n".join(details))
    print(summary(figures))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"quick": args.quick, "cpus": os.cpu_count(),
                                               "figures": [asdict(f) for f in figures], "details": details},
                                              indent=2))
        print(f"\nJSON: {args.json}")
    return 1 if any(f.name.startswith("failed") for f in figures) else 0  # a missed target is a figure, not a failure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"a smoke run: {QUICK['emit_points']} points per emit scenario, {QUICK['curve_runs']} "
                             f"runs x {QUICK['curve_steps']:,} steps of curves, {QUICK['live_seconds']:.0f} s live")
    parser.add_argument("--only", choices=SCENARIOS, help="run this scenario only")
    parser.add_argument("--bootstrap", default=os.environ.get("TRACKSTREAM_KAFKA_BOOTSTRAP"),
                        help="Kafka for emit-kafka (default $TRACKSTREAM_KAFKA_BOOTSTRAP; without one it is skipped)")
    parser.add_argument("--emit-points", type=int, help=f"points per emit scenario (default {FULL['emit_points']})")
    parser.add_argument("--emit-interval-s", type=float,
                        help=f"seconds between two points (default {FULL['emit_interval_s']})")
    parser.add_argument("--table-runs", type=int, help=f"runs of the runs table (default {FULL['table_runs']:,})")
    parser.add_argument("--table-points", type=int, help=f"loss points per run there (default {FULL['table_points']})")
    parser.add_argument("--table-loads", type=int, help=f"fresh loads of the table (default {FULL['table_loads']})")
    parser.add_argument("--curve-runs", type=int, help=f"runs on the curves page (default {FULL['curve_runs']})")
    parser.add_argument("--curve-steps", type=int, help=f"steps per run there (default {FULL['curve_steps']:,})")
    parser.add_argument("--curve-loads", type=int, help=f"fresh loads of the curves (default {FULL['curve_loads']})")
    parser.add_argument("--live-runs", type=int, help=f"running runs of live-100 (default {FULL['live_runs']})")
    parser.add_argument("--live-seconds", type=float, help=f"length of live-100 (default {FULL['live_seconds']:.0f})")
    parser.add_argument("--json", default=str(REPO / ".cache" / "bench" / "ui.json"),
                        help="write the figures here as JSON too ('' for none)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary stores and logs (for a look)")
    parser.add_argument("--build-child", choices=("runs", "curves"), help=argparse.SUPPRESS)
    parser.add_argument("--store-dir", help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.build_child:
        return build_child(args)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return run_all(args)


if __name__ == "__main__":
    sys.exit(main())
