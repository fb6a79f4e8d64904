"""Hugging Face Transformers -> trackstream: :class:`TrackstreamCallback` for ``Trainer``.

Importing this module imports ``transformers`` (the callback subclasses ``TrainerCallback``, so that every
current and future Trainer event has a default); :mod:`trackstream.integrations` loads it only when
``TrackstreamCallback`` is first asked for, so ``import trackstream`` never does. ``torch`` is never imported:
tensors are recognised by their ``numel()``/``item()`` methods.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from typing import Any

import orjson

from trackstream import producers
from trackstream.integrations._common import require, source_name_tags, to_metric_name
from trackstream.producers.handles import Run, check_params

_transformers = require("transformers")
TrainerCallback: Any = _transformers.TrainerCallback

log = logging.getLogger(__name__)

_SCALARS = (str, int, float, bool, type(None))
_RUN_ID_VARIABLES = ("TRACKSTREAM_RUN_ID", "TORCHELASTIC_RUN_ID")


def as_number(value: Any) -> float | int | None:
    """``value`` as a loggable number, or None to drop it.

    Ints and floats (and other real numbers such as NumPy scalars) are kept as they are; a one-element tensor or
    array gives its ``.item()``; booleans, strings, containers and bigger tensors are dropped.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, numbers.Real):
        return float(value)
    size = _element_count(value)
    if size == 1 and callable(getattr(value, "item", None)):
        item = value.item()
        if isinstance(item, bool) or not isinstance(item, numbers.Real):
            return None
        return item if isinstance(item, (int, float)) else float(item)
    return None


def _element_count(value: Any) -> int | None:
    numel = getattr(value, "numel", None)
    if callable(numel):
        return int(numel())
    size = getattr(value, "size", None)
    return size if isinstance(size, int) and hasattr(value, "dtype") else None


def _jsonable(value: Any) -> Any:
    try:
        orjson.dumps(value)
    except TypeError:
        return str(value)
    return value


def training_params(args: Any, model: Any = None) -> dict[str, Any]:
    """Run params: the training arguments (tokens redacted by ``to_dict``) and ``model.<field>`` for each scalar
    field of the model's config."""
    raw = args.to_dict() if hasattr(args, "to_dict") else dict(vars(args))
    params = {key: _jsonable(value) for key, value in raw.items()}
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        params.update({f"model.{k}": v for k, v in config.to_dict().items() if isinstance(v, _SCALARS)})
    return params


def _arg(args: Any, name: str) -> int | None:
    """A distributed property of TrainingArguments; None when it cannot be read (e.g. torch missing)."""
    try:
        value = getattr(args, name)
    except (ImportError, AttributeError):
        return None
    return int(value) if isinstance(value, int) else None


class TrackstreamCallback(TrainerCallback):  # type: ignore[misc]
    """Streams a ``Trainer``'s logs to trackstream.

    - ``on_train_begin``: opens a run in ``project`` (unless ``run`` was given) named ``args.run_name``, and logs
      the params (:func:`training_params`).
    - ``on_log``: every numeric value at ``step=state.global_step`` (see :func:`as_number`); anything else is
      dropped with one warning per key naming its type. Names trackstream does not accept are mapped by
      :func:`~trackstream.integrations.to_metric_name` (original kept in a ``source_metric_name/`` tag).
    - ``on_evaluate``: the eval metrics (those ``on_log`` already logged at the same step are not repeated).
    - ``on_train_end``: flushes. The run stays open, so a ``trainer.evaluate()`` after training lands at
      ``state.global_step``; it is finished by :meth:`finish`, by the next ``train()`` (which opens a new run),
      or as ``completed`` when the process exits (the SDK's exit hook).

    Only the world process zero logs (its run has world size 1), unless ``all_ranks=True``: then every rank
    logs to the same run with its own rank, and the run id must be shared (``TRACKSTREAM_RUN_ID`` or
    torchrun's ``TORCHELASTIC_RUN_ID``, or a ``run`` opened with ``run_id=``). ``run_options`` go to
    :func:`trackstream.start_run`. ``project`` defaults to ``TRACKSTREAM_PROJECT``, else ``args.project``, else
    ``huggingface``.
    """

    def __init__(
        self, run: Run | None = None, *, project: str | None = None, all_ranks: bool = False, **run_options: Any,
    ) -> None:
        self.run = run
        self.project = project
        self.all_ranks = all_ranks
        self.run_options = run_options
        self._owns_run = False
        self._warned: set[str] = set()
        self._names: dict[str, str] = {}
        self._last_logged: tuple[int, dict[str, float | int]] = (-1, {})

    def _active(self, state: Any) -> bool:
        return bool(self.all_ranks or state.is_world_process_zero)

    def _open_run(self, args: Any, model: Any) -> None:
        params = training_params(args, model)
        try:
            check_params(params)
        except ValueError as exc:
            log.warning("trackstream: keeping only the scalar params: %s", exc)
            params = {k: v for k, v in params.items() if isinstance(v, _SCALARS)}
        if self.run is not None:
            self.run.log_params(params)
            return
        project = self.project or os.environ.get("TRACKSTREAM_PROJECT") or getattr(args, "project", None)
        rank, world_size = (_arg(args, "process_index"), _arg(args, "world_size")) if self.all_ranks else (0, 1)
        shared = self.run_options.get("run_id") or any(os.environ.get(v) for v in _RUN_ID_VARIABLES)
        if self.all_ranks and (world_size or 1) > 1 and not shared:
            log.warning("trackstream: all_ranks=True without TRACKSTREAM_RUN_ID, TORCHELASTIC_RUN_ID or run_id=: "
                        "every rank will open a run of its own")
        self.run = producers.start_run(
            str(project or "huggingface"), getattr(args, "run_name", None) or None, params=params,
            rank=rank, world_size=world_size, **self.run_options,
        )
        self._owns_run = True

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        """On an active rank, open the run (rank 0 of world size 1 unless ``all_ranks``) with :func:`training_params`.

        A ``run`` given to the constructor only gets the params. Params that fail the check keep only scalars (warned).
        """
        if self._active(state):
            if self._owns_run:  # a new train(): its own run
                self.finish()
            self._open_run(args, model)

    def _numeric(self, values: dict[str, Any]) -> dict[str, float | int]:
        out: dict[str, float | int] = {}
        for key, value in values.items():
            number = as_number(value)
            if number is None:
                if key not in self._warned:
                    self._warned.add(key)
                    log.warning("trackstream: dropped %r: a value of type %s is not a number (logged once per key)",
                                key, type(value).__name__)
                continue
            out[key] = number
        return out

    def _log(self, values: dict[str, float | int], step: int) -> None:
        if self.run is None or not values:
            return
        mapped: dict[str, float | int] = {}
        new_names: dict[str, str] = {}
        for key, value in values.items():
            name = self._names.get(key)
            if name is None:
                name = self._names[key] = new_names[key] = to_metric_name(key)
            mapped[name] = value
        tags = source_name_tags({name: key for key, name in new_names.items()})
        if tags:
            self.run.set_tags(tags)
        self.run.log_metrics(mapped, step=step)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Log the numeric entries of ``logs`` at ``step=state.global_step``; others are dropped, warned once."""
        if not self._active(state) or not logs:
            return
        values = self._numeric(dict(logs))
        self._last_logged = (state.global_step, values)
        self._log(values, state.global_step)

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict[str, Any] | None = None, **kwargs: Any,
    ) -> None:
        """Log the numeric eval ``metrics`` at ``state.global_step``, except values ``on_log`` already logged there."""
        if not self._active(state) or not metrics:
            return
        step, seen = self._last_logged
        values = self._numeric(dict(metrics))
        if step == state.global_step:
            values = {k: v for k, v in values.items() if k not in seen or not _same(seen[k], v)}
        self._log(values, state.global_step)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Flush the run; it stays open for what is logged after training (a final ``evaluate()``)."""
        if self.run is not None and self._active(state):
            self.run.flush()

    def finish(self, status: str = "completed") -> None:
        """Finish the run this callback opened with ``status``; a run given to it is only flushed (its owner
        finishes it). Without a call, the run is finished as ``completed`` when the process exits."""
        if self.run is None:
            return
        if self._owns_run:
            self.run.finish(status)
            self.run, self._owns_run = None, False
        else:
            self.run.flush()


def _same(a: float | int, b: float | int) -> bool:
    """Equal values, where NaN equals NaN (the same logged value)."""
    return a == b or (math.isnan(a) and math.isnan(b))
