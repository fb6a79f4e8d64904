"""Reads that name what the store does not hold raise NotFoundError with the closest names, through the query
service and the CLI (exit code 2); nothing comes back silently empty."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_query_bruteforce import backend  # noqa: F401 - fixture

from trackstream import NotFoundError
from trackstream.schemas.envelope import EntityRef, MetricBatch
from trackstream.schemas.processed import EntityState, PointBlock
from trackstream.sinks.backend import Backend
from trackstream.sinks.query import QueryService
from trackstream.sinks.sink import Sink

T0 = 1_700_000_000_000_000_000


def fill(store: Backend) -> QueryService:
    sink = Sink(store)
    for index, (entity_id, name) in enumerate((("r1", "baseline"), ("r2", "wider"))):
        entity = EntityRef("vision", "run", entity_id)
        batch = MetricBatch("loss", "series", [0, 1], [T0, T0 + 1], [1.0 - index, 0.5])
        sink.write([PointBlock(entity, 0, f"prod-{entity_id}", 1, [batch], [0])],
                   entity_states=[EntityState(entity, name, "running", {"lr": 0.1, "batch_size": 32}, version=1)])
    return QueryService(backend=store)


def test_an_unknown_metric_names_the_closest(backend: Backend) -> None:  # noqa: F811
    service = fill(backend)
    with pytest.raises(NotFoundError, match="metric 'losss' not found in project 'vision'; did you mean 'loss'"):
        service.compare("vision", "losss")
    with pytest.raises(LookupError):  # a NotFoundError is a LookupError too
        service.compare("vision", "accuracy")


def test_an_unknown_project_names_the_closest(backend: Backend) -> None:  # noqa: F811
    service = fill(backend)
    with pytest.raises(NotFoundError, match="project 'vison' not found; did you mean 'vision'"):
        service.compare("vison", "loss")
    with pytest.raises(NotFoundError, match="project 'vison' not found"):
        service.runs("vison")


def test_unknown_run_ids_and_names_given_as_ids(backend: Backend) -> None:  # noqa: F811
    service = fill(backend)
    with pytest.raises(NotFoundError, match=r"'baseline' is the name of 'r1': pass ids"):
        service.compare("vision", "loss", runs=["baseline", "r2"])
    with pytest.raises(NotFoundError, match=r"run id\(s\) not found in project 'vision': 'r22'; did you mean 'r2'"):
        service.compare("vision", "loss", runs=["r22"])
    assert [row["id"] for row in service.compare("vision", "loss", runs=["r2"])] == ["r2"]


def test_a_by_param_no_run_has(backend: Backend) -> None:  # noqa: F811
    service = fill(backend)
    with pytest.raises(NotFoundError, match="'batchsize'; did you mean 'batch_size'"):
        service.compare("vision", "loss", by=["batchsize"])
    assert len(service.compare("vision", "loss", by=["lr"])) == 1


def test_the_cli_prints_the_message_and_exits_2(tmp_path: Path) -> None:
    script = (
        "import sys; from trackstream.sinks.chdb_backend import ChdbBackend; "
        "from test_query_notfound import fill; fill(ChdbBackend(sys.argv[1]))"
    )
    data = tmp_path / "data"
    subprocess.run([sys.executable, "-c", script, str(data)], check=True, timeout=120,
                   cwd=Path(__file__).parent)
    done = subprocess.run([sys.executable, "-m", "trackstream.cli", "compare", "vision", "losss", "--data-dir",
                           str(data)], capture_output=True, text=True, timeout=120, check=False,
                          env={"PATH": "/usr/bin:/bin", "TRACKSTREAM_SPOOL_DIR": str(tmp_path / "spool")})
    assert done.returncode == 2, done.stderr
    assert "did you mean 'loss'" in done.stderr


def test_curves_name_an_unknown_run_or_metric(backend: Backend) -> None:  # noqa: F811
    service = fill(backend)
    with pytest.raises(NotFoundError, match="'r22'; did you mean 'r2'"):
        service.curves("vision", ["r1", "r22"], "loss")
    with pytest.raises(NotFoundError, match="metric 'los' not found in project 'vision'; did you mean 'loss'"):
        service.curves("vision", ["r1"], "los")
    assert len(service.curves("vision", ["r1"], "loss", points=10)["r1"]) == 2


def test_a_run_whose_points_arrived_before_its_state_is_found(backend: Backend) -> None:  # noqa: F811
    service = fill(backend)
    batch = MetricBatch("loss", "series", [0], [T0], [2.0])
    Sink(backend).write([PointBlock(EntityRef("vision", "run", "r3"), 0, "prod-r3", 1, [batch], [0])])
    assert service.entity("vision", "r3")["status"] is None
    assert [row["id"] for row in service.compare("vision", "loss", runs=["r3"])] == ["r3"]
    assert [h["value"] for h in service.history("vision", "r3", "loss")] == [2.0]
