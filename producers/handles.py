"""The public handles: :class:`Run` and :class:`Model`, and the functions that open them.

A handle is a :class:`~trackstream.producers.buffer.MetricBuffer` (the log calls are its methods, so a call costs no
extra dispatch) plus identity, configuration and lifecycle. Transport keywords of :func:`start_run` and
:func:`model` are the fields of :class:`~trackstream.producers.config.ProducerConfig`. With ``durability="spool"``
they return a :class:`SpoolRun` / :class:`SpoolModel`, whose log calls are also journaled so that a SIGKILL loses
nothing (:mod:`.journaled`); the memory-mode classes do not pay for it.
"""

from __future__ import annotations

import os
import time
import uuid
from types import TracebackType
from typing import Any

import orjson

from trackstream.producers import runtime
from trackstream.producers.buffer import POINT_BYTES, MetricBuffer, check_time
from trackstream.producers.config import ProducerConfig, resolve_config
from trackstream.producers.errors import TrackstreamError
from trackstream.producers.journaled import JournaledBuffer
from trackstream.producers.readback import read_backend
from trackstream.schemas import EntityRef, Event, model_entity_id
from trackstream.schemas.envelope import RUN_STATUSES
from trackstream.schemas.limits import (
    NAME_MAX,
    PARAMS_BYTES_MAX,
    RUN_NAME_MAX,
    TAG_VALUE_MAX,
    mapping_problem,
    rank_problem,
)


def _env_int(value: int | None, name: str, default: int) -> int:
    if value is not None:
        return int(value)
    raw = os.environ.get(name)
    try:
        return int(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None


def check_params(params: Any) -> dict[str, Any]:
    """Params as a JSON-ready dict with str keys, within the limits of docs/wire-format.md.

    Raises ValueError naming the offending key: a key that is not a str of 1-250 characters, a value orjson
    cannot encode, nesting deeper than 32 levels, or more than 256 KiB once encoded.
    """
    if params is None:
        return {}
    problem = mapping_problem("params", params)
    if problem is not None:
        raise ValueError(problem)
    out: dict[str, Any] = {}
    for key, value in params.items():
        try:
            orjson.dumps(value)
        except TypeError:
            raise ValueError(f"param {key!r}: {type(value).__name__} is not JSON-serializable") from None
        out[key] = value
    if len(orjson.dumps(out)) > PARAMS_BYTES_MAX:
        raise ValueError(f"params are larger than {PARAMS_BYTES_MAX} bytes once encoded")
    return out


def check_tags(tags: Any) -> dict[str, str]:
    """Tags as str -> str (numbers are converted); keys of 1-250 characters, values of at most 8,000, 256 KiB in all.

    Raises ValueError naming the tag for containers, None, and anything past a limit.
    """
    if tags is None:
        return {}
    problem = mapping_problem("tags", tags)
    if problem is not None:
        raise ValueError(problem)
    out: dict[str, str] = {}
    for key, value in tags.items():
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError(f"tag {key!r}: value must be a str or number, got {type(value).__name__}")
        text = str(value)
        if len(text) > TAG_VALUE_MAX:
            raise ValueError(f"tag {key!r}: value is {len(text)} characters long, at most {TAG_VALUE_MAX}")
        out[key] = text
    if len(orjson.dumps(out)) > PARAMS_BYTES_MAX:
        raise ValueError(f"tags are larger than {PARAMS_BYTES_MAX} bytes once encoded")
    return out


def _check_identity(what: str, value: Any, *, limit: int = NAME_MAX) -> str:
    """``value`` as a non-empty str of at most ``limit`` characters, else ValueError naming ``what``."""
    if not isinstance(value, str) or not value or len(value) > limit:
        raise ValueError(f"{what} must be a non-empty str of at most {limit} characters, got {str(value)[:80]!r}")
    return value


def _rank_and_world_size(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Rank and world size (keywords, else ``RANK``/``WORLD_SIZE``).

    Raises ValueError unless ``0 <= rank < world_size <= 2**24``.
    """
    checked = _env_int(rank, "RANK", 0), _env_int(world_size, "WORLD_SIZE", 1)
    problem = rank_problem(*checked)
    if problem is not None:
        raise ValueError(problem)
    return checked


class _Handle(MetricBuffer):
    """What runs and models share: identity, config, flush and read-back."""

    def __init__(self, entity: EntityRef, config: ProducerConfig, rank: int, world_size: int) -> None:
        super().__init__(f"{entity.type} {entity.project}/{entity.id}")
        self.entity = entity
        self.config = config
        self.rank = rank
        self.world_size = world_size
        self._owner_pid = os.getpid()
        self.point_cap = self._series_cap = max(1024, config.max_buffer_bytes // 4 // POINT_BYTES)
        self.on_full = _relieve

    @property
    def project(self) -> str:
        return self.entity.project

    @property
    def id(self) -> str:
        return self.entity.id

    @property
    def producer_id(self) -> str:
        """The id of the producer incarnation delivering this handle's envelopes."""
        return runtime.flusher().pipeline(self.config).producer_id

    def flush(self, timeout_s: float | None = None, *, acknowledged: bool = False) -> None:
        """Block until everything logged so far was acknowledged by Kafka or written to the spool.

        ``acknowledged=True`` waits until Kafka acknowledged it, even what went through the spool while
        Kafka was away. Raises :class:`~trackstream.producers.errors.FlushTimeoutError` (retriable) after
        ``timeout_s``; the data stays queued and is still delivered.
        """
        runtime.flusher().flush(timeout_s, [self.config], acknowledged=acknowledged)

    @property
    def metrics(self) -> dict[str, float | list[float]]:
        """``{key: number | list}`` as ingested so far (docs/metrics.md; needs ``trackstream[query]``).

        Raises what the read raises (``StoreUnavailable``, ``StoreBusyError``, ``MissingDependencyError``;
        see :func:`trackstream.runs`) and ``FlushTimeoutError`` when the flush before it does not finish.
        """
        backend = read_backend()
        self.flush()
        return backend.entity_metrics(self.entity)

    def wait_ingested(self, timeout_s: float = 60.0) -> None:
        """Flush, then wait until the read side has ingested everything this producer sent here.

        Raises ``IngestTimeout`` (retriable) after ``timeout_s`` seconds, ``FlushTimeoutError`` when the flush
        does not finish, and what a read raises (see :func:`trackstream.runs`).
        """
        backend = read_backend()
        self.flush(timeout_s)
        producer_id, seq = runtime.flusher().last_seq(self.config, self.entity)
        if seq >= 0:
            backend.wait_ingested(self.entity, producer_id, seq, timeout_s=timeout_s)

    def _close(self, event: Event | None, timeout_s: float | None) -> None:
        if self.closed:
            return
        self.close_buffer(event)
        flusher = runtime.flusher()
        flusher.wake()
        flusher.flush(timeout_s, [self.config])

    def _close_at_exit(self, status: str) -> None:
        """Called by the exit hook: finish (owner process) or just stop accepting points."""
        raise NotImplementedError


class Run(_Handle):
    """A training run; all ranks of a distributed job log to the same run id."""

    def __init__(
        self, entity: EntityRef, config: ProducerConfig, *, name: str | None, rank: int, world_size: int,
    ) -> None:
        super().__init__(entity, config, rank, world_size)
        self.name = name

    def __repr__(self) -> str:
        return f"Run(project={self.project!r}, id={self.id!r}, name={self.name!r}, rank={self.rank})"

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None,
    ) -> None:
        self.finish(runtime.status_after(kind, value))

    def log_params(self, params: dict[str, Any]) -> None:
        """Record hyperparameters (JSON values; numbers stay numbers)."""
        self.add_event(Event("params", time.time_ns(), {"params": check_params(params)}))

    def set_tags(self, tags: dict[str, Any]) -> None:
        """Merge string tags into the run's tags (numbers become str); raises ValueError for a bad dict, name or value.

        Raises HandleClosedError once the run is finished or detached.
        """
        self.add_event(Event("tags", time.time_ns(), {"tags": check_tags(tags)}))

    def finish(
        self, status: str = "completed", *, timeout_s: float | None = None, ended_ns: int | None = None,
    ) -> None:
        """Flush and mark the run ended (``completed``, ``failed`` or ``killed``); later logs raise.

        ``ended_ns`` replaces the end time (for importing history); by default it is now.
        """
        if status not in RUN_STATUSES or status == "running":
            raise ValueError(f"status must be one of completed, failed, killed; got {status!r}")
        at = time.time_ns() if ended_ns is None else check_time(ended_ns)
        self._close(Event("run_finished", at, {"status": status}), timeout_s)

    def detach(self, *, timeout_s: float | None = None) -> None:
        """Flush and stop logging to this run without finishing it (it goes on elsewhere)."""
        self._close(None, timeout_s)

    def _close_at_exit(self, status: str) -> None:
        if os.getpid() == self._owner_pid and not self.closed:
            self.close_buffer(Event("run_finished", time.time_ns(), {"status": status}))


class Model(_Handle):
    """A model (``name`` or ``name:version``) that metrics such as accuracy are logged against."""

    def __repr__(self) -> str:
        return f"Model(project={self.project!r}, id={self.id!r})"

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, *, timeout_s: float | None = None) -> None:
        """Flush and stop accepting points."""
        self._close(None, timeout_s)

    def _close_at_exit(self, status: str) -> None:
        if not self.closed:
            self.close_buffer(None)


class SpoolRun(JournaledBuffer, Run):
    """A :class:`Run` with ``durability="spool"``: its log calls are journaled (see :mod:`.journaled`)."""


class SpoolModel(JournaledBuffer, Model):
    """A :class:`Model` with ``durability="spool"``: its log calls are journaled."""


def start_run(
    project: str, name: str | None = None, *, run_id: str | None = None, params: dict[str, Any] | None = None,
    tags: dict[str, Any] | None = None, rank: int | None = None, world_size: int | None = None,
    resume: bool = False, started_ns: int | None = None, config: ProducerConfig | None = None,
    **options: Any,
) -> Run:
    """Open a run and announce it (``run_started`` with name, params and tags, once per producer).

    The id comes from ``run_id``, else ``TRACKSTREAM_RUN_ID``, else torchrun's ``TORCHELASTIC_RUN_ID``,
    else a new one; rank and world size from ``RANK``/``WORLD_SIZE`` unless given. ``resume=True``
    continues an existing run: no ``run_started``, params and tags are recorded as updates.
    ``started_ns`` replaces the start time (for importing history). ``options``
    are :class:`~trackstream.producers.config.ProducerConfig` fields (``kafka_bootstrap``, ``spool_dir``, ...).

    Raises ValueError for a value past a limit (docs/wire-format.md: names of 1-250 characters, params and tags
    nested at most 32 levels, ``0 <= rank < world_size <= 2**24``), TypeError for an unknown option, and
    :class:`~trackstream.schemas.errors.ConfigError` for an invalid setting (naming its variable).
    """
    _check_project(project)
    resolved = resolve_config(config, **options)
    entity_id = run_id or os.environ.get("TRACKSTREAM_RUN_ID") or os.environ.get("TORCHELASTIC_RUN_ID")
    entity_id = _check_identity("run id", str(entity_id or uuid.uuid4().hex))
    if name is not None and (not isinstance(name, str) or len(name) > RUN_NAME_MAX):
        raise ValueError(f"run name must be a str of at most {RUN_NAME_MAX} characters, got {str(name)[:80]!r}")
    checked_params, checked_tags = check_params(params), check_tags(tags)
    checked_rank, checked_world_size = _rank_and_world_size(rank, world_size)
    run = (SpoolRun if resolved.durability == "spool" else Run)(
        EntityRef(project, "run", entity_id), resolved, name=name, rank=checked_rank, world_size=checked_world_size,
    )
    now = time.time_ns() if started_ns is None else check_time(started_ns)
    if resume:
        if checked_params:
            run.add_event(Event("params", now, {"params": checked_params}))
        if checked_tags:
            run.add_event(Event("tags", now, {"tags": checked_tags}))
    else:
        started = {"name": name or "", "params": checked_params, "tags": checked_tags}
        run.add_event(Event("run_started", now, started))
    runtime.flusher().register(run)
    runtime.install_sigterm_handler()
    return run


def model(
    project: str, name: str, *, version: str | int | None = None, config: ProducerConfig | None = None,
    rank: int | None = None, world_size: int | None = None, **options: Any,
) -> Model:
    """Open a handle on model ``name`` (or ``name:version``) of ``project`` for logging its metrics.

    Raises ValueError, TypeError and ConfigError as :func:`start_run` does.
    """
    _check_project(project)
    _check_identity("model name", name)
    entity_id = _check_identity("model id (name:version)", model_entity_id(name, version))
    resolved = resolve_config(config, **options)
    handle = (SpoolModel if resolved.durability == "spool" else Model)(
        EntityRef(project, "model", entity_id), resolved, *_rank_and_world_size(rank, world_size),
    )
    runtime.flusher().register(handle)
    runtime.install_sigterm_handler()
    return handle


def flush(timeout_s: float | None = None, *, acknowledged: bool = False) -> None:
    """Flush every open handle of this process (see :meth:`Run.flush`)."""
    current = runtime.current_flusher()
    if current is not None:
        current.flush(timeout_s, acknowledged=acknowledged)


def _relieve(handle: MetricBuffer) -> None:
    runtime.flusher().relieve(handle)


def _check_project(project: Any) -> None:
    _check_identity("project", project)


__all__ = ["Model", "Run", "TrackstreamError", "flush", "model", "start_run"]
