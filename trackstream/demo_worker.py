"""One simulated training process of ``trackstream demo``: a rank of one configuration, logging via the SDK.

Run as ``python -m trackstream.demo_worker '<json spec>'``; rank, world size and run id come from the
environment exactly as under torchrun (``RANK``, ``WORLD_SIZE``, ``TRACKSTREAM_RUN_ID``).
"""

from __future__ import annotations

import math
import random
import struct
import sys
from typing import Any

import orjson

import trackstream as ts

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

    Spec keys: project, name, params, sweep, steps, metrics, seed. Logs every metric at every step, then
    ``test_accuracy`` as a single value.
    """
    spec = orjson.loads((argv or sys.argv[1:])[0])
    params, steps = spec["params"], int(spec["steps"])
    names = metric_names(int(spec["metrics"]))
    with ts.start_run(spec["project"], name=spec["name"], params=params, tags={"sweep": spec["sweep"]}) as run:
        noise = random.Random(int(spec["seed"]) * 1000 + run.rank)
        for step in range(steps):
            run.log_metrics({name: simulated_point(name, step, steps, params, noise) for name in names}, step=step)
        final = simulated_point("accuracy", steps, steps, params, noise)
        run.log_metric("test_accuracy", final, single_value=True)
        run.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
