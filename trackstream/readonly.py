"""Read-only handles on a run or a model (:func:`trackstream.get_run`, :func:`trackstream.get_model`).

Unlike ``start_run(..., resume=True)``, a handle starts no producer and never changes the entity's status: it only
reads, through the same reader as ``compare`` (a ClickHouse server, the store's owner, or the store itself).
Every property reads the store again, so a handle on a live run shows its live status and metrics.
"""

from __future__ import annotations

from typing import Any, Literal

from trackstream.schemas import EntityRef
from trackstream.schemas.settings import StoreSettings


class EntityView:
    """A run or model as stored: ``project``, ``type`` (``"run"`` or ``"model"``), ``id``; the rest is read on access.

    Raises :class:`~trackstream.schemas.errors.NotFoundError` at construction when the store holds no such entity.
    """

    def __init__(self, project: str, entity_type: Literal["run", "model"], entity_id: str, *,
                 store: StoreSettings | None = None) -> None:
        self.project, self.type, self.id = project, entity_type, entity_id
        self._store = store
        self._reader().entity(project, entity_id, entity_type=entity_type)  # NotFoundError now, not on first use

    def __repr__(self) -> str:
        return f"EntityView(project={self.project!r}, type={self.type!r}, id={self.id!r})"

    def _reader(self) -> Any:
        from trackstream._query import _for

        return _for(self._store)

    def _row(self) -> dict[str, Any]:
        row: dict[str, Any] = self._reader().entity(self.project, self.id, entity_type=self.type)
        return row

    @property
    def name(self) -> str:
        """The display name it was started with."""
        return str(self._row()["name"])

    @property
    def status(self) -> str | None:
        """``running``, ``completed``, ``failed``, ``killed`` or ``crashed`` (docs/metrics.md#run-status); None while
        only its points are stored (points and states travel apart)."""
        status = self._row()["status"]
        return None if status is None else str(status)

    @property
    def params(self) -> dict[str, Any]:
        """Params with the JSON types they were logged with."""
        return dict(self._row()["params"])

    @property
    def tags(self) -> dict[str, str]:
        """Tags as strings."""
        return dict(self._row()["tags"])

    @property
    def metrics(self) -> dict[str, float | list[float]]:
        """The DigitalHub-compatible dict (docs/metrics.md): a single value or a one-point series as a number, a
        longer series as its per-step values (the mean over ranks) in step order."""
        result: dict[str, float | list[float]] = self._reader().entity_metrics(
            EntityRef(self.project, self.type, self.id))
        return result

    def history(self, metric: str, *, ranks: bool = False) -> list[dict[str, Any]]:
        """Every point of ``metric`` in step order: ``{"step": int, "value": float, "time_ns": int}`` with the
        per-step mean over ranks, or with ``ranks=True`` every rank's points, each with ``"rank"``. Raises
        NotFoundError (naming the closest metrics) when this entity never logged ``metric``."""
        rows: list[dict[str, Any]] = self._reader().history(self.project, self.id, metric, entity_type=self.type,
                                                            ranks=ranks)
        return rows
