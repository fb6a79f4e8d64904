"""What a read names that the store does not hold: :class:`~trackstream.schemas.errors.NotFoundError` naming it and
the closest names that exist (``difflib``'s ratio, as Python's own "did you mean" suggestions).

Checked only where an answer would otherwise be silently empty or silently wrong: ``compare`` with no rows, run
ids that do not exist (a run *name* passed as an id is recognised as such), ``by`` params no run has, ``runs``
of a project that does not exist. Each check is one small query on the metadata tables.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from trackstream.schemas.errors import NotFoundError

Rows = Callable[[str, Mapping[str, Any]], list[Any]]

_PROJECTS: Final = "SELECT DISTINCT project FROM entities UNION DISTINCT SELECT DISTINCT project FROM series_stats"
_METRICS: Final = ("SELECT DISTINCT metric FROM series_stats "
                   "WHERE project = {project:String} AND entity_type = {entity_type:String}")
_LOGGED: Final = ("SELECT DISTINCT entity_id FROM series_stats WHERE project = {project:String} "
                  "AND entity_type = {entity_type:String} AND entity_id IN {ids:Array(String)}")
_IDS: Final = ("SELECT entity_id, argMax(name, version) FROM entities "
               "WHERE project = {project:String} AND entity_type = {entity_type:String} GROUP BY entity_id")


def did_you_mean(name: str, names: Sequence[str]) -> str:
    """``"; did you mean 'x'?"`` (or ``'x' or 'y'``) for the names closest to ``name``, else ``""``."""
    close = difflib.get_close_matches(name, list(names), n=2, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def check_project(rows: Rows, project: str) -> None:
    """Raise :class:`NotFoundError` unless the store holds an entity or a series of ``project``."""
    projects = [str(row[0]) for row in rows(_PROJECTS, {})]
    if project not in projects:
        raise NotFoundError(f"project {project!r} not found{did_you_mean(project, projects)}"
                            + ("" if projects else " (the store holds no project yet)"))


def check_metric(rows: Rows, scope: Mapping[str, Any], metric: str) -> None:
    """Raise :class:`NotFoundError` when no entity of ``scope`` (project, entity_type) logged ``metric`` (or the
    project itself is unknown)."""
    metrics = [str(row[0]) for row in rows(_METRICS, scope)]
    if metric not in metrics:
        check_project(rows, str(scope["project"]))
        raise NotFoundError(f"metric {metric!r} not found in project {scope['project']!r}"
                            f"{did_you_mean(metric, metrics)}")


def check_entity_metric(rows: Rows, scope: Mapping[str, Any], entity_id: str, metric: str) -> None:
    """Raise :class:`NotFoundError` when entity ``entity_id`` of ``scope`` did not log ``metric``."""
    metrics = [str(row[0]) for row in rows(_METRICS + " AND entity_id = {entity_id:String}",
                                           {**scope, "entity_id": entity_id})]
    if metric not in metrics:
        kind = str(scope.get("entity_type", "run"))
        raise NotFoundError(f"metric {metric!r} not found for {kind} {entity_id!r} of project {scope['project']!r}"
                            f"{did_you_mean(metric, metrics)}")


def check_ids(rows: Rows, scope: Mapping[str, Any], ids: Sequence[str]) -> None:
    """Raise :class:`NotFoundError` naming the ids in ``ids`` that are no entity of ``scope``; a run's *name* given
    as an id is pointed at that run's id."""
    names = dict(rows(_IDS, scope))
    missing = [i for i in ids if i not in names]
    if missing:  # points can be stored before their entity's state (they travel apart)
        logged = {str(row[0]) for row in rows(_LOGGED, {**scope, "ids": missing})}
        missing = [i for i in missing if i not in logged]
    if not missing:
        return
    if not names:
        check_project(rows, str(scope["project"]))
    by_name: dict[str, list[str]] = {}
    for entity_id, name in names.items():
        by_name.setdefault(str(name), []).append(str(entity_id))
    hints = []
    for wanted in missing:
        if wanted in by_name:
            hints.append(f"{wanted!r} is the name of {', '.join(map(repr, sorted(by_name[wanted])))}: pass ids")
        else:
            hints.append(f"{wanted!r}{did_you_mean(wanted, [str(n) for n in names])}")
    kind = str(scope.get("entity_type", "run"))
    raise NotFoundError(f"{kind} id(s) not found in project {scope['project']!r}: {'; '.join(hints)}")


def check_params(keys: Sequence[str], by: Sequence[str], project: str) -> None:
    """Raise :class:`NotFoundError` for a ``by`` param that no compared entity has (``keys``: the params they have)."""
    missing = [name for name in by if name not in keys]
    if missing:
        hints = "; ".join(f"{name!r}{did_you_mean(name, list(keys))}" for name in missing)
        raise NotFoundError(f"param(s) not found on the compared runs of project {project!r}: {hints}")
