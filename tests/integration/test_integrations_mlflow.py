"""MLflow import against a real MLflow with a local sqlite tracking store and a scikit-learn model under autolog.

What lands is read back from the spool (no Kafka): every point of every MLflow metric history must arrive with
the same step, timestamp and value (bit for bit, NaN and infinities included).
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

mlflow = pytest.importorskip("mlflow")
sklearn_linear = pytest.importorskip("sklearn.linear_model")
sklearn_datasets = pytest.importorskip("sklearn.datasets")
sklearn_model_selection = pytest.importorskip("sklearn.model_selection")

from trackstream.integrations import (  # noqa: E402
    SOURCE_NAME_TAG_PREFIX,
    from_mlflow_run,
    get_mlflow_model_metrics,
    import_mlflow_run,
    mlflow_autolog,
    to_metric_name,
)
from trackstream.producers.spool import SpoolReader, list_spools  # noqa: E402
from trackstream.schemas import Envelope, decode  # noqa: E402

CUSTOM = [1.0, 0.5, math.nan, math.inf, -0.0, 1e-310]


def bits(value: float) -> int:
    return int(struct.unpack("<Q", struct.pack("<d", value))[0])


def envelopes(spool_dir: Path) -> list[Envelope]:
    out = []
    for spool in list_spools(spool_dir):
        out += [decode(payload) for _pos, _key, payload in SpoolReader(spool.path).frames()]
    return out


def rows(found: list[Envelope], entity_type: str = "run") -> list[tuple[str, str, int, int, int, int]]:
    """(entity id, metric, rank, step, time_ns, value bits) of every point, in delivery order."""
    return [
        (e.entity.id, batch.name, e.rank, step, time_ns, bits(value))
        for e in found if e.entity.type == entity_type for batch in e.metrics
        for step, time_ns, value in zip(batch.steps, batch.times_ns, batch.values, strict=True)
    ]


def events(found: list[Envelope], kind: str) -> list[tuple[int, dict[str, Any]]]:
    return [(ev.time_ns, ev.data) for e in found for ev in e.events if ev.type == kind]


@dataclass
class Tracking:
    uri: str
    run_id: str
    experiment_id: str


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tracking]:
    """One autologged scikit-learn run (plus hand-logged history) in a fresh sqlite tracking store."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        experiment_id = mlflow.create_experiment("autolog", artifact_location=(root / "artifacts").as_uri())
        x, y = sklearn_datasets.make_classification(n_samples=120, n_features=4, random_state=0)
        mlflow.sklearn.autolog(log_datasets=True, silent=True)
        try:
            with mlflow.start_run(experiment_id=experiment_id, run_name="sk-run") as active:
                sklearn_linear.LogisticRegression(max_iter=200).fit(x, y)
                for step, value in enumerate(CUSTOM):
                    mlflow.log_metric("custom:loss", value, step=step * 10)
                for value in (3.0, 2.0, 1.0):
                    mlflow.log_metric("no_step", value)
        finally:
            mlflow.sklearn.autolog(disable=True)
        yield Tracking(uri, active.info.run_id, experiment_id)
    finally:
        mlflow.set_tracking_uri(previous)


@pytest.fixture
def spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("TRACKSTREAM_KAFKA_BOOTSTRAP", "TRACKSTREAM_RUN_ID", "TORCHELASTIC_RUN_ID", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    spool_dir = tmp_path / "spool"
    monkeypatch.setenv("TRACKSTREAM_SPOOL_DIR", str(spool_dir))
    return spool_dir


def test_every_point_of_every_history_arrives_with_its_step_time_and_value(tracking: Tracking, spool: Path) -> None:
    client = mlflow.MlflowClient(tracking_uri=tracking.uri)
    source = client.get_run(tracking.run_id)
    assert len(source.data.metrics) >= 5
    run = import_mlflow_run(tracking.run_id, project="imports", tracking_uri=tracking.uri)
    assert run.id == f"mlflow-{tracking.run_id}"
    assert run.closed
    got = rows(envelopes(spool))
    expected = []
    for key in source.data.metrics:
        history = sorted(client.get_metric_history(tracking.run_id, key), key=lambda m: (m.step, m.timestamp))
        renumber = key == "no_step"
        expected += [(run.id, to_metric_name(key), 0, i if renumber else m.step, m.timestamp * 1_000_000,
                      bits(m.value)) for i, m in enumerate(history)]
    assert sorted(got) == sorted(expected)
    custom = [r for r in got if r[1] == to_metric_name("custom:loss")]
    assert [r[3] for r in custom] == [0, 10, 20, 30, 40, 50]
    values = [struct.unpack("<d", struct.pack("<Q", r[5]))[0] for r in custom]
    assert math.isnan(values[2])
    assert [values[i] for i in (0, 1, 4, 5)] == [CUSTOM[i] for i in (0, 1, 4, 5)]  # inf: as MLflow stored it


def test_params_tags_name_and_lifecycle_times_come_from_mlflow(tracking: Tracking, spool: Path) -> None:
    source = mlflow.MlflowClient(tracking_uri=tracking.uri).get_run(tracking.run_id)
    import_mlflow_run(tracking.run_id, project="imports", tracking_uri=tracking.uri)
    found = envelopes(spool)
    ((started_ns, started),) = events(found, "run_started")
    assert started["params"] == source.data.params
    assert started["name"] == "sk-run"
    assert started_ns == source.info.start_time * 1_000_000
    tags = started["tags"]
    assert {k: tags[k] for k in source.data.tags} == source.data.tags
    assert tags["mlflow.run_id"] == tracking.run_id
    assert tags[f"{SOURCE_NAME_TAG_PREFIX}{to_metric_name('custom:loss')}"] == "custom:loss"
    assert tags["mlflow.renumbered_steps"] == "no_step"
    assert events(found, "run_finished") == [(source.info.end_time * 1_000_000, {"status": "completed"})]


def test_reimport_lands_on_the_same_rows(tracking: Tracking, spool: Path) -> None:
    import_mlflow_run(tracking.run_id, project="imports", tracking_uri=tracking.uri)
    first = envelopes(spool)
    import_mlflow_run(tracking.run_id, project="imports", tracking_uri=tracking.uri)
    both = envelopes(spool)
    second = both[len(first):]
    assert rows(second)
    assert sorted(rows(second)) == sorted(rows(first))
    keys = {(r[0], r[1], r[2], r[3]) for r in rows(both)}
    assert len(keys) == len(rows(first)), "one row per dedup key (entity, metric, rank, step)"
    for kind in ("run_started", "run_finished"):
        assert events(second, kind) == events(first, kind)


def test_from_mlflow_run_describes_the_logged_model(tracking: Tracking) -> None:
    spec = from_mlflow_run(tracking.run_id, tracking_uri=tracking.uri)
    source = mlflow.MlflowClient(tracking_uri=tracking.uri).get_run(tracking.run_id)
    assert spec["flavor"] == spec["framework"] == "sklearn"
    assert (Path(spec["source"]) / "MLmodel").is_file()
    assert spec["model_uri"].startswith(("models:/", "runs:/"))
    assert spec["parameters"] == source.data.params
    assert spec["metrics"] == source.data.metrics
    assert spec["signature"]["inputs"]
    assert spec["signature"]["outputs"]
    assert "sklearn_version" in spec["flavor_config"]
    assert isinstance(spec["model_config"], dict)
    assert {d["context"] for d in spec["input_datasets"]} >= {"train"}
    assert all(d["digest"] and d["name"] for d in spec["input_datasets"])
    assert spec["mlflow_run_id"] == tracking.run_id


def test_model_metrics_are_the_latest_values(tracking: Tracking) -> None:
    metrics = get_mlflow_model_metrics(tracking.run_id, tracking_uri=tracking.uri)
    source = mlflow.MlflowClient(tracking_uri=tracking.uri).get_run(tracking.run_id)
    assert metrics == source.data.metrics
    assert metrics["custom:loss"] == CUSTOM[-1]
    assert metrics["no_step"] == 1.0


def test_import_with_model_logs_final_metrics_on_the_model(tracking: Tracking, spool: Path) -> None:
    import_mlflow_run(tracking.run_id, project="imports", model="classifier", tracking_uri=tracking.uri)
    found = envelopes(spool)
    model_points = {e.entity.id for e in found if e.entity.type == "model"}
    assert model_points == {"classifier"}
    single = {b.name: (b.kind, b.steps[0], b.values[0]) for e in found if e.entity.type == "model" for b in e.metrics}
    latest = get_mlflow_model_metrics(tracking.run_id, tracking_uri=tracking.uri)
    assert {name: value for name, (_k, _s, value) in single.items()} == {
        to_metric_name(k): v for k, v in latest.items()
    }
    assert all(kind == "single" for kind, _s, _v in single.values())
    assert single[to_metric_name("custom:loss")][1] == 50
    ((_t, started),) = events(found, "run_started")
    assert started["tags"]["model.flavor"] == "sklearn"
    assert started["tags"]["model.name"] == "classifier"


def test_a_running_mlflow_run_is_imported_and_left_running(tracking: Tracking, spool: Path) -> None:
    client = mlflow.MlflowClient(tracking_uri=tracking.uri)
    live = client.create_run(tracking.experiment_id)
    try:
        client.log_metric(live.info.run_id, "partial", 0.5, step=1)
        run = import_mlflow_run(live.info.run_id, project="imports", tracking_uri=tracking.uri)
    finally:
        client.set_terminated(live.info.run_id)
    found = envelopes(spool)
    assert run.closed
    assert [r[1:4] for r in rows(found)] == [("partial", 0, 1)]
    assert events(found, "run_finished") == []


def test_mlflow_autolog_imports_the_block_run_when_it_exits(
    tracking: Tracking, spool: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", tracking.experiment_id)
    x, y = sklearn_datasets.make_classification(n_samples=60, n_features=4, random_state=1)
    previous = mlflow.get_tracking_uri()
    try:
        with mlflow_autolog("auto", flavor="sklearn", tracking_uri=tracking.uri, silent=True) as session:
            search = sklearn_model_selection.GridSearchCV(
                sklearn_linear.LogisticRegression(max_iter=100), {"C": [0.5, 2.0]}, cv=2,
            )
            search.fit(x, y)
            assert session.runs == []
    finally:
        mlflow.set_tracking_uri(previous)
    assert mlflow.active_run() is None
    parent, *children = session.runs
    assert (parent.id, parent.project) == (f"mlflow-{session.mlflow_run_id}", "auto")
    assert len(children) == 2, "one child run per parameter candidate"
    found = envelopes(spool)
    started = {e.entity.id: ev.data for e in found for ev in e.events if ev.type == "run_started"}
    assert started[parent.id]["params"]["best_C"] in ("0.5", "2.0")
    assert sorted(started[child.id]["params"]["C"] for child in children) == ["0.5", "2.0"]
    assert {r[1] for r in rows(found) if r[0] == parent.id} >= {"training_score", "best_cv_score"}
    assert [data for _t, data in events(found, "run_finished")] == [{"status": "completed"}] * 3


def _fail_inside_autolog(uri: str, sessions: list[Any]) -> None:
    with mlflow_autolog("auto", tracking_uri=uri) as session:
        sessions.append(session)
        mlflow.log_metric("before_failure", 1.0)
        raise RuntimeError("boom")


def test_mlflow_autolog_marks_a_failed_block(tracking: Tracking, spool: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", tracking.experiment_id)
    previous = mlflow.get_tracking_uri()
    try:
        with pytest.raises(RuntimeError, match="boom"):
            _fail_inside_autolog(tracking.uri, sessions := [])
    finally:
        mlflow.set_tracking_uri(previous)
    assert len(sessions[0].runs) == 1
    found = envelopes(spool)
    assert [data for _t, data in events(found, "run_finished")] == [{"status": "failed"}]
    assert [r[1] for r in rows(found)] == ["before_failure"]


_QUERY_SCRIPT = """
import json, sys
import trackstream as ts
from trackstream.integrations import import_mlflow_run
uri, run_id = sys.argv[1], sys.argv[2]
first = import_mlflow_run(run_id, project="e2e", tracking_uri=uri)
before = {"runs": ts.runs("e2e"), "metrics": first.metrics}
again = import_mlflow_run(run_id, project="e2e", tracking_uri=uri)
after = {"runs": ts.runs("e2e"), "metrics": again.metrics}
rows = ts.sql("SELECT count() FROM points FINAL WHERE entity_id = {id:String}", {"id": first.id})
print(json.dumps({"before": before, "after": after, "rows": rows[0][0]}, default=str))
"""


def _query_after_two_imports(tracking: Tracking, tmp_path: Path) -> dict[str, Any]:
    """Import twice and read back through the query side, in a child process (chDB is one store per process)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACKSTREAM_", "MLFLOW_"))}
    env.update(TRACKSTREAM_SPOOL_DIR=str(tmp_path / "spool"), TRACKSTREAM_DATA_DIR=str(tmp_path / "data"))
    done = subprocess.run([sys.executable, "-c", _QUERY_SCRIPT, tracking.uri, tracking.run_id], env=env,
                          capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture(scope="module")
def queried(tracking: Tracking, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    pytest.importorskip("chdb")
    return _query_after_two_imports(tracking, tmp_path_factory.mktemp("e2e"))


def test_query_side_shows_the_imported_run_once_with_every_point(tracking: Tracking, queried: dict[str, Any]) -> None:
    client = mlflow.MlflowClient(tracking_uri=tracking.uri)
    source = client.get_run(tracking.run_id)
    histories = {key: client.get_metric_history(tracking.run_id, key) for key in source.data.metrics}
    for phase in ("before", "after"):
        (run,) = queried[phase]["runs"]
        assert run["id"] == f"mlflow-{tracking.run_id}"
        assert run["status"] == "completed"
        assert run["params"] == source.data.params
        metrics = queried[phase]["metrics"]
        for key, history in histories.items():
            values = [m.value for m in sorted(history, key=lambda m: (m.step, m.timestamp))]
            got = metrics[to_metric_name(key)]
            assert repr(got) == repr(values[0] if len(values) == 1 else values), key
    assert json.dumps(queried["before"]["metrics"]) == json.dumps(queried["after"]["metrics"])
    assert queried["rows"] == sum(len(h) for h in histories.values())


def test_query_side_summary_count_is_unchanged_by_a_reimport(queried: dict[str, Any]) -> None:
    (before,) = queried["before"]["runs"]
    (after,) = queried["after"]["runs"]
    assert before["metrics"]
    assert all(v["count"] >= 1 for v in before["metrics"].values())
    assert {k: v["count"] for k, v in after["metrics"].items()} == {k: v["count"] for k, v in before["metrics"].items()}


def test_a_history_that_repeats_steps_keeps_them_and_the_later_write_wins(tmp_path: Path) -> None:
    """A resumed MLflow run logged loss at steps 0..149, then 100..199: imported, steps 100..149 read the later
    values (read back in another process, through the store)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("resumed")).info.run_id
    for step in range(150):
        client.log_metric(run_id, "loss", float(step), timestamp=1_700_000_000_000 + step, step=step)
    for step in range(100, 200):
        client.log_metric(run_id, "loss", 1000.0 + step, timestamp=1_700_000_100_000 + step, step=step)
    client.set_terminated(run_id)
    env = {**os.environ, "TRACKSTREAM_SPOOL_DIR": str(tmp_path / "spool"),
           "TRACKSTREAM_DATA_DIR": str(tmp_path / "data")}
    for name in ("TRACKSTREAM_KAFKA_BOOTSTRAP", "TRACKSTREAM_CLICKHOUSE_URL"):
        env.pop(name, None)
    script = textwrap.dedent(f"""
        import json, trackstream as ts
        from trackstream.integrations import import_mlflow_run
        run = import_mlflow_run({run_id!r}, project="imports", tracking_uri={uri!r})
        print(json.dumps([(h["step"], h["value"]) for h in ts.get_run("imports", run.id).history("loss")]))
    """)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got == [[s, float(s)] for s in range(100)] + [[s, 1000.0 + s] for s in range(100, 200)]
