"""The query routes of the API app (mounted under ``/api/v1`` by :func:`trackstream.api.app.create_app`).

One ``POST`` per read method of ``trackstream.sinks.query.QueryService``; the JSON body names the method's
parameters (positional ones included), the answer is ``{"result": ...}`` in wire form (floats exact, see
:mod:`trackstream.api.wire`), and a failure is ``{"error": {"type", "message", "retriable", "code"}}``: 400 for
bad input, 503 when trying again later may succeed, 422 when the body does not match the route's schema (type
``TypeError``, as a Python call with wrong arguments would raise). No input answers 500.

Needs the ``server`` extra (FastAPI, pydantic): imported by ``create_app`` only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final, Literal

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from trackstream.api.wire import from_wire, to_wire
from trackstream.schemas import EntityRef
from trackstream.schemas.errors import TrackstreamError, error_payload

log = logging.getLogger(__name__)

JSON: Final = "application/json"


# -- request bodies: the service's parameters, by name ------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Entity(_Body):
    """A run or a model (``name`` or ``name:version``) in a project."""

    project: str
    type: Literal["run", "model"]
    id: str

    def ref(self) -> EntityRef:
        return EntityRef(project=self.project, type=self.type, id=self.id)


class CompareBody(_Body):
    project: str
    metric: str
    agg: str = Field("last", description="last, min, max, mean or first")
    by: list[str] | str | None = Field(None, description="param names to group runs by")
    runs: list[str] | None = Field(None, description="only these entity ids")
    entity_type: str = Field("run", description="run or model")


class CurvesBody(_Body):
    project: str
    runs: list[str] | str = Field(description="entity ids (one id: a string)")
    metric: str
    points: int = Field(1000, description="at most this many buckets per run (>= 1)")
    entity_type: str = Field("run", description="run or model")
    step_from: int | None = Field(None, description="only steps from this one (inclusive): a zoom")
    step_to: int | None = Field(None, description="only steps up to this one (inclusive)")


class RunsBody(_Body):
    project: str
    entity_type: str = Field("run", description="run or model")
    runs: list[str] | None = Field(None, description="only these entity ids (ids not stored are left out)")
    status: list[str] | str | None = Field(None, description="only runs with this status (or one of these)")
    params: dict[str, Any] | None = Field(None, description="only runs whose params hold these values")
    tags: dict[str, str] | None = Field(None, description="only runs whose tags hold these values")
    order_by: str | None = Field(None, description="'<metric>.<last|min|max|count|last_step>', '-' descends")
    limit: int | None = Field(None, ge=0, description="at most this many runs")


class RunsTableBody(_Body):
    project: str
    entity_type: str = Field("run", description="run or model")
    search: str | None = Field(None, description="words that must all occur in name, id, tags or key=value params")
    status: list[str] | None = Field(None, description="only these statuses")
    filters: list[dict[str, Any]] | None = Field(None, description="[{field, value}]: substring of a field's text")
    sort: list[dict[str, Any]] | None = Field(None, description="[{field, dir}]: the first is the main key")
    page: int = Field(1, ge=1, description="the page, from 1")
    size: int = Field(100, ge=1, le=1000, description="rows per page")
    listing: str | None = Field(None, description="page 1's `listing`: later pages read the same rows")


class AlertsBody(_Body):
    project: str
    entity_type: str = Field("run", description="run or model")
    runs: list[str] | None = Field(None, description="only the alerts of these entity ids")
    state: Literal["firing", "resolved"] | None = Field(
        None, description="firing: only the rules firing now (their newest transition per run); resolved: only "
                          "those that resolved since")
    since_ns: int | None = Field(None, ge=-(2**63), le=2**63 - 1,
                                 description="only transitions after this time (ns since the epoch)")
    limit: int = Field(1000, ge=1, le=2**63 - 1, description="at most this many rows, the newest")


class SqlBody(_Body):
    query: str = Field(description="one read-only statement with {name:Type} placeholders")
    parameters: dict[str, Any] | None = Field(
        None, description='values of the placeholders; a non-finite float as {"$f64": <IEEE-754 bits>}')


class EntityBody(_Body):
    project: str
    entity_id: str = Field(description="the run's id, or the model's name or name:version")
    entity_type: Literal["run", "model"] = "run"


class HistoryBody(EntityBody):
    metric: str
    ranks: bool = Field(False, description="every rank's rows (with their rank) instead of the per-step mean")


class ProjectsBody(_Body):
    entity_type: Literal["run", "model"] = "run"


class EntityMetricsBody(_Body):
    entity: Entity


class WaitIngestedBody(_Body):
    entity: Entity
    producer_id: str
    seq: int
    timeout_s: float = Field(60.0, ge=0, le=86_400, allow_inf_nan=False)


# -- answers ---------------------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    type: str = Field(description="the error's class, e.g. QueryError, StoreUnavailable, TypeError")
    message: str
    retriable: bool = Field(description="true when trying again later may succeed (503)")
    code: int | None = Field(description="ClickHouse's error code, when ClickHouse raised it")


class ErrorBody(BaseModel):
    error: ErrorDetail


class RowsResult(BaseModel):
    result: list[dict[str, Any]]


class CurvesResult(BaseModel):
    result: dict[str, list[dict[str, Any]]]


class SqlResult(BaseModel):
    result: list[list[Any]]


class MetricsResult(BaseModel):
    result: dict[str, Any]


class NamesResult(BaseModel):
    result: list[str]


class NoResult(BaseModel):
    result: None


class Health(BaseModel):
    status: Literal["ok"]


ERROR_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    400: {"model": ErrorBody, "description": "bad arguments or SQL (not retriable)"},
    401: {"model": ErrorBody, "description": "no token, or a wrong one (Authorization: Bearer <token>)"},
    403: {"model": ErrorBody, "description": "a foreign Host or Origin, or a body that is not application/json"},
    422: {"model": ErrorBody, "description": "the body does not match the route's schema (type TypeError)"},
    503: {"model": ErrorBody, "description": "the store is unavailable or a wait timed out (retriable)"},
}


def error_response(exc: BaseException, what: str) -> Response:
    """``{"error": ...}`` for ``exc`` raised by ``what``: 503 when retriable, else 400."""
    payload = error_payload(exc)
    expected = isinstance(exc, TrackstreamError | TypeError | ValueError | LookupError)
    if expected:
        log.debug("%s failed: %s", what, payload["type"], exc_info=True)
    else:
        log.warning("%s failed unexpectedly", what, exc_info=True)
    return error_json(503 if payload["retriable"] else 400, payload)


def error_json(status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps({"error": payload}), status_code=status, media_type=JSON, headers=headers)


def answer(call: Callable[[], Any], what: str) -> Response:
    """``{"result": ...}`` with the value ``call`` returns, in wire form; its error as :func:`error_response`."""
    try:
        body = orjson.dumps({"result": to_wire(call())}, default=str,
                            option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY)
    except Exception as exc:
        return error_response(exc, what)
    return Response(body, media_type=JSON)


# -- routers ---------------------------------------------------------------------------------------------------


def query_router(service: Any) -> APIRouter:
    """``POST /compare``, ``/curves``, ``/runs``, ``/alerts``, ``/sql``, ``/entity_metrics``, ``/wait_ingested``, ...
    on ``service``.

    The endpoints are plain functions: FastAPI runs them in its thread pool, beside the event loop.
    """
    router = APIRouter(tags=["queries"], responses=ERROR_RESPONSES)

    @router.post("/compare", response_model=RowsResult, summary="One row per run, or per group of runs")
    def compare(body: CompareBody) -> Response:
        return answer(lambda: service.compare(body.project, body.metric, agg=body.agg, by=body.by, runs=body.runs,
                                              entity_type=body.entity_type), "compare")

    @router.post("/curves", response_model=CurvesResult, summary="Downsampled curves: min/max/avg/last per bucket")
    def curves(body: CurvesBody) -> Response:
        return answer(lambda: service.curves(body.project, body.runs, body.metric, points=body.points,
                                             entity_type=body.entity_type, step_from=body.step_from,
                                             step_to=body.step_to), "curves")

    @router.post("/runs", response_model=RowsResult, summary="Runs with status, params, tags and metric summaries")
    def runs(body: RunsBody) -> Response:
        return answer(lambda: service.runs(body.project, entity_type=body.entity_type, runs=body.runs,
                                           status=body.status,
                                           params=body.params, tags=body.tags, order_by=body.order_by,
                                           limit=body.limit), "runs")

    @router.post("/runs_table", response_model=MetricsResult,
                 summary="A page of the runs table: searched, filtered and sorted on the server")
    def runs_table(body: RunsTableBody) -> Response:
        return answer(lambda: service.runs_table(body.project, entity_type=body.entity_type, search=body.search,
                                                 status=body.status, filters=body.filters, sort=body.sort,
                                                 page=body.page, size=body.size, listing=body.listing),
                      "runs_table")

    @router.post("/alerts", response_model=RowsResult, summary="Alerts fired and resolved, newest first")
    def alerts(body: AlertsBody) -> Response:
        return answer(lambda: service.alerts(body.project, entity_type=body.entity_type, runs=body.runs,
                                             state=body.state, since_ns=body.since_ns, limit=body.limit), "alerts")

    @router.post("/sql", response_model=SqlResult, summary="One read-only SQL statement with bound parameters")
    def sql(body: SqlBody) -> Response:
        return answer(lambda: service.sql(body.query, from_wire(body.parameters)), "sql")

    @router.post("/entity", response_model=MetricsResult, summary="One run or model: status, params, tags, times")
    def entity(body: EntityBody) -> Response:
        return answer(lambda: service.entity(body.project, body.entity_id, entity_type=body.entity_type), "entity")

    @router.post("/history", response_model=RowsResult, summary="Every point of one series, in step order")
    def history(body: HistoryBody) -> Response:
        return answer(lambda: service.history(body.project, body.entity_id, body.metric,
                                              entity_type=body.entity_type, ranks=body.ranks), "history")

    @router.post("/sql_table", response_model=MetricsResult, summary="sql, with the result's column names")
    def sql_table(body: SqlBody) -> Response:
        return answer(lambda: service.sql_table(body.query, body.parameters), "sql_table")

    @router.post("/projects", response_model=NamesResult, summary="The projects holding runs (or models)")
    def projects(body: ProjectsBody) -> Response:
        return answer(lambda: service.projects(entity_type=body.entity_type), "projects")

    @router.post("/entity_metrics", response_model=MetricsResult, summary="The metrics of one run or model")
    def entity_metrics(body: EntityMetricsBody) -> Response:
        return answer(lambda: service.entity_metrics(body.entity.ref()), "entity_metrics")

    @router.post("/wait_ingested", response_model=NoResult,
                 summary="Return once a producer's envelope is queryable (503 IngestTimeout after timeout_s)")
    def wait_ingested(body: WaitIngestedBody) -> Response:
        return answer(lambda: service.wait_ingested(body.entity.ref(), body.producer_id, body.seq,
                                                    timeout_s=body.timeout_s), "wait_ingested")

    return router


def health_router() -> APIRouter:
    """``GET /health``: ``{"status": "ok"}`` while the app serves (authenticated like every route)."""
    router = APIRouter(tags=["service"], responses={k: v for k, v in ERROR_RESPONSES.items() if k in (401, 403)})

    @router.get("/health", response_model=Health, summary="The API is up")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return router


# -- errors the framework raises, in the same shape --------------------------------------------------------------


def _validation_message(exc: RequestValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
        problems.append(f"{where}: {error.get('msg', 'invalid')}")
    return "invalid arguments: " + "; ".join(problems)


def install_error_handlers(app: FastAPI) -> None:
    """Answer every framework error as ``{"error": ...}``: 422 for a body off the schema, 404/405 as such."""

    async def invalid(request: Request, exc: Exception) -> Response:
        message = _validation_message(exc) if isinstance(exc, RequestValidationError) else str(exc)
        return error_json(422, {"type": "TypeError", "message": message, "retriable": False, "code": None})

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
        headers = getattr(exc, "headers", None)
        kind = "LookupError" if status == 404 else "TrackstreamError"
        return error_json(status, {"type": kind, "message": f"{request.method} {request.url.path}: {detail}",
                                   "retriable": False, "code": None}, headers)

    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http_error)
