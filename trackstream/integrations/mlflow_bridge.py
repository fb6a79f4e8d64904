"""MLflow -> trackstream: describe a run's model, read its latest metrics, import its full history.

``mlflow`` is imported inside the functions (``import trackstream`` never loads it); without it they raise
:class:`~trackstream.integrations._common.MissingDependencyError` naming ``pip install 'trackstream[integrations]'``.

Re-import guarantee (:func:`import_mlflow_run`): the trackstream run id is ``mlflow-<mlflow run id>``, every
point keeps MLflow's step and timestamp (milliseconds, which is the resolution trackstream stores) and is
logged as rank 0, and the run's start/end events carry MLflow's start/end times. Importing the same, unchanged
MLflow run again therefore produces rows with the same (project, entity, metric, generation, rank, step) key,
time and value as the first import: the ``points`` table (a ReplacingMergeTree read with FINAL) shows each point
once, and params, tags, status and times come out the same. What a re-import does change: it is delivered by
another producer, so that producer appears in the run's producer list and the streaming running summary counts
its points again in ``count`` (last/min/max are unaffected). Points that MLflow still has are never duplicated.
Steps are kept as MLflow has them and points are logged in timestamp order, so where a history repeats a step (a
resumed MLflow run logging steps again) the later write wins, as for the SDK (write order). A metric MLflow logged
without steps (more than one point, every one at step 0) becomes a series in time order at steps 0..n-1, as the
SDK's step-less calls do, and its name is listed in the run tag ``mlflow.renumbered_steps``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from trackstream import producers
from trackstream.integrations import _sdk
from trackstream.integrations._common import IntegrationError, require, source_name_tags, to_metric_name
from trackstream.producers.handles import Run

log = logging.getLogger(__name__)

RUN_ID_PREFIX = "mlflow-"
_STATUS = {"FINISHED": "completed", "FAILED": "failed", "KILLED": "killed"}
_MS = 1_000_000


def _client(tracking_uri: str | None) -> Any:
    mlflow = require("mlflow")
    return mlflow.MlflowClient(tracking_uri=tracking_uri)


def trackstream_run_id(mlflow_run_id: str) -> str:
    """The deterministic trackstream run id of an imported MLflow run."""
    return f"{RUN_ID_PREFIX}{mlflow_run_id}"


def get_mlflow_model_metrics(run_id: str, *, tracking_uri: str | None = None) -> dict[str, float]:
    """The latest value of each metric of MLflow run ``run_id`` (MLflow's own choice: highest step, then time)."""
    run = _client(tracking_uri).get_run(run_id)
    return {key: float(value) for key, value in run.data.metrics.items()}


def from_mlflow_run(run_id: str, *, tracking_uri: str | None = None) -> dict[str, Any]:
    """What describes the model logged by MLflow run ``run_id``, for registering it.

    Keys: ``source`` (local path, or URI when remote, of the model's artifacts), ``model_uri``, ``framework`` and
    ``flavor`` (e.g. ``sklearn``), ``parameters`` and ``metrics`` (of the run), ``model_config`` (pyfunc model
    config, else {}), ``flavor_config`` (the flavor's MLmodel section), ``signature`` (``inputs``/``outputs``/
    ``params`` as MLflow JSON strings, or None), ``input_datasets`` (name, digest, source, schema, profile,
    context) and ``mlflow_run_id``. With no logged model, the model fields are None. Reads the MLmodel file
    only; the model itself is never loaded (no unpickling).
    """
    client = _client(tracking_uri)
    run = client.get_run(run_id)
    spec: dict[str, Any] = {
        "source": None, "model_uri": None, "framework": None, "flavor": None,
        "parameters": dict(run.data.params), "metrics": {k: float(v) for k, v in run.data.metrics.items()},
        "model_config": {}, "flavor_config": {}, "signature": None,
        "input_datasets": _datasets(run), "mlflow_run_id": run_id,
    }
    located = _model_location(client, run)
    if located is None:
        return spec
    model_uri, artifact_location = located
    spec["model_uri"], spec["source"] = model_uri, _local_path(artifact_location)
    info = require("mlflow.models").get_model_info(model_uri)
    flavors: dict[str, Any] = dict(info.flavors or {})
    flavor = next((name for name in flavors if name != "python_function"), None)
    spec["framework"] = spec["flavor"] = flavor or ("python_function" if flavors else None)
    spec["flavor_config"] = dict(flavors.get(flavor or "python_function") or {})
    spec["model_config"] = dict((flavors.get("python_function") or {}).get("model_config") or {})
    if info.signature is not None:
        spec["signature"] = info.signature.to_dict()
    return spec


def _model_location(client: Any, run: Any) -> tuple[str, str] | None:
    """(model URI, artifact location) of the run's first logged model: MLflow 3 logged models, else MLflow 2."""
    outputs = getattr(getattr(run, "outputs", None), "model_outputs", None) or []
    if outputs:
        logged = client.get_logged_model(outputs[0].model_id)
        return str(logged.model_uri), str(logged.artifact_location)
    history = run.data.tags.get("mlflow.log-model.history")
    if history:
        entries = json.loads(history)
        if entries:
            path = entries[0]["artifact_path"]
            return f"runs:/{run.info.run_id}/{path}", f"{run.info.artifact_uri.rstrip('/')}/{path}"
    return None


def _local_path(uri: str) -> str:
    parsed = urlparse(uri)
    return parsed.path if parsed.scheme in ("", "file") else uri


def _datasets(run: Any) -> list[dict[str, Any]]:
    inputs = getattr(run, "inputs", None)
    out = []
    for item in getattr(inputs, "dataset_inputs", None) or []:
        dataset = item.dataset
        context = next((t.value for t in item.tags if t.key == "mlflow.data.context"), None)
        out.append({
            "name": dataset.name, "digest": dataset.digest, "source_type": dataset.source_type,
            "source": dataset.source, "schema": dataset.schema, "profile": dataset.profile, "context": context,
        })
    return out


@dataclass(slots=True)
class _History:
    """One MLflow metric's full history, in timestamp order (``renumbered``: logged without steps)."""

    key: str
    steps: list[int]
    times_ns: list[int]
    values: list[float]
    renumbered: bool = False


def _history(client: Any, run_id: str, key: str) -> _History:
    points = sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp)  # stable: MLflow's order
    steps = [int(m.step) for m in points]
    stepless = len(steps) > 1 and not any(steps)
    return _History(
        key, list(range(len(steps))) if stepless else steps,
        [int(m.timestamp) * _MS for m in points], [float(m.value) for m in points], stepless,
    )


def import_mlflow_run(
    run_id: str, *, project: str, model: str | None = None, model_version: str | int | None = None,
    tracking_uri: str | None = None, timeout_s: float | None = None, **options: Any,
) -> Run:
    """Copy MLflow run ``run_id`` into trackstream run ``mlflow-<run_id>`` of ``project``; returns the Run.

    Copies the run name, params (MLflow's strings, as they are), tags (plus ``mlflow.run_id`` and
    ``mlflow.experiment_id``), the full history of every metric (each step, timestamp and value) and the
    status with MLflow's start and end times. A finished MLflow run is finished here; a running one is
    imported as it is so far and left running. With ``model="name"`` it also opens model ``name`` (or
    ``name:model_version``), logs each metric's latest value on it as a single value, and tags the run with
    the model's source, URI and flavor. ``options`` go to :func:`trackstream.start_run` (``spool_dir``,
    ``kafka_bootstrap``, ...). Idempotent: see the module docstring for exactly what a re-import changes.
    """
    client = _client(tracking_uri)
    source = client.get_run(run_id)
    info, data = source.info, source.data
    histories = [_history(client, run_id, key) for key in sorted(data.metrics)]
    names = {to_metric_name(h.key): h.key for h in histories}
    if len(names) != len(histories):
        raise IntegrationError(f"MLflow run {run_id}: two metric names map to the same trackstream name")
    tags = {**data.tags, "mlflow.run_id": run_id, "mlflow.experiment_id": str(info.experiment_id),
            **source_name_tags(names)}
    renumbered = sorted(to_metric_name(h.key) for h in histories if h.renumbered)
    if renumbered:
        tags["mlflow.renumbered_steps"] = ",".join(renumbered)
    spec = from_mlflow_run(run_id, tracking_uri=tracking_uri) if model is not None else None
    if spec is not None:
        tags.update({k: str(v) for k, v in (("model.name", model), ("model.source", spec["source"]),
                    ("model.uri", spec["model_uri"]), ("model.flavor", spec["flavor"])) if v is not None})
    run = _sdk.open_run(
        project, trackstream_run_id(run_id), name=info.run_name, params=dict(data.params), tags=tags,
        started_ns=int(info.start_time or 0) * _MS, **options,
    )
    try:
        for history in histories:
            _sdk.log_history(run, to_metric_name(history.key), history.steps, history.values, history.times_ns)
        if model is not None:
            _log_model_metrics(project, model, model_version, histories, **options)
    except BaseException:
        _sdk.detach(run, timeout_s=timeout_s)
        raise
    status = _STATUS.get(str(info.status))
    if status is None:
        _sdk.detach(run, timeout_s=timeout_s)
    else:
        ended = int(info.end_time) * _MS if info.end_time else None
        _sdk.finish(run, status, ended_ns=ended, timeout_s=timeout_s)
    return run


def _log_model_metrics(
    project: str, name: str, version: str | int | None, histories: list[_History], **options: Any,
) -> None:
    """Each metric's latest point (highest step, then time) as a single value on model ``name``."""
    handle = producers.model(project, name, version=version, rank=0, world_size=1, **options)
    try:
        for history in histories:
            if history.values:
                last = max(range(len(history.values)), key=lambda i: (history.steps[i], history.times_ns[i]))
                _sdk.log_single(handle, to_metric_name(history.key), history.values[last],
                                step=history.steps[last], time_ns=history.times_ns[last])
    finally:
        handle.close()


@dataclass(slots=True)
class AutologSession:
    """What :func:`mlflow_autolog` yields: the MLflow run of the block, and the trackstream runs once imported."""

    mlflow_run_id: str
    runs: list[Run] = field(default_factory=list)


@contextlib.contextmanager
def mlflow_autolog(
    project: str, *, flavor: str | None = None, model: str | None = None, tracking_uri: str | None = None,
    **autolog_kwargs: Any,
) -> Iterator[AutologSession]:
    """Turn MLflow autologging on for the block, then import what it logged into ``project``.

    When no MLflow run is active, the block runs inside a new MLflow run that ends with the block (``FAILED``
    if the block raises); otherwise autolog writes to the active run, which is imported as it is and left
    open. Child runs (e.g. of a hyperparameter search) are imported too. ``autolog_kwargs`` go to
    ``mlflow.autolog`` (e.g. ``log_datasets=True``), or to ``mlflow.<flavor>.autolog`` with ``flavor="sklearn"``
    etc.; autologging is disabled again when the block exits. Pass ``flavor`` when that flavor's autologging
    was configured before: MLflow lets an earlier ``mlflow.<flavor>.autolog(...)`` call (even ``disable=True``)
    take precedence over ``mlflow.autolog``. ``model`` is passed to :func:`import_mlflow_run` for the parent
    run. ``tracking_uri`` is set as MLflow's tracking URI (it stays set).
    """
    mlflow = require("mlflow")
    if tracking_uri is not None:
        mlflow.set_tracking_uri(tracking_uri)
    autolog = require(f"mlflow.{flavor}").autolog if flavor else mlflow.autolog
    owned = mlflow.active_run() is None
    active = mlflow.start_run() if owned else mlflow.active_run()
    session = AutologSession(active.info.run_id)
    autolog(**autolog_kwargs)
    status = "FINISHED"
    try:
        yield session
    except BaseException:
        status = "FAILED"
        raise
    finally:
        autolog(disable=True)
        if owned:
            mlflow.end_run(status=status)
        session.runs.extend(_import_family(session.mlflow_run_id, project, model, tracking_uri))


def _import_family(run_id: str, project: str, model: str | None, tracking_uri: str | None) -> list[Run]:
    client = _client(tracking_uri)
    parent = client.get_run(run_id)
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'", max_results=10_000,
    )
    imported = [import_mlflow_run(run_id, project=project, model=model, tracking_uri=tracking_uri)]
    imported += [import_mlflow_run(child.info.run_id, project=project, tracking_uri=tracking_uri)
                 for child in children]
    log.debug("imported %d MLflow run(s) into project %s", len(imported), project)
    return imported
