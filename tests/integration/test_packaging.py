"""The built distributions: one import name (`trackstream`), every package, and an install that works on its own.

The repository keeps top-level folders (producers/, streams/, sinks/, schemas/) that pyproject's package-dir maps
under `trackstream.`; a wheel that shipped them as top-level packages would shadow, or be shadowed by, a user's own
``schemas.py``. These tests build the sdist and the wheel from a copy of the working tree (nothing is written into
the repository), read both archives, then install the wheel into a fresh virtual environment next to only its base
dependencies and import it from a directory full of such user files.

Offline: the build runs without isolation (setuptools comes from the running environment, nothing is downloaded),
the wheel is installed with ``--no-index --no-deps``, and the base dependencies are linked in from this environment.
"""

from __future__ import annotations

import email.parser
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import IN_CI
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]

# Repository folder -> where its packages live in the wheel. Written out here rather than read from pyproject, so
# that a folder dropped from (or never added to) pyproject's package-dir/packages fails the test.
PACKAGE_FOLDERS = {
    "trackstream": "trackstream",
    "producers": "trackstream/producers",
    "streams": "trackstream/streams",
    "sinks": "trackstream/sinks",
    "schemas": "trackstream/schemas",
}
REQUIRED_IN_WHEEL = (
    "trackstream/__init__.py",
    "trackstream/py.typed",
    "trackstream/producers/__init__.py",
    "trackstream/streams/__init__.py",
    "trackstream/sinks/__init__.py",
    "trackstream/schemas/__init__.py",
    "trackstream/integrations/__init__.py",
)
BASE_DEPENDENCIES = {"orjson", "aiokafka"}
# Names a user's own files commonly take; installed trackstream must neither ship nor import them.
SHADOWING_NAMES = ("producers", "streams", "sinks", "schemas")
# Build artefacts an in-tree build would leave in the repository.
ARTEFACTS = ("build", "dist")
# An SPDX string in project.license (PEP 639) is accepted by setuptools from 77.0.3; older versions reject it.
PEP639_SETUPTOOLS = "setuptools>=77.0.3"
TIMEOUT = 120


@dataclass(frozen=True)
class Built:
    source: Path  # the copy of the working tree that was built
    wheel: Path
    sdist: Path
    wheel_names: frozenset[str]
    sdist_names: frozenset[str]


def _unavailable(reason: str) -> None:
    """Skip outside CI; under CI=true the packaging check must run."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: the packaging test must run)", pytrace=False)
    pytest.skip(reason)


def _unmet_build_requirements(pyproject: dict) -> list[str]:
    """build-system.requires (plus the setuptools the license form needs) not satisfied by this environment."""
    wanted = [Requirement(text) for text in pyproject["build-system"]["requires"]]
    if isinstance(pyproject["project"].get("license"), str):
        wanted.append(Requirement(PEP639_SETUPTOOLS))
    wanted.append(Requirement("build"))
    unmet = []
    for requirement in wanted:
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            version = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            unmet.append(f"{requirement} (not installed)")
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            unmet.append(f"{requirement} (found {version})")
    return unmet


def _copy_working_tree(destination: Path) -> None:
    """Tracked files plus new, not ignored ones: what the next commit would hold (no .venv, egg-info, caches)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO, capture_output=True, check=True, timeout=TIMEOUT,
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError):  # no git, or not a checkout: copy without the usual clutter
        shutil.copytree(REPO, destination, ignore=shutil.ignore_patterns(
            ".git", ".venv", ".cache", "__pycache__", "*.egg-info", "build", "dist", ".*_cache", ".hypothesis"))
        return
    for relative in dict.fromkeys(filter(None, listed.split("\0"))):
        source = REPO / relative
        if source.is_file():  # skips files deleted in the working tree but still in the index
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def _artefacts_in_repo() -> dict[str, int]:
    """Build artefacts in the repository root, each with its newest modification time."""
    found = {}
    for path in REPO.iterdir():
        if path.name in ARTEFACTS or path.name.endswith(".egg-info"):
            found[path.name] = max((p.stat().st_mtime_ns for p in path.rglob("*")), default=path.stat().st_mtime_ns)
    return found


def _clean_env() -> dict[str, str]:
    """The environment without PYTHON* and PIP_* settings of the surrounding run."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_"))}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    unmet = _unmet_build_requirements(pyproject)
    if unmet:
        _unavailable(f"cannot build without isolation, {sys.prefix} lacks: {', '.join(unmet)}")

    root = tmp_path_factory.mktemp("packaging")
    source, outdir = root / "source", root / "dist"
    artefacts_before = _artefacts_in_repo()
    _copy_working_tree(source)
    # --no-isolation: setuptools and wheel come from this environment, so nothing is downloaded.
    result = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--wheel", "--no-isolation", "--outdir", str(outdir), str(source)],
        cwd=source, capture_output=True, text=True, check=False, timeout=TIMEOUT,
    )
    assert result.returncode == 0, f"build failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert _artefacts_in_repo() == artefacts_before, "the build wrote build/, dist/ or *.egg-info into the repository"

    wheels, sdists = sorted(outdir.glob("*.whl")), sorted(outdir.glob("*.tar.gz"))
    assert len(wheels) == 1, sorted(p.name for p in outdir.iterdir())
    assert len(sdists) == 1, sorted(p.name for p in outdir.iterdir())
    with zipfile.ZipFile(wheels[0]) as wheel:
        wheel_names = frozenset(wheel.namelist())
    with tarfile.open(sdists[0]) as sdist:
        sdist_names = frozenset(member.name for member in sdist.getmembers() if member.isfile())
    return Built(source, wheels[0], sdists[0], wheel_names, sdist_names)


def _dist_info(built: Built) -> str:
    dist_infos = {name.split("/")[0] for name in built.wheel_names if name.split("/")[0].endswith(".dist-info")}
    assert len(dist_infos) == 1, dist_infos
    (dist_info,) = dist_infos
    assert dist_info.startswith("trackstream-"), dist_info
    return dist_info


def _package_modules(source: Path) -> dict[str, str]:
    """Every module of every package folder (a folder with an __init__.py): repository path -> path in the wheel."""
    modules = {}
    for folder, installed in PACKAGE_FOLDERS.items():
        assert (source / folder / "__init__.py").is_file(), f"{folder}/ is not a package"
        for init in sorted((source / folder).rglob("__init__.py")):
            package = init.parent
            if any(part.startswith((".", "__pycache__")) for part in package.relative_to(source).parts):
                continue
            for module in sorted(package.glob("*.py")):
                relative = module.relative_to(source / folder).as_posix()
                modules[module.relative_to(source).as_posix()] = f"{installed}/{relative}"
    return modules


def test_wheel_has_the_one_import_name_trackstream(built: Built) -> None:
    dist_info = _dist_info(built)
    top_level = {name.split("/")[0] for name in built.wheel_names}
    assert not top_level & set(SHADOWING_NAMES), f"top-level packages besides trackstream: {sorted(top_level)}"
    outside = sorted(n for n in built.wheel_names if not n.startswith(("trackstream/", f"{dist_info}/")))
    assert not outside, f"files outside trackstream/ and {dist_info}/: {outside}"

    if f"{dist_info}/top_level.txt" in built.wheel_names:
        with zipfile.ZipFile(built.wheel) as wheel:
            names = wheel.read(f"{dist_info}/top_level.txt").decode().split()
        assert names == ["trackstream"], f"top_level.txt: {names}"

    missing = [name for name in REQUIRED_IN_WHEEL if name not in built.wheel_names]
    assert not missing, f"missing from the wheel: {missing}"


def test_wheel_has_every_package_of_the_repository(built: Built) -> None:
    # setuptools ships only the packages pyproject lists: a new subpackage left out of `packages` is missing here.
    modules = _package_modules(built.source)
    missing = sorted(f"{repo_path} (as {wheel_path})" for repo_path, wheel_path in modules.items()
                     if wheel_path not in built.wheel_names)
    hint = "is its package in pyproject's [tool.setuptools] packages and package-dir?"
    assert not missing, f"not in the wheel ({hint}):\n" + "\n".join(missing)


def test_sdist_has_the_project_and_every_package_folder(built: Built) -> None:
    roots = {name.split("/")[0] for name in built.sdist_names}
    assert len(roots) == 1, roots
    (root,) = roots
    expected = ["pyproject.toml", "README.md", "PKG-INFO", "trackstream/py.typed", *_package_modules(built.source)]
    missing = [name for name in expected if f"{root}/{name}" not in built.sdist_names]
    assert not missing, f"missing from the sdist: {missing}"


def _base_requirements(built: Built) -> list[Requirement]:
    with zipfile.ZipFile(built.wheel) as wheel:
        metadata = email.parser.Parser().parsestr(wheel.read(f"{_dist_info(built)}/METADATA").decode())
    requirements = [Requirement(text) for text in metadata.get_all("Requires-Dist") or []]
    return [r for r in requirements if r.marker is None or r.marker.evaluate({"extra": ""})]


def _dependency_closure(requirements: list[Requirement]) -> list[importlib.metadata.Distribution]:
    """The installed distributions (of this environment) the requirements pull in, transitively."""
    found: dict[str, importlib.metadata.Distribution] = {}
    pending = list(requirements)
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in found:
            continue
        try:
            found[name] = distribution = importlib.metadata.distribution(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"{requirement} (a base dependency) is not installed in {sys.prefix}", pytrace=False)
        extras = {"", *requirement.extras}
        for text in distribution.requires or []:
            needed = Requirement(text)
            if needed.marker is None or any(needed.marker.evaluate({"extra": extra}) for extra in extras):
                pending.append(needed)
    return list(found.values())


def _link_into(site_packages: Path, distribution: importlib.metadata.Distribution) -> None:
    """Make an installed distribution (its packages, modules and dist-info) importable from another site-packages."""
    tops = {file.parts[0] for file in distribution.files or []} - {"..", "__pycache__"}
    for top in sorted(tops):
        source, target = Path(distribution.locate_file(top)), site_packages / top
        if source.exists() and not target.exists():
            target.symlink_to(source, target_is_directory=source.is_dir())


CHECK_INSTALL = """\
import importlib.metadata
import sys
from pathlib import Path

site_packages, workdir, shadowing = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve(), sys.argv[3:]

import trackstream
import trackstream.producers
import trackstream.schemas

assert callable(trackstream.start_run), trackstream.start_run
for module in (trackstream, trackstream.producers, trackstream.schemas):
    where = Path(module.__file__).resolve()
    assert where.is_relative_to(site_packages), f"{module.__name__} from {where}, not {site_packages}; {sys.path}"
editable = sorted(name for name in sys.modules if name.startswith("__editable__"))
assert not editable, f"the development install's editable finder is active: {editable}"
assert Path(importlib.metadata.distribution("trackstream").locate_file("")).resolve() == site_packages

shadowed = sorted(name for name in shadowing if name in sys.modules)
assert not shadowed, f"importing trackstream imported top-level {shadowed}"
import schemas
assert Path(schemas.__file__).resolve() == workdir / "schemas.py", schemas.__file__
assert schemas.OWNER == "user", schemas.OWNER

# the SDK-only install: logging works, a read fails at once naming the extra that brings reads
import os
os.environ["HOME"] = str(workdir)
os.environ["TRACKSTREAM_DATA_DIR"] = str(workdir / "store")
os.environ["TRACKSTREAM_SPOOL_DIR"] = str(workdir / "spool")
with trackstream.start_run("light", run_id="r") as run:
    run.log_metrics({"loss": 1.0}, step=0)
try:
    trackstream.runs("light")
except trackstream.MissingDependencyError as exc:
    assert "pip install 'trackstream[query]'" in str(exc), exc
else:
    raise AssertionError("a read on the SDK-only install did not fail")
print("installed trackstream OK")
"""


def test_installed_wheel_imports_from_its_own_install_next_to_user_files(built: Built, tmp_path: Path) -> None:
    requirements = _base_requirements(built)
    assert {canonicalize_name(r.name) for r in requirements} == BASE_DEPENDENCIES, [str(r) for r in requirements]

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=TIMEOUT)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site_packages = Path(subprocess.run(
        [str(python), "-E", "-s", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True, timeout=TIMEOUT, env=_clean_env(),
    ).stdout.strip())
    # pip of this environment installs into the fresh one (--python); --no-index --no-deps: offline, the wheel only.
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check", "install", "--quiet",
         "--no-index", "--no-deps", str(built.wheel)],
        capture_output=True, text=True, check=False, timeout=TIMEOUT, env=_clean_env(),
    )
    assert install.returncode == 0, f"pip install failed:\n{install.stdout}\n{install.stderr}"
    assert (venv / ("Scripts/trackstream.exe" if os.name == "nt" else "bin/trackstream")).exists(), "no console script"
    # Only the base dependencies (and what they need), linked from this environment: offline, and an import that
    # needs anything else (pydantic, chdb, ...) fails here, as it would in a training job's base install. This
    # environment's site-packages itself stays off sys.path, so its editable finder (a .pth there) never loads.
    for distribution in _dependency_closure(requirements):
        _link_into(site_packages, distribution)

    workdir = tmp_path / "user"
    workdir.mkdir()
    # The user's own modules, named like the repository's folders: importing any of them in place of trackstream's
    # package breaks (producers, streams, sinks raise; schemas has none of trackstream.schemas' names).
    for name in SHADOWING_NAMES:
        body = f'raise ImportError("the user\'s {name}.py was imported in place of trackstream.{name}")\n'
        (workdir / f"{name}.py").write_text('OWNER = "user"\n' if name == "schemas" else body)
    (workdir / "check_install.py").write_text(CHECK_INSTALL)
    # -E: ignore PYTHON* variables, so PYTHONPATH of the surrounding run (the repository, this environment) cannot
    #     leak in, and PYTHONSAFEPATH cannot take the script's directory off sys.path;
    # -s: no user site-packages (a trackstream in ~/.local must not answer);
    # -B: write no bytecode into the user's directory or the linked packages of this environment.
    # Not -I: it implies -P, which leaves the script's directory (the user's files) off sys.path, and the check is
    # precisely that trackstream imports its own packages while `import schemas` there gives the user's file.
    # Not -S: the wheel is installed in the fresh environment's site-packages, which `site` puts on sys.path.
    result = subprocess.run(
        [str(python), "-E", "-s", "-B", "check_install.py", str(site_packages), str(workdir), *SHADOWING_NAMES],
        cwd=workdir, capture_output=True, text=True, check=False, timeout=TIMEOUT, env=_clean_env(),
    )
    assert result.returncode == 0, f"the installed wheel does not import:\n{result.stdout}\n{result.stderr}"
    assert result.stdout.strip() == "installed trackstream OK"
