"""docker-compose.yml cannot run here (no Docker engine): validate it against the compose specification."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _check_jsonschema() -> str:
    found = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent)) or shutil.which("check-jsonschema")
    assert found, "check-jsonschema is part of the dev extra: pip install -e '.[dev]'"
    return found


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
    import yaml

    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "clickhouse", "streams", "sink"} <= set(services)
    assert services["streams"]["build"] == "."
    assert (REPO / "Dockerfile").exists()
    assert services["streams"]["command"] == ["streams", "worker"]
    assert services["sink"]["command"] == ["sink", "worker"]
    for name in ("kafka", "clickhouse"):
        assert "healthcheck" in services[name]
