"""docker-compose.yml, the Dockerfile and .dockerignore cannot run here (no Docker engine).

The compose file is validated against the compose specification; the rest is read as text and checked for what
``docker compose up`` relies on: persistent Kafka data, one slim image per worker role, worker healthchecks,
credentials outside the URL, a small build context.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

REPO = Path(__file__).resolve().parents[2]
WORKERS = ("streams", "sink")
# Extras (and packages) a ClickHouse-server sink image must not install: chDB and the CLI's charts.
NOT_IN_SINK = {"embedded", "query", "cli", "all", "chdb", "matplotlib", "rich"}


def _check_jsonschema() -> str:
    found = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent)) or shutil.which("check-jsonschema")
    assert found, "check-jsonschema is part of the dev extra: pip install -e '.[dev]'"
    return found


def _compose() -> dict[str, Any]:
    import yaml

    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _services() -> dict[str, Any]:
    return _compose()["services"]


# --- Dockerfile: instructions grouped by stage ---------------------------------------------------------------------


def _instructions() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments and blank lines dropped."""
    joined: list[str] = []
    pending = ""
    for raw in (REPO / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return joined


def _stages() -> dict[str, tuple[str, list[str]]]:
    """Stage name -> (what it is FROM, its instructions)."""
    stages: dict[str, tuple[str, list[str]]] = {}
    current: list[str] | None = None
    for line in _instructions():
        match = re.match(r"FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?\s*$", line, re.IGNORECASE)
        if match:
            base, name = match.group(1), match.group(2) or f"<unnamed {len(stages)}>"
            assert name not in stages, f"two Dockerfile stages are called {name}"
            current = []
            stages[name] = (base, current)
        elif current is not None:
            current.append(line)
    return stages


def _lineage(target: str) -> list[str]:
    """Every instruction that ends up in ``target``: its own, its bases' and those of the stages it copies from."""
    stages = _stages()
    seen: set[str] = set()
    lines: list[str] = []

    def visit(name: str) -> None:
        if name in seen or name not in stages:
            return
        seen.add(name)
        base, own = stages[name]
        visit(base)
        for line in own:
            copied = re.match(r"COPY\s+.*--from=(\S+)", line, re.IGNORECASE)
            if copied:
                visit(copied.group(1))
        lines.extend(own)

    visit(target)
    return lines


def _final_setting(target: str, keyword: str) -> str | None:
    """The last ``keyword`` instruction along ``target``'s FROM chain (the one the image runs with)."""
    stages = _stages()
    name: str | None = target
    while name in stages:
        base, own = stages[name]
        for line in reversed(own):
            if line.upper().startswith(keyword + " "):
                return line[len(keyword) + 1:].strip()
        name = base
    return None


def _pip_installs(target: str) -> list[str]:
    return [line for line in _lineage(target) if re.search(r"\bpip\s+install\b", line)]


def _installed_extras(target: str) -> set[str]:
    extras: set[str] = set()
    for line in _pip_installs(target):
        for group in re.findall(r"\[([^\]]*)\]", line):
            extras |= {item.strip() for item in group.split(",") if item.strip()}
    return extras


# --- .dockerignore, with Docker's rules: last matching pattern wins, a pattern matching a parent covers its files ---


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i:end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def _dockerignore_excludes(path: str) -> bool:
    rules = []
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        rules.append((negated, _pattern_regex(os.path.normpath(line.lstrip("!").strip()).lstrip("/"))))
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negated, regex in rules:
        if any(regex.match(prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


# --- compose: validation -------------------------------------------------------------------------------------------


def test_compose_file_matches_the_compose_spec() -> None:
    result = subprocess.run(
        [_check_jsonschema(), "--builtin-schema", "vendor.compose-spec", str(REPO / "docker-compose.yml")],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_validation_rejects_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  kafka:\n    image: 42\n    ports: nine\n")
    result = subprocess.run(
        [_check_jsonschema(), "--builtin-schema", "vendor.compose-spec", str(broken)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode != 0


def test_compose_runs_the_workers_from_the_repo_dockerfile() -> None:
    services = _services()
    assert {"kafka", "clickhouse", *WORKERS} <= set(services)
    assert (REPO / "Dockerfile").exists()
    assert services["streams"]["command"][:2] == ["streams", "worker"]
    assert services["sink"]["command"] == ["sink", "worker"]
    for name in ("kafka", "clickhouse"):
        assert "healthcheck" in services[name]


# --- compose: Kafka keeps its data ---------------------------------------------------------------------------------


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Target path -> source of each volume of a service (short or long syntax)."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            mounts[rest.split(":")[0]] = source
        else:
            mounts[volume["target"]] = volume.get("source", "")
    return mounts


def test_kafka_log_dirs_are_on_a_named_volume() -> None:
    compose = _compose()
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:"), "KAFKA_LOG_DIRS is the apache/kafka image's variable"
    log_dirs = str(kafka["environment"]["KAFKA_LOG_DIRS"]).split(",")
    mounts = _mounts(kafka)
    for log_dir in log_dirs:
        covering = [target for target in mounts if log_dir == target or log_dir.startswith(target.rstrip("/") + "/")]
        assert covering, f"Kafka log dir {log_dir} is on no volume: {mounts}"
        assert mounts[covering[0]] in compose.get("volumes", {}), "a named volume outlives the container"


def test_clickhouse_data_is_on_a_named_volume() -> None:
    compose = _compose()
    assert _mounts(compose["services"]["clickhouse"]).get("/var/lib/clickhouse") in compose["volumes"]


# --- compose: one build target per worker, slim ---------------------------------------------------------------------


@pytest.mark.parametrize("worker", WORKERS)
def test_each_worker_builds_its_own_dockerfile_stage(worker: str) -> None:
    build = _services()[worker]["build"]
    assert isinstance(build, dict), "build needs a target"
    assert build.get("context", ".") in (".", "./")
    assert build.get("dockerfile", "Dockerfile") == "Dockerfile"
    target = build["target"]
    assert target in _stages(), f"no `FROM ... AS {target}` in the Dockerfile (stages: {sorted(_stages())})"
    assert _pip_installs(target), f"stage {target} installs nothing"
    assert "--no-cache-dir" in " ".join(_pip_installs(target)) or "PIP_NO_CACHE_DIR=1" in " ".join(_lineage(target))


def test_the_sink_image_installs_no_chdb_and_no_charts() -> None:
    target = _services()["sink"]["build"]["target"]
    extras = _installed_extras(target)
    assert "sinks" in extras, extras
    assert not extras & NOT_IN_SINK, extras
    for line in _pip_installs(target):
        words = set(re.findall(r"[A-Za-z][\w.-]*", line.lower()))
        assert not words & NOT_IN_SINK, line


def test_the_streams_image_installs_the_stream_worker_only() -> None:
    extras = _installed_extras(_services()["streams"]["build"]["target"])
    assert "streams" in extras, extras
    assert not extras & (NOT_IN_SINK | {"sinks", "workers"}), extras


@pytest.mark.parametrize("worker", WORKERS)
def test_worker_images_run_trackstream_as_a_non_root_user(worker: str) -> None:
    target = _services()[worker]["build"]["target"]
    user = _final_setting(target, "USER")
    assert user, f"stage {target} runs as root"
    assert user.split(":")[0] not in ("root", "0"), user
    assert _final_setting(target, "ENTRYPOINT") == '["trackstream"]'
    base = _stages()[target][0]
    while base in _stages():
        base = _stages()[base][0]
    assert re.fullmatch(r"python:3\.1[12]-slim|\$\{PYTHON_IMAGE\}", base), base
    if base.startswith("$"):
        assert re.search(r"ARG PYTHON_IMAGE=python:3\.1[12]-slim\s*$", (REPO / "Dockerfile").read_text(), re.M)


# --- compose: healthchecks and start order ---------------------------------------------------------------------------


@pytest.mark.parametrize("worker", WORKERS)
def test_workers_have_a_healthcheck_and_wait_for_healthy_dependencies(worker: str) -> None:
    service = _services()[worker]
    check = service.get("healthcheck")
    assert check, f"{worker} has no healthcheck"
    assert not check.get("disable")
    assert check.get("test")
    assert check["test"][0] in ("CMD", "CMD-SHELL")
    assert not service.get("init"), "the healthcheck inspects PID 1, which `init: true` would make docker-init"
    needs = {"kafka"} | ({"clickhouse"} if worker == "sink" else set())
    depends = service["depends_on"]
    for dependency in needs:
        assert depends[dependency]["condition"] == "service_healthy", (worker, dependency)
        assert "healthcheck" in _services()[dependency]


def _run_worker_healthcheck(worker: str, proc: Path, bootstrap: str) -> subprocess.CompletedProcess[str]:
    test = _services()[worker]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], test
    assert test[4:] == ["/proc/1"], test
    env = {**os.environ, "TRACKSTREAM_KAFKA_BOOTSTRAP": bootstrap}
    return subprocess.run([sys.executable, "-c", test[3], str(proc)], capture_output=True, text=True,
                          env=env, check=False, timeout=30)


def _fake_proc(tmp_path: Path, argv: list[str], net: Path) -> Path:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cmdline").write_bytes(b"".join(arg.encode() + b"\0" for arg in argv))
    (proc / "net").symlink_to(net)
    return proc


@pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("worker", WORKERS)
def test_worker_healthcheck_needs_the_worker_and_a_kafka_connection(worker: str, tmp_path: Path) -> None:
    argv = ["/opt/venv/bin/python", "/opt/venv/bin/trackstream", *_services()[worker]["command"]]
    with socket.create_server(("127.0.0.1", 0)) as broker:
        bootstrap = f"127.0.0.1:{broker.getsockname()[1]}"
        proc = _fake_proc(tmp_path, argv, Path(f"/proc/{os.getpid()}/net"))
        idle = _run_worker_healthcheck(worker, proc, bootstrap)
        assert idle.returncode != 0
        assert "no established connection" in idle.stderr
        with socket.create_connection(broker.getsockname()) as client, broker.accept()[0]:
            assert client
            healthy = _run_worker_healthcheck(worker, proc, bootstrap)
            assert healthy.returncode == 0, healthy.stderr
            elsewhere = _run_worker_healthcheck(worker, proc, "127.0.0.1:1")
            assert elsewhere.returncode != 0
            (proc / "cmdline").write_bytes(b"sleep\0infinity\0")
            wrong = _run_worker_healthcheck(worker, proc, bootstrap)
            assert wrong.returncode != 0
            assert "not a trackstream worker" in wrong.stderr


# --- compose: ClickHouse credentials --------------------------------------------------------------------------------


def test_clickhouse_credentials_are_passed_outside_the_url_and_match_the_server() -> None:
    services = _services()
    sink_env, server_env = services["sink"]["environment"], services["clickhouse"]["environment"]
    url = urlsplit(sink_env["TRACKSTREAM_CLICKHOUSE_URL"])
    assert url.username is None, "no credentials inside the URL"
    assert url.password is None, "no credentials inside the URL"
    assert not {"user", "username", "password"} & set(parse_qs(url.query))
    assert url.hostname == "clickhouse"
    assert sink_env["TRACKSTREAM_CLICKHOUSE_USER"] == server_env["CLICKHOUSE_USER"]
    assert sink_env["TRACKSTREAM_CLICKHOUSE_PASSWORD"] == server_env["CLICKHOUSE_PASSWORD"]
    # Substituted from the operator's environment, with a default only for a local try-out.
    assert re.fullmatch(r"\$\{CLICKHOUSE_PASSWORD:-[^}]+\}", server_env["CLICKHOUSE_PASSWORD"])
    assert "CLICKHOUSE_PASSWORD" in (REPO / "docker-compose.yml").read_text().split("services:")[0]
    assert "TRACKSTREAM_CLICKHOUSE_PASSWORD" not in services["streams"].get("environment", {})


# --- .dockerignore --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [
    ".venv/bin/python", ".venv", ".cache/kafka/test-broker/meta.properties", ".git/HEAD", "tests/unit/test_compose.py",
    "bench/sinks.py", "docs/index.md", "build/lib/x.py", "dist/trackstream-0.1.0.whl", "trackstream.egg-info/PKG-INFO",
    "sinks/__pycache__/worker.cpython-311.pyc", ".ruff_cache/x", ".mypy_cache/x", ".pytest_cache/x", ".ci/x.yml",
])
def test_dockerignore_keeps_out(path: str) -> None:
    assert _dockerignore_excludes(path), path


def test_dockerignore_keeps_every_file_the_dockerfile_copies() -> None:
    copied = []
    for line in _instructions():
        if line.upper().startswith("COPY ") and "--from=" not in line:
            copied += [arg for arg in line.split()[1:-1] if not arg.startswith("--")]
    assert {"pyproject.toml", "README.md", "trackstream", "sinks"} <= set(copied)
    for source in copied:
        assert (REPO / source).exists(), source
        files = [source] if (REPO / source).is_file() else [
            str(path.relative_to(REPO)) for path in (REPO / source).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts
        ]
        for file in files:
            assert not _dockerignore_excludes(file), file
