"""One simulated training process of ``trackstream demo``: a rank of one configuration, logging via the SDK.

Run as ``python -m trackstream.demo_worker '<json spec>'``; rank, world size and run id come from the
environment exactly as under torchrun (``RANK``, ``WORLD_SIZE``, ``TRACKSTREAM_RUN_ID``).

Two modes. Saturated (the default): log ``steps`` steps as fast as the process can. Paced (spec key ``rate``,
points per second): print ``ready`` on stdout once the run is open, wait for a line on stdin, then log at
``rate`` until stdin is closed, and print ``logged <points>`` last. The demo starts every paced process at once
this way, so the latency it measures is that of steady logging, not of 24 interpreters starting up.
"""

from __future__ import annotations

import math
import random
import struct
import sys
import threading
import time
from typing import Any

import orjson

import trackstream as ts

PACE_TICK_S = 0.05
METRIC_NAMES = ("loss", "accuracy", "grad_norm", "learning_rate", "throughput", "val_proxy")


def metric_names(count: int) -> list[str]:
    """The first ``count`` metrics (extra ones are numbered)."""
    names = list(METRIC_NAMES[:count])
    names.extend(f"aux_{i}" for i in range(len(names), count))
    return names


def _f32(value: float) -> float:
    """Round to float32, as frameworks produce their numbers."""
    rounded: float = struct.unpack("f", struct.pack("f", value))[0]
    return rounded


def simulated_point(name: str, step: int, steps: int, params: dict[str, Any], noise: random.Random) -> float:
    """A plausible training curve: decaying loss whose speed and floor depend on the hyperparameters."""
    lr, batch = float(params["lr"]), int(params["batch_size"])
    progress = step / max(1, steps)
    speed = 4.0 + 2000.0 * lr * math.sqrt(batch / 64)
    floor = 0.08 + 0.02 * abs(math.log10(lr) + 3.3) + 6.0 / batch
    loss = floor + 2.2 * math.exp(-speed * progress) + noise.gauss(0.0, 0.03 + 0.01 * math.sqrt(64 / batch))
    if name == "loss":
        return _f32(max(loss, 1e-4))
    if name == "accuracy":
        return _f32(min(1.0, max(0.0, 1.0 - loss / 2.4 + noise.gauss(0, 0.005))))
    if name == "grad_norm":
        return _f32(abs(1.5 * math.exp(-3 * progress) + noise.gauss(0.2, 0.05)))
    if name == "learning_rate":
        warmup = min(1.0, step / max(1, steps // 20))
        return _f32(lr * warmup * 0.5 * (1 + math.cos(math.pi * progress)))
    return _f32(1000.0 * batch / 64 + noise.gauss(0, 25.0))


def main(argv: list[str] | None = None) -> int:
    """Run one simulated rank from the JSON spec in ``argv[0]`` (default ``sys.argv[1]``); returns 0.

    Spec keys: project, name, params, sweep, steps, metrics, seed; ``rate`` (points/s) for the paced mode.
    Saturated, it logs every metric at every step, then ``test_accuracy`` as a single value.
    """
    spec = orjson.loads((argv or sys.argv[1:])[0])
    params, steps = spec["params"], int(spec["steps"])
    names = metric_names(int(spec["metrics"]))
    logged: int | None = None
    with ts.start_run(spec["project"], name=spec["name"], params=params, tags={"sweep": spec["sweep"]}) as run:
        noise = random.Random(int(spec["seed"]) * 1000 + run.rank)
        if spec.get("rate"):
            logged = _log_paced(run, names, rate=float(spec["rate"]), steps=steps, params=params, noise=noise)
            run.flush()
        else:
            for step in range(steps):
                run.log_metrics({name: simulated_point(name, step, steps, params, noise) for name in names},
                                step=step)
            final = simulated_point("accuracy", steps, steps, params, noise)
            run.log_metric("test_accuracy", final, single_value=True)
            run.flush()
    if logged is not None:  # after the run is finished and flushed
        _say(f"logged {logged}")
    return 0


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _log_paced(run: Any, names: list[str], *, rate: float, steps: int, params: dict[str, Any],
               noise: random.Random) -> int:
    """Say ``ready``, wait for the go line on stdin, then log ``rate`` points/s (whole steps, on schedule) until
    stdin closes; returns the points logged. ``steps`` only shapes the simulated curves."""
    run.flush(timeout_s=120, acknowledged=True)  # connected and the run's start delivered: a job in its stride
    _say("ready")
    if not sys.stdin.readline():  # closed before the start: log nothing
        return 0
    stop = threading.Event()

    def wait_for_eof() -> None:
        while sys.stdin.readline():
            pass
        stop.set()

    threading.Thread(target=wait_for_eof, name="demo-stop", daemon=True).start()
    steps_per_s = rate / len(names)
    started, step = time.monotonic(), 0
    while not stop.is_set():
        due = int((time.monotonic() - started) * steps_per_s) + 1
        while step < due:
            run.log_metrics({name: simulated_point(name, step, steps, params, noise) for name in names}, step=step)
            step += 1
        # pace: until the next step is due, at least 10 ms (a fast rate logs in bursts of steps, not per wake-up)
        stop.wait(max(PACE_TICK_S, started + step / steps_per_s - time.monotonic()))
    return step * len(names)


if __name__ == "__main__":
    sys.exit(main())
