"""Runs and models end to end into the spool: lifecycle events, ids from the environment, fork, exit hooks."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import trackstream as ts
from trackstream.producers import readback
from trackstream.producers.config import ProducerConfig, resolve_config
from trackstream.producers.errors import ConfigError, HandleClosedError, TrackstreamError
from trackstream.producers.spool import SpoolReader, list_spools
from trackstream.schemas import EntityRef, Envelope, decode

REPO = Path(__file__).resolve().parents[2]


def envelopes(spool_dir: Path) -> list[Envelope]:
    found = []
    for spool in list_spools(spool_dir):
        found.extend(decode(payload) for _, _, payload in SpoolReader(spool.path).frames())
    return found


def series(found: list[Envelope], producer_id: str | None = None) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for envelope in sorted(found, key=lambda e: (e.producer_id, e.seq)):
        if producer_id is None or envelope.producer_id == producer_id:
            for batch in envelope.metrics:
                out.setdefault(batch.name, []).extend(zip(batch.steps, batch.values, strict=True))
    return out


def entity_counters(found: list[Envelope]) -> dict[str, list[tuple[int | None, int | None]]]:
    """Per producer, the (entity_seq, entity_offset) of its envelopes (one entity) in seq order."""
    out: dict[str, list[tuple[int | None, int | None]]] = {}
    sent: dict[str, int] = {}
    for envelope in sorted(found, key=lambda e: (e.producer_id, e.seq)):
        counters = out.setdefault(envelope.producer_id, [])
        assert envelope.entity_offset == sent.get(envelope.producer_id, 0), "offset = points sent before"
        sent[envelope.producer_id] = sent.get(envelope.producer_id, 0) + envelope.point_count()
        counters.append((envelope.entity_seq, envelope.entity_offset))
    return out


def events(found: list[Envelope]) -> list[tuple[str, dict[str, Any]]]:
    return [(e.type, e.data) for env in sorted(found, key=lambda e: (e.producer_id, e.seq)) for e in env.events]


def test_a_run_lands_in_the_spool_with_its_lifecycle(tmp_path: Path) -> None:
    with ts.start_run("proj", "baseline", run_id="r-1", params={"lr": 0.1, "layers": [2, 3]},
                      tags={"team": "a"}, rank=1, world_size=2, spool_dir=str(tmp_path)) as run:
        assert (run.id, run.project, run.name, run.entity) == ("r-1", "proj", "baseline",
                                                               EntityRef("proj", "run", "r-1"))
        run.log_metrics({"loss": 1.0, "acc": 0.1})
        run.log_metrics({"loss": 0.5, "acc": math.nan}, step=5)
        run.log_params({"batch": 32})
        run.set_tags({"seed": 7})
    found = envelopes(tmp_path)
    assert {(e.rank, e.world_size, e.entity) for e in found} == {(1, 2, EntityRef("proj", "run", "r-1"))}
    assert events(found) == [
        ("run_started", {"name": "baseline", "params": {"lr": 0.1, "layers": [2, 3]}, "tags": {"team": "a"}}),
        ("params", {"params": {"batch": 32}}),
        ("tags", {"tags": {"seed": "7"}}),
        ("run_finished", {"status": "completed"}),
    ]
    got = series(found)
    assert got["loss"] == [(0, 1.0), (5, 0.5)]
    assert got["acc"][0] == (0, 0.1)
    assert math.isnan(got["acc"][1][1])
    with pytest.raises(HandleClosedError):
        run.log_metric("loss", 1.0)


def test_leaving_the_with_block_on_an_exception_fails_the_run(tmp_path: Path) -> None:
    def train() -> None:
        with ts.start_run("proj", spool_dir=str(tmp_path)) as run:
            run.log_metric("x", 1.0)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        train()
    assert events(envelopes(tmp_path))[-1] == ("run_finished", {"status": "failed"})


def test_run_id_rank_and_world_size_come_from_the_environment(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "elastic-1")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    run = ts.start_run("proj", spool_dir=str(tmp_path))
    assert (run.id, run.rank, run.world_size) == ("elastic-1", 3, 8)
    run.finish()
    monkeypatch.setenv("TRACKSTREAM_RUN_ID", "explicit")
    assert ts.start_run("proj", spool_dir=str(tmp_path), rank=0).id == "explicit"
    assert ts.start_run("proj", run_id="kw", spool_dir=str(tmp_path)).id == "kw"
    monkeypatch.delenv("TRACKSTREAM_RUN_ID")
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    fresh = ts.start_run("proj", spool_dir=str(tmp_path))
    assert len(fresh.id) == 32
    assert fresh.id != ts.start_run("proj", spool_dir=str(tmp_path)).id
    ts.flush()


def test_resume_announces_no_new_start(tmp_path: Path) -> None:
    run = ts.start_run("proj", run_id="r", resume=True, params={"epochs": 3}, spool_dir=str(tmp_path))
    run.log_metric("loss", 0.1, step=100)
    run.finish("killed")
    assert [t for t, _ in events(envelopes(tmp_path))] == ["params", "run_finished"]
    assert events(envelopes(tmp_path))[-1][1] == {"status": "killed"}
    with pytest.raises(ValueError, match="status"):
        ts.start_run("proj", spool_dir=str(tmp_path)).finish("running")


def test_model_handles_log_single_values_and_series(tmp_path: Path) -> None:
    model = ts.model("proj", "resnet", version=2, spool_dir=str(tmp_path))
    assert model.id == "resnet:2"
    assert model.entity == EntityRef("proj", "model", "resnet:2")
    model.log_metric("accuracy", 0.91, single_value=True)
    model.log_metric("accuracy", 0.93, single_value=True)
    model.log_metrics({"latency_ms": [3.0, 4.0]})
    model.close()
    found = envelopes(tmp_path)
    kinds = {(b.name, b.kind): b.values for e in found for b in e.metrics}
    assert kinds == {("accuracy", "single"): [0.93], ("latency_ms", "series"): [3.0, 4.0]}
    with pytest.raises(HandleClosedError):
        model.log_metric("accuracy", 1.0)


def test_bad_calls_raise_at_the_call(tmp_path: Path) -> None:
    run = ts.start_run("proj", spool_dir=str(tmp_path))
    with pytest.raises(ValueError, match="'ok ok!'"):
        run.log_metric("ok ok!", 1.0)
    with pytest.raises(ValueError, match="'flag'"):
        run.log_metrics({"flag": False})
    with pytest.raises(ValueError, match="'p'"):
        run.log_params({"p": object()})
    with pytest.raises(ValueError, match="'t'"):
        run.set_tags({"t": [1]})
    with pytest.raises(ValueError, match="project"):
        ts.start_run("", spool_dir=str(tmp_path))
    with pytest.raises(TypeError, match="no_such_option"):
        ts.start_run("proj", no_such_option=1)
    run.finish()


def test_configuration_keyword_beats_environment_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACKSTREAM_LINGER_MS", "50")
    monkeypatch.setenv("TRACKSTREAM_KAFKA_BOOTSTRAP", "env:9092")
    monkeypatch.setenv("TRACKSTREAM_KAFKA_SASL_PASSWORD", "hunter2")
    config = resolve_config(linger_ms=7)
    assert (config.linger_ms, config.kafka.bootstrap, config.fsync) == (7, "env:9092", "interval")
    assert "hunter2" not in repr(config)
    assert "***" in repr(config)
    monkeypatch.delenv("TRACKSTREAM_KAFKA_BOOTSTRAP")
    assert resolve_config().spooled_only
    with pytest.raises(ConfigError, match="fsync"):
        resolve_config(fsync="sometimes")
    with pytest.raises(ConfigError, match="linger_ms"):
        resolve_config(linger_ms="soon")
    assert resolve_config(ProducerConfig(linger_ms=3)).linger_ms == 3


def test_read_back_needs_a_registered_backend(tmp_path: Path) -> None:
    run = ts.start_run("proj", spool_dir=str(tmp_path))
    readback.set_read_backend(None)
    with pytest.raises(TrackstreamError, match=r"trackstream\[query\]"):
        _ = run.metrics
    calls: list[tuple[Any, ...]] = []

    class Backend:
        def entity_metrics(self, entity: EntityRef) -> dict[str, float | list[float]]:
            calls.append(("metrics", entity))
            return {"loss": [1.0, 2.0]}

        def wait_ingested(self, entity: EntityRef, producer_id: str, seq: int, *, timeout_s: float) -> None:
            calls.append(("wait", entity, producer_id, seq))

    readback.set_read_backend(Backend)
    try:
        run.log_metric("loss", 1.0)
        assert run.metrics == {"loss": [1.0, 2.0]}
        run.wait_ingested(timeout_s=5)
        last_seq = max(e.seq for e in envelopes(tmp_path))
        assert calls == [("metrics", run.entity), ("wait", run.entity, run.producer_id, last_seq)]
        assert {e.producer_id for e in envelopes(tmp_path)} == {run.producer_id}
    finally:
        readback.set_read_backend(None)
        run.finish()


def test_a_forked_child_logs_too_and_both_arrive(tmp_path: Path) -> None:
    run = ts.start_run("proj", spool_dir=str(tmp_path))
    run.log_metric("parent", 1.0)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            run.log_metrics({"child": 2.0})
            run.log_metric("child", [3.0, 4.0])
            ts.flush(timeout_s=20)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    run.log_metric("parent", 5.0)
    run.finish()
    found = envelopes(tmp_path)
    producers = {e.producer_id for e in found}
    assert len(producers) == 2
    assert run.producer_id in producers
    (child_id,) = producers - {run.producer_id}
    assert series(found, run.producer_id) == {"parent": [(0, 1.0), (1, 5.0)]}
    assert series(found, child_id) == {"child": [(0, 2.0), (1, 3.0), (2, 4.0)]}
    counters = entity_counters(found)
    assert counters[child_id] == [(0, 0)], "a new producer id: the child's entity counters start at 0"
    parent = counters[run.producer_id]
    assert [es for es, _ in parent] == list(range(len(parent)))
    assert parent[0] == (0, 0)
    assert [t for t, _ in events(found)].count("run_finished") == 1


def run_script(body: str, spool_dir: Path) -> subprocess.CompletedProcess[str]:
    script = "import trackstream as ts\n" + textwrap.dedent(body)
    env = {**os.environ, "TRACKSTREAM_SPOOL_DIR": str(spool_dir), "PYTHONPATH": str(REPO)}
    env.pop("TRACKSTREAM_KAFKA_BOOTSTRAP", None)
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def test_exit_finishes_open_runs_as_completed(tmp_path: Path) -> None:
    result = run_script("""
        run = ts.start_run("proj", run_id="r")
        model = ts.model("proj", "m")
        for i in range(1000):
            run.log_metrics({"loss": i / 1000})
        model.log_metric("acc", 0.5, single_value=True)
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    found = envelopes(tmp_path)
    assert events(found)[-1] == ("run_finished", {"status": "completed"})
    assert [v for _, v in series(found)["loss"]] == [i / 1000 for i in range(1000)]
    assert series(found)["acc"] == [(0, 0.5)]
    assert [s.alive for s in list_spools(tmp_path)] == [False]


def test_an_uncaught_exception_fails_open_runs(tmp_path: Path) -> None:
    result = run_script("""
        run = ts.start_run("proj", run_id="r")
        run.log_metric("loss", 1.0)
        raise SystemError("training diverged")
    """, tmp_path)
    assert result.returncode == 1
    assert "training diverged" in result.stderr
    found = envelopes(tmp_path)
    assert events(found)[-1] == ("run_finished", {"status": "failed"})
    assert series(found)["loss"] == [(0, 1.0)]


def test_import_stays_light_and_logging_needs_no_kafka_client(tmp_path: Path) -> None:
    result = run_script("""
        import sys
        run = ts.start_run("proj")
        run.log_metric("x", 1.0)
        run.finish()
        print(sorted(m for m in ("aiokafka", "pydantic", "numpy") if m in sys.modules))
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_history_import_keeps_given_steps_and_times(tmp_path: Path) -> None:
    run = ts.start_run("proj", "imported", run_id="old", started_ns=1_000, spool_dir=str(tmp_path))
    run.log_history("loss", [0, 10, 20], [0.9, 0.5, 0.1], times_ns=[2_000, 3_000, 4_000])
    run.log_metric("loss", 0.05)
    run.log_metric("best", 0.1, single_value=True, step=20, time_ns=4_500)
    with pytest.raises(ValueError, match="same length"):
        run.log_history("loss", [1], [1.0, 2.0], times_ns=[1])
    with pytest.raises(ValueError, match="time_ns"):
        run.log_metric("loss", 1.0, time_ns=-1)
    run.finish("completed", ended_ns=5_000)
    found = envelopes(tmp_path)
    loss = [b for e in found for b in e.metrics if b.name == "loss"]
    assert [s for b in loss for s in b.steps] == [0, 10, 20, 21]
    assert [t for b in loss for t in b.times_ns][:3] == [2_000, 3_000, 4_000]
    best = next(b for e in found for b in e.metrics if b.name == "best")
    assert (best.kind, best.steps, best.times_ns) == ("single", [20], [4_500])
    stamps = [(ev.type, ev.time_ns) for e in found for ev in e.events]
    assert stamps == [("run_started", 1_000), ("run_finished", 5_000)]


def test_a_detached_run_is_flushed_but_not_finished(tmp_path: Path) -> None:
    run = ts.start_run("proj", run_id="elsewhere", resume=True, spool_dir=str(tmp_path))
    run.log_metric("x", 1.0)
    run.detach()
    with pytest.raises(HandleClosedError):
        run.log_metric("x", 2.0)
    found = envelopes(tmp_path)
    assert series(found) == {"x": [(0, 1.0)]}
    assert events(found) == []


def test_the_fast_paths_refuse_steps_past_int64_and_log_nothing(tmp_path: Path) -> None:
    run = ts.start_run("proj", run_id="fast", spool_dir=str(tmp_path), kafka_bootstrap="")
    run.log_metrics({"reward": 1.0, "loss": 1.0}, step=0)  # the series exist: later calls take the fast paths
    for call in (lambda: run.log_metric("reward", 2.0, step=2**63),
                 lambda: run.log_metrics({"reward": 2.0, "loss": 2.0}, step=2**63),
                 lambda: run.log_metrics({"reward": 2.0}, step=-(2**63) - 1)):
        with pytest.raises(ValueError, match="int64"):
            call()
    run.log_metric("reward", 3.0, step=2**63 - 1)
    with pytest.raises(ValueError, match="int64"):
        run.log_metric("reward", 4.0)  # the auto-increment would pass int64
    with pytest.raises(ValueError, match="int64"):
        run.log_metrics({"reward": 4.0, "loss": 4.0})
    assert run.buffered_points() == 3
    run.finish()


NESTED_33: Any = 1
for _ in range(33):
    NESTED_33 = [NESTED_33]


@pytest.mark.parametrize(("options", "match"), [
    ({"rank": 2**32, "world_size": 2**32 + 1}, "world_size"),
    ({"rank": 4, "world_size": 4}, "rank=4"),
    ({"params": {"a": NESTED_33}}, "nest"),
    ({"tags": {"t": "x" * 8001}}, "8000"),
    ({"tags": {"k" * 251: "v"}}, "key"),
    ({"run_id": "r" * 251}, "run id"),
])
def test_start_run_refuses_what_the_store_cannot_hold(tmp_path: Path, options: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ts.start_run("proj", spool_dir=str(tmp_path), kafka_bootstrap="", **options)


def test_an_open_run_sends_heartbeats_until_it_finishes(tmp_path: Path) -> None:
    run = ts.start_run("proj", run_id="beating", spool_dir=str(tmp_path), kafka_bootstrap="", heartbeat_ms=20,
                       linger_ms=5)
    deadline = time.monotonic() + 30
    while not [e for e in spooled_events(tmp_path) if e.type == "heartbeat"]:
        assert time.monotonic() < deadline, "no heartbeat reached the spool in 30 s"
        time.sleep(0.02)
    run.finish()
    ts.flush(timeout_s=10)
    events = spooled_events(tmp_path)
    assert events[-1].type == "run_finished"
    count = len(events)
    quiet_until = time.monotonic() + 0.2  # ten heartbeat periods: a finished run sends no more
    while time.monotonic() < quiet_until:
        ts.flush(timeout_s=10)
    assert len(spooled_events(tmp_path)) == count
    model = ts.model("proj", "m", spool_dir=str(tmp_path / "m"), kafka_bootstrap="", heartbeat_ms=20)
    model.log_metric("x", 1.0)
    model.close()
    assert not [e for e in spooled_events(tmp_path / "m") if e.type == "heartbeat"]


def spooled_events(spool_dir: Path) -> list[Any]:
    return [event for envelope in envelopes(spool_dir) for event in envelope.events]


def test_only_the_process_that_owns_a_run_sends_its_heartbeats(tmp_path: Path) -> None:
    from trackstream.producers.flusher import Flusher

    run = ts.start_run("proj", run_id="forked", spool_dir=str(tmp_path), kafka_bootstrap="")
    assert Flusher._beat([run])
    run._owner_pid = os.getpid() + 1  # as a forked child (a DataLoader worker) sees the parent's run
    assert not Flusher._beat([run])
    run._owner_pid = os.getpid()
    run.finish()
