"""The query API package without a server: what the client side imports, argument naming, allowed hosts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from trackstream.api.client import POSITIONAL, _arguments
from trackstream.api.owner import read_owner
from trackstream.api.server import allowed_hosts, is_loopback, netloc
from trackstream.schemas import EntityRef

SERVER_SIDE = ("fastapi", "starlette", "uvicorn", "pydantic", "anyio", "chdb", "pyarrow", "numpy", "trackstream.sinks")


def test_the_client_side_imports_only_the_standard_library_and_orjson() -> None:
    code = ("import sys, trackstream.api, trackstream.api.client, trackstream.api.owner, trackstream.api.wire\n"
            f"print(','.join(m for m in {SERVER_SIDE!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


@pytest.mark.parametrize("blocked", ["fastapi", "uvicorn"])
def test_serving_without_the_server_extra_names_it(blocked: str, tmp_path: Path) -> None:
    code = (f"import sys; sys.modules[{blocked!r}] = None\n"
            "from trackstream.api.server import QueryServer\n"
            "from trackstream.schemas.errors import MissingDependencyError\n"
            "try:\n"
            f"    QueryServer(object(), {str(tmp_path)!r})\n"
            "except MissingDependencyError as exc:\n"
            "    print(exc.extra, '|', exc)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    extra, _, message = result.stdout.partition(" | ")
    assert extra == "server", result.stdout + result.stderr
    assert "pip install 'trackstream[server]'" in message


def test_positional_arguments_are_sent_by_the_services_parameter_names() -> None:
    entity = EntityRef("p", "run", "r")
    assert _arguments("compare", ("p", "loss"), {"agg": "min"}) == {"project": "p", "metric": "loss", "agg": "min"}
    assert _arguments("wait_ingested", (entity, "pid", 3), {"timeout_s": 1.0}) == {
        "entity": {"project": "p", "type": "run", "id": "r"}, "producer_id": "pid", "seq": 3, "timeout_s": 1.0}
    assert _arguments("sql", ("SELECT {x:Float64}", {"x": float("nan")}), {})["parameters"]["x"] == {
        "$f64": 0x7FF8000000000000}
    assert set(POSITIONAL) == {"compare", "curves", "runs", "sql", "sql_table", "entity_metrics", "entity",
                               "history", "wait_ingested", "projects", "alerts", "runs_table"}
    with pytest.raises(TypeError, match="positional"):
        _arguments("runs", ("p", "extra"), {})
    with pytest.raises(TypeError, match="multiple values"):
        _arguments("runs", ("p",), {"project": "q"})


@pytest.mark.parametrize(("host", "expected"), [
    ("127.0.0.1", {"127.0.0.1:8000", "localhost:8000", "[::1]:8000"}),
    ("::1", {"127.0.0.1:8000", "localhost:8000", "[::1]:8000"}),
    ("localhost", {"127.0.0.1:8000", "localhost:8000", "[::1]:8000"}),
])
def test_loopback_binds_accept_the_loopback_names_only(host: str, expected: set[str]) -> None:
    assert is_loopback(host)
    assert set(allowed_hosts(host, 8000)) == expected


def test_other_binds_accept_their_address_and_this_machines_names() -> None:
    import socket

    hosts = set(allowed_hosts("0.0.0.0", 8000))
    assert {"0.0.0.0:8000", "127.0.0.1:8000", f"{socket.gethostname().lower()}:8000"} <= hosts
    assert "evil.example:8000" not in hosts
    specific = set(allowed_hosts("192.0.2.7", 8000))
    assert "192.0.2.7:8000" in specific
    assert "127.0.0.1:8000" not in specific  # a loopback name does not reach an address bound elsewhere
    assert not is_loopback("0.0.0.0")
    assert netloc("::", 1) == "[::]:1"


@pytest.mark.parametrize("record", [b"", b"{", b"[]", b'{"url": "http://x"}', b'{"url": "http://x", "pid": 0}',
                                    b'{"url": "http://x", "pid": -1}', b'{"url": "http://x", "pid": "abc"}',
                                    b'{"url": "http://x", "pid": 99999999999999999999}'])
def test_an_unusable_owner_record_means_no_owner(tmp_path: Path, record: bytes) -> None:
    (tmp_path / "owner.json").write_bytes(record)
    assert read_owner(tmp_path) is None


def test_no_owner_record_means_no_owner(tmp_path: Path) -> None:
    assert read_owner(tmp_path) is None
    assert read_owner(tmp_path / "missing") is None
