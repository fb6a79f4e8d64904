"""Schemathesis against the running query API, from the OpenAPI schema it publishes at /api/v1/openapi.json.

Every route, generated inputs (valid and invalid): with the token no answer is a server error and every answer
matches the schema (status code, content type, body) — the one 5xx allowed is the documented 503 of a
``wait_ingested`` that timed out; without the token every route answers 401.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from test_api_auth import open_service

from trackstream.api.server import QueryServer
from trackstream.sinks.query import QueryService

ROUTES = {("POST", f"/api/v1/{name}") for name in
          ("compare", "curves", "runs", "sql", "sql_table", "entity_metrics", "entity", "history",
           "wait_ingested", "projects", "alerts", "runs_table")} | {
              ("GET", "/api/v1/health")}
FUZZ = settings(max_examples=30, deadline=None, derandomize=True,
                suppress_health_check=list(HealthCheck))


class _QuickWaits(QueryService):
    """The real service, except that a generated ``timeout_s`` (up to a day) waits 50 ms at most."""

    def wait_ingested(self, *args: Any, timeout_s: float = 60.0, **kwargs: Any) -> None:
        super().wait_ingested(*args, timeout_s=min(timeout_s, 0.05), **kwargs)


@pytest.fixture(scope="module")
def api(chdb_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(URL, token) of a QueryServer over the real service on a database of its own."""
    service = open_service(chdb_store)
    quick = _QuickWaits(backend=service.backend)
    data_dir = tmp_path_factory.mktemp("api-schema")
    server = QueryServer(quick, data_dir)
    url = server.start()
    try:
        yield url, (data_dir / "api.token").read_text().strip()
    finally:
        server.stop()
        service.close()


@pytest.fixture(scope="module")
def api_schema(api: tuple[str, str]) -> Any:
    url, token = api
    return schemathesis.openapi.from_url(f"{url}/api/v1/openapi.json", headers={"Authorization": f"Bearer {token}"})


def no_server_error(ctx: Any, response: Any, case: Any) -> bool | None:
    """``not_a_server_error``, except the documented 503 of a wait that timed out (IngestTimeout, retriable)."""
    if response.status_code == 503 and case.path == "/api/v1/wait_ingested":
        error = response.json()["error"]
        assert (error["type"], error["retriable"]) == ("IngestTimeout", True), error
        return True
    return not_a_server_error(ctx, response, case)


def _fuzz(api_schema: Any, method: str, path: str, check: Callable[[Any], None]) -> None:
    """Run ``check`` on generated cases of one operation: valid inputs and invalid ones (negative mode)."""
    operation = api_schema[path][method]
    modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if method == "POST" else [])
    cases = st.one_of(*(operation.as_strategy(generation_mode=mode) for mode in modes))

    @FUZZ
    @given(case=cases)
    def run(case: Any) -> None:
        check(case)

    run()


def test_the_schema_covers_every_route(api_schema: Any) -> None:
    operations = {(op.method.upper(), op.path) for op in (result.ok() for result in api_schema.get_all_operations())}
    assert operations == ROUTES


@pytest.mark.parametrize(("method", "path"), sorted(ROUTES))
def test_with_the_token_no_route_fails_and_answers_conform(api_schema: Any, api: tuple[str, str], method: str,
                                                           path: str) -> None:
    url, token = api

    def check(case: Any) -> None:
        case.call_and_validate(base_url=url, headers={"Authorization": f"Bearer {token}"}, checks=[
            no_server_error, status_code_conformance, content_type_conformance, response_schema_conformance])

    _fuzz(api_schema, method, path, check)


@pytest.mark.parametrize(("method", "path"), sorted(ROUTES))
def test_without_the_token_every_route_answers_401(api_schema: Any, api: tuple[str, str], method: str,
                                                   path: str) -> None:
    url, _token = api

    def check(case: Any) -> None:
        case.headers = {name: value for name, value in (case.headers or {}).items()
                        if name.lower() != "authorization"}
        response = case.call(base_url=url)
        assert response.status_code == 401, (case.method, case.path, response.status_code, response.text[:300])
        assert not any(name.lower().startswith("access-control-") for name in response.headers)

    _fuzz(api_schema, method, path, check)
