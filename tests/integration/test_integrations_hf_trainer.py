"""A real ``transformers.Trainer.train()`` with :class:`TrackstreamCallback`: a tiny randomly initialised GPT-2 on
CPU, a dataset made in code, no Hugging Face Hub.

Training runs in a process of its own (it writes the spool, as a training job does; torch stays out of the test
process); what landed is read back through the public read API (``trackstream.get_run``) in another process, as
test_read_handles.py does, since chDB binds one store per process and the session's store belongs to the other
tests. Every numeric entry of
``trainer.state.log_history`` must be stored at its step (the last value logged at a step, as reads resolve it),
the in-training evaluation at its step, and the ``evaluate()`` after training at ``state.global_step``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from trackstream.integrations import to_metric_name

MAX_STEPS = 6
EVAL_STEPS = 4  # an evaluation during training (step 4), and the final evaluate() at step 6 apart from it
PROJECT = "hf-trainer"

READ = """
    import json, sys, trackstream as ts
    project, run_id, names = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    run = ts.get_run(project, run_id)
    print(json.dumps({"status": run.status, "name": run.name, "params": run.params, "metrics": run.metrics,
                      "history": {n: [[h["step"], h["value"]] for h in run.history(n)] for n in names}}))
"""


TRAIN = """
    import json, sys, torch, transformers
    from trackstream.integrations import TrackstreamCallback
    out, project, max_steps, eval_steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

    class TokenDataset(torch.utils.data.Dataset):
        def __init__(self, count, length, vocab, seed):
            self.ids = torch.randint(0, vocab, (count, length), generator=torch.Generator().manual_seed(seed))
        def __len__(self):
            return int(self.ids.shape[0])
        def __getitem__(self, index):
            return {"input_ids": self.ids[index], "labels": self.ids[index]}

    transformers.set_seed(0)
    config = transformers.GPT2Config(vocab_size=32, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                                     bos_token_id=0, eos_token_id=0)  # GPT-2's 50256 is outside 32
    args = transformers.TrainingArguments(
        output_dir=out, run_name="tiny-gpt2", use_cpu=True, report_to=[], max_steps=max_steps,
        per_device_train_batch_size=4, per_device_eval_batch_size=4, learning_rate=1e-3, warmup_steps=2,
        logging_steps=1, eval_strategy="steps", eval_steps=eval_steps, save_strategy="no",
        dataloader_num_workers=0, disable_tqdm=True, seed=0)
    callback = TrackstreamCallback(project=project)
    trainer = transformers.Trainer(model=transformers.GPT2LMHeadModel(config), args=args,
                                   train_dataset=TokenDataset(16, 8, 32, 1), eval_dataset=TokenDataset(8, 8, 32, 2),
                                   callbacks=[callback])
    trainer.train()
    open_after_train = callback.run is not None
    run_id = callback.run.id
    final = trainer.evaluate()
    callback.finish()
    assert callback.run is None
    print(json.dumps({"run_id": run_id, "final": final, "log_history": trainer.state.log_history,
                      "global_step": trainer.state.global_step, "open_after_train": open_after_train}))
"""


def train(tmp_path: Path) -> dict[str, Any]:
    """Train in a process of its own (torch stays out of the test process, which runs the rest of the suite);
    returns what the Trainer logged: run id, log history, the final evaluate()'s metrics."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(TRAIN), str(tmp_path / "out"), PROJECT,
                           str(MAX_STEPS), str(EVAL_STEPS)], env=dict(os.environ), capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def read_run(run_id: str, names: list[str], env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(READ), PROJECT, run_id, json.dumps(names)],
                          env=env, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def expected_points(log_history: list[dict[str, Any]]) -> dict[str, dict[int, float]]:
    """{key: {step: value}} of every numeric entry of the log history; the later value at a step wins."""
    out: dict[str, dict[int, float]] = {}
    for entry in log_history:
        for key, value in entry.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                out.setdefault(key, {})[int(entry["step"])] = float(value)
    return out


def close(a: float, b: float) -> bool:
    """Equal within float32 precision (the store may keep less than a double), NaN equal to NaN."""
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)


def test_a_real_trainer_lands_every_logged_value_at_its_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("TRACKSTREAM_RUN_ID", "TORCHELASTIC_RUN_ID", "TRACKSTREAM_PROJECT", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    trained = train(tmp_path)
    run_id, final = trained["run_id"], trained["final"]
    assert trained["open_after_train"]  # the run stays open for the final evaluate()
    assert trained["global_step"] == MAX_STEPS
    expected = expected_points(trained["log_history"])
    train_steps = list(range(1, MAX_STEPS + 1))
    for key in ("loss", "learning_rate", "grad_norm", "epoch"):
        assert sorted(expected[key]) == train_steps, key
    assert sorted(expected["eval_loss"]) == [EVAL_STEPS, MAX_STEPS]
    assert expected["eval_loss"][MAX_STEPS] == final["eval_loss"]
    assert len(set(expected["learning_rate"].values())) > 1  # warm-up then decay: a step mix-up would show

    names = {to_metric_name(key): key for key in expected}
    got = read_run(run_id, sorted(names), dict(os.environ))
    assert got["status"] == "completed"
    assert got["name"] == "tiny-gpt2"
    assert got["params"]["max_steps"] == MAX_STEPS
    assert got["params"]["model.n_embd"] == 16
    for name, key in names.items():
        points = got["history"][name]
        assert [step for step, _ in points] == sorted(expected[key]), key
        want = [expected[key][step] for step, _ in points]
        assert all(close(value, w) for (_, value), w in zip(points, want, strict=True)), (key, points, want)
    for key, value in final.items():  # the final evaluate() is the last point of its metrics, at global_step
        last_step, last_value = got["history"][to_metric_name(key)][-1]
        assert last_step == MAX_STEPS, key
        assert close(last_value, float(value)), key
    assert close(float(got["metrics"]["loss"][-1]), expected["loss"][MAX_STEPS])
