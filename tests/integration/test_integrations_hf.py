"""TrackstreamCallback driven by transformers' own CallbackHandler with real TrainingArguments/TrainerState.

These tests steer each event by hand (ranks, NaN, odd log keys, a second train) through the exact dispatch
Trainer uses (``CallbackHandler``) with real ``TrainingArguments``, ``TrainerState``, ``TrainerControl`` and a
real ``PretrainedConfig``; tensors are one-element NumPy arrays and a minimal object with ``numel()``/``item()``.
A real ``Trainer.train()`` runs in test_integrations_hf_trainer.py.
"""

from __future__ import annotations

import logging
import types
from pathlib import Path
from typing import Any

import pytest

transformers = pytest.importorskip("transformers")
np = pytest.importorskip("numpy")

from trackstream.integrations import SOURCE_NAME_TAG_PREFIX, TrackstreamCallback, to_metric_name  # noqa: E402
from trackstream.producers.spool import SpoolReader, list_spools  # noqa: E402
from trackstream.schemas import Envelope, decode  # noqa: E402

CallbackHandler = transformers.trainer_callback.CallbackHandler


def envelopes(spool_dir: Path) -> list[Envelope]:
    out = []
    for spool in list_spools(spool_dir):
        out += [decode(payload) for _pos, _key, payload in SpoolReader(spool.path).frames()]
    return out


def points(found: list[Envelope]) -> dict[str, list[tuple[int, float]]]:
    """{metric: [(step, value), ...]} over all envelopes, in delivery order."""
    out: dict[str, list[tuple[int, float]]] = {}
    for envelope in found:
        for batch in envelope.metrics:
            out.setdefault(batch.name, []).extend(zip(batch.steps, batch.values, strict=True))
    return out


def events(found: list[Envelope], kind: str) -> list[dict[str, Any]]:
    return [e.data for envelope in found for e in envelope.events if e.type == kind]


class _Tensor:
    def __init__(self, *values: float) -> None:
        self.values = values

    def numel(self) -> int:
        return len(self.values)

    def item(self) -> float:
        return self.values[0]


@pytest.fixture
def spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    spool_dir = tmp_path / "spool"
    monkeypatch.setenv("TRACKSTREAM_SPOOL_DIR", str(spool_dir))
    for name in ("TRACKSTREAM_KAFKA_BOOTSTRAP", "TRACKSTREAM_RUN_ID", "TORCHELASTIC_RUN_ID", "RANK", "WORLD_SIZE",
                 "TRACKSTREAM_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    return spool_dir


def _setup(tmp_path: Path, callback: Any, *, zero: bool = True) -> tuple[Any, Any, Any, Any]:
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), run_name="tiny-run", learning_rate=3e-4, num_train_epochs=2,
        report_to="none", hub_token="not-a-real-token",
    )
    state = transformers.TrainerState(is_world_process_zero=zero, is_local_process_zero=zero)
    config = transformers.BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    model = types.SimpleNamespace(config=config)
    flow = transformers.trainer_callback.DefaultFlowCallback
    handler = CallbackHandler([flow, callback], model, None, None, None)
    return handler, args, state, transformers.TrainerControl()


def _train(handler: Any, args: Any, state: Any, control: Any) -> None:
    handler.on_train_begin(args, state, control)
    for step in (1, 2, 3):
        state.global_step = step
        handler.on_log(args, state, control, logs={
            "loss": 1.0 / step, "learning_rate": 3e-4, "epoch": step / 3, "grad_norm": np.array([0.5 * step]),
            "tokens": _Tensor(float(10 * step)), "num_steps": step, "note": "text", "hist": [1.0, 2.0],
        })
    eval_metrics = {"eval_loss": 0.25, "eval_recall@1": 0.75, "eval_runtime": 0.1, "eval_flags": True}
    handler.on_log(args, state, control, logs=dict(eval_metrics))
    handler.on_evaluate(args, state, control, metrics={**eval_metrics, "eval_extra": 9})
    handler.on_train_end(args, state, control)


def test_callback_logs_filtered_values_eval_metrics_and_params_and_stays_open_for_a_final_evaluate(
    spool: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    callback = TrackstreamCallback(project="hf")
    handler, args, state, control = _setup(tmp_path, callback)
    with caplog.at_level(logging.WARNING, logger="trackstream.integrations.hf_callback"):
        _train(handler, args, state, control)
    found = envelopes(spool)
    got = points(found)
    assert got["loss"] == [(1, 1.0), (2, 0.5), (3, 1 / 3)]
    assert got["grad_norm"] == [(1, 0.5), (2, 1.0), (3, 1.5)]
    assert got["tokens"] == [(1, 10.0), (2, 20.0), (3, 30.0)]
    assert got["num_steps"] == [(1, 1.0), (2, 2.0), (3, 3.0)]
    assert got["eval_loss"] == [(3, 0.25)]
    recall = to_metric_name("eval_recall@1")
    assert got[recall] == [(3, 0.75)]
    assert got["eval_extra"] == [(3, 9.0)]
    assert not {"note", "hist", "eval_flags"} & set(got)
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("trackstream")]
    assert len(warnings) == 3
    for key, kind in (("note", "str"), ("hist", "list"), ("eval_flags", "bool")):
        assert sum(f"'{key}'" in w and kind in w for w in warnings) == 1

    assert {e.entity.id for e in found} == {found[0].entity.id}
    assert all(e.rank == 0 and e.world_size == 1 for e in found)
    (started,) = events(found, "run_started")
    assert started["name"] == "tiny-run"
    params = started["params"]
    assert (params["learning_rate"], params["num_train_epochs"]) == (3e-4, 2)
    assert (params["model.hidden_size"], params["model.model_type"]) == (8, "bert")
    assert "model.id2label" not in params
    assert params["hub_token"] != "not-a-real-token"
    tags = {k: v for data in events(found, "tags") for k, v in data["tags"].items()}
    assert tags == {f"{SOURCE_NAME_TAG_PREFIX}{recall}": "eval_recall@1"}
    assert events(found, "run_finished") == []  # open after training: a final evaluate() still lands
    handler.on_evaluate(args, state, control, metrics={"eval_loss": 0.2})
    callback.finish()
    found = envelopes(spool)
    assert points(found)["eval_loss"] == [(3, 0.25), (3, 0.2)]  # the same step: the later write wins on read
    assert events(found, "run_finished") == [{"status": "completed"}]
    assert callback.run is None


def test_only_world_process_zero_logs(spool: Path, tmp_path: Path) -> None:
    handler, args, state, control = _setup(tmp_path, TrackstreamCallback(project="hf"), zero=False)
    _train(handler, args, state, control)
    assert envelopes(spool) == []


def test_all_ranks_logs_every_rank_with_its_rank(
    spool: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRACKSTREAM_RUN_ID", "shared-run")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    handler, args, state, control = _setup(tmp_path, TrackstreamCallback(project="hf", all_ranks=True), zero=False)
    # The Trainer's own view of the rank (set by a real launcher): with torch installed, TrainingArguments reads it
    # from accelerate, which RANK/WORLD_SIZE alone do not make distributed; without torch the SDK reads them.
    monkeypatch.setattr(type(args), "process_index", property(lambda _self: 1))
    monkeypatch.setattr(type(args), "world_size", property(lambda _self: 2))
    _train(handler, args, state, control)
    found = envelopes(spool)
    assert found
    assert {(e.entity.id, e.rank, e.world_size) for e in found} == {("shared-run", 1, 2)}
    assert points(found)["loss"][0] == (1, 1.0)


def test_a_given_run_gets_params_and_is_flushed_but_not_finished(spool: Path, tmp_path: Path) -> None:
    import trackstream as ts

    run = ts.start_run("hf", "mine")
    callback = TrackstreamCallback(run)
    handler, args, state, control = _setup(tmp_path, callback)
    _train(handler, args, state, control)
    found = envelopes(spool)
    assert points(found)["loss"][-1] == (3, 1 / 3)
    assert any("learning_rate" in data["params"] for data in events(found, "params"))
    assert events(found, "run_finished") == []
    run.log_metric("after", 1.0)
    run.finish()
    assert events(envelopes(spool), "run_finished") == [{"status": "completed"}]


def test_a_second_training_opens_a_new_run(spool: Path, tmp_path: Path) -> None:
    callback = TrackstreamCallback(project="hf")
    handler, args, state, control = _setup(tmp_path, callback)
    _train(handler, args, state, control)
    state.global_step = 0
    _train(handler, args, state, control)  # finishes the first run as it opens the second
    assert len(events(envelopes(spool), "run_finished")) == 1
    callback.finish()
    found = envelopes(spool)
    assert len({e.entity.id for e in found}) == 2
    assert len(events(found, "run_finished")) == 2
